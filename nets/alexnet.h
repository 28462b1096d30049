// AlexNet exactly as torchvision.models.alexnet composes it, so parameter names equal
// its state_dict keys (features.0.weight ... classifier.6.bias):
//   features:   Conv(3,64,11,s4,p2) ReLU MaxPool(3,2) Conv(64,192,5,p2) ReLU MaxPool(3,2)
//               Conv(192,384,3,p1) ReLU Conv(384,256,3,p1) ReLU Conv(256,256,3,p1) ReLU MaxPool(3,2)
//   avgpool:    AdaptiveAvgPool2d(6, 6)
//   classifier: Dropout Linear(9216,4096) ReLU Dropout Linear(4096,4096) ReLU Linear(4096,K)
#pragma once

#include <memory>

#include "engine/nn/module.h"

namespace nets {

class AlexNet : public engine::nn::Module {
 public:
  // Layers initialised as PyTorch initialises them, from gen (the default generator if
  // null); dropout draws from dropout_gen (the default generator if null).
  explicit AlexNet(int64_t num_classes = 1000, double dropout = 0.5, engine::Generator* gen = nullptr,
                   engine::Generator* dropout_gen = nullptr);
  engine::Tensor forward(const engine::Tensor& x) override;
  std::string name() const override { return "AlexNet"; }
};

}  // namespace nets
