// The small model the weights fuzzer loads into, shared with the seed generator so that
// the seeds are files that load: a convolution and a linear layer (with and without
// bias), parameters "0.weight" [4,3,3,3], "0.bias" [4], "3.weight" [3,4].
#pragma once

#include <memory>

#include "engine/nn/module.h"

namespace fuzz {

inline std::shared_ptr<engine::nn::Sequential> tiny_model() {
  engine::Generator gen(7);
  auto m = std::make_shared<engine::nn::Sequential>();
  m->push_back(std::make_shared<engine::nn::Conv2d>(3, 4, 3, 1, 0, true, &gen));
  m->push_back(std::make_shared<engine::nn::ReLU>());
  m->push_back(std::make_shared<engine::nn::AdaptiveAvgPool2d>(1));
  m->push_back(std::make_shared<engine::nn::Linear>(4, 3, false, &gen));
  return m;
}

}  // namespace fuzz
