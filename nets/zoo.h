// The networks by name, and the head surgery of transfer learning.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/nn/module.h"
#include "engine/saliency.h"

namespace nets {

enum class Arch { AlexNet, SqueezeNet1_1 };

// "alexnet" or "squeezenet1_1" (torchvision's names).
Arch parse_arch(const std::string& name);
std::string arch_name(Arch arch);

std::shared_ptr<engine::nn::Module> make_model(Arch arch, int64_t num_classes = 1000, engine::Generator* gen = nullptr,
                                               engine::Generator* dropout_gen = nullptr);

// Replaces the head with a new K-class one, initialised as PyTorch initialises new
// layers, from gen; returns the names of the new parameters.
//   AlexNet Case 1: classifier.6 becomes Linear(4096, K).
//   AlexNet Case 2: classifier.4 and classifier.6 become one Linear(4096, K): the
//     classifier is Dropout, Linear(9216,4096), ReLU, Dropout, Linear(4096,K).
//   SqueezeNet (Case 1 only): classifier.1 becomes Conv2d(512, K, 1).
std::vector<std::string> replace_head(engine::nn::Module& model, Arch arch, int which_case, int64_t num_classes,
                                      engine::Generator* gen = nullptr);

// The cut Grad-CAM uses: the output of the last convolution's ReLU (AlexNet:
// features.11, 256 x 13 x 13 at 224; SqueezeNet: the last Fire module, 512 x 13 x 13).
engine::saliency::Split gradcam_split(engine::nn::Module& model, Arch arch);

}  // namespace nets
