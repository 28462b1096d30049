// Random AlexNet weights for the tools' tests: torchvision's layout and initialisation
// (seeded), the convolutions scaled up by sqrt(3): torchvision's default init shrinks
// activations several times per layer, which leaves random pool5 features nearly the
// same for every image.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "engine/autograd.h"
#include "engine/io/weights.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "nets/zoo.h"

namespace testing_util {

inline void save_random_alexnet(const std::string& path, uint64_t seed) {
  engine::Generator g(seed);
  auto model = nets::make_model(nets::Arch::AlexNet, 1000, &g);
  {
    engine::NoGradGuard no_grad;
    for (auto& [name, p] : model->named_parameters())
      if (name.rfind("features.", 0) == 0 && name.find("weight") != std::string::npos) {
        engine::Tensor t = p;
        t.copy_(t * std::sqrt(3.0));
      }
  }
  engine::io::save_weights(*model, path,
                           {"alexnet", 1000, "random, seed " + std::to_string(seed) + ", convolutions x sqrt(3) (test)", {}});
}

}  // namespace testing_util
