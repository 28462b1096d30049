// SqueezeNet 1.1 exactly as torchvision.models.squeezenet1_1 composes it:
//   features:   Conv(3,64,3,s2) ReLU MaxPool(3,2,ceil) Fire(64,16,64,64) Fire(128,16,64,64)
//               MaxPool(3,2,ceil) Fire(128,32,128,128) Fire(256,32,128,128) MaxPool(3,2,ceil)
//               Fire(256,48,192,192) Fire(384,48,192,192) Fire(384,64,256,256) Fire(512,64,256,256)
//   classifier: Dropout Conv(512,K,1) ReLU AdaptiveAvgPool2d(1)   -> flatten -> [N, K]
// Fire(in, s, e1, e3): squeeze = relu(conv1x1(in->s)); out = cat(relu(conv1x1(s->e1)),
// relu(conv3x3(s->e3, pad 1))) along channels.
#pragma once

#include <memory>

#include "engine/nn/module.h"

namespace nets {

class Fire : public engine::nn::Module {
 public:
  Fire(int64_t in, int64_t squeeze, int64_t expand1x1, int64_t expand3x3, engine::Generator* gen = nullptr);
  engine::Tensor forward(const engine::Tensor& x) override;
  std::string name() const override { return "Fire"; }

  std::shared_ptr<engine::nn::Conv2d> squeeze, expand1x1, expand3x3;
};

class SqueezeNet : public engine::nn::Module {
 public:
  explicit SqueezeNet(int64_t num_classes = 1000, double dropout = 0.5, engine::Generator* gen = nullptr,
                      engine::Generator* dropout_gen = nullptr);
  engine::Tensor forward(const engine::Tensor& x) override;
  std::string name() const override { return "SqueezeNet1_1"; }
};

}  // namespace nets
