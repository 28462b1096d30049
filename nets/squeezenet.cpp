#include "nets/squeezenet.h"

namespace nets {

using namespace engine::nn;
using engine::Tensor;

Fire::Fire(int64_t in, int64_t s, int64_t e1, int64_t e3, engine::Generator* gen) {
  squeeze = register_module("squeeze", std::make_shared<Conv2d>(in, s, 1, 1, 0, true, gen));
  register_module("squeeze_activation", std::make_shared<ReLU>());
  expand1x1 = register_module("expand1x1", std::make_shared<Conv2d>(s, e1, 1, 1, 0, true, gen));
  register_module("expand1x1_activation", std::make_shared<ReLU>());
  expand3x3 = register_module("expand3x3", std::make_shared<Conv2d>(s, e3, 3, 1, 1, true, gen));
  register_module("expand3x3_activation", std::make_shared<ReLU>());
}

Tensor Fire::forward(const Tensor& x) {
  // Activations go through the child modules, so a pass that swaps ReLU modules
  // (guided backpropagation) reaches them too.
  const Tensor s = child("squeeze_activation")->forward(squeeze->forward(x));
  return engine::cat({child("expand1x1_activation")->forward(expand1x1->forward(s)),
                      child("expand3x3_activation")->forward(expand3x3->forward(s))},
                     1);
}

SqueezeNet::SqueezeNet(int64_t num_classes, double dropout, engine::Generator* gen, engine::Generator* dropout_gen) {
  auto pool = [] { return std::make_shared<MaxPool2d>(3, 2, 0, /*ceil_mode=*/true); };
  register_module("features", std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      std::make_shared<Conv2d>(3, 64, 3, 2, 0, true, gen),
      std::make_shared<ReLU>(),
      pool(),
      std::make_shared<Fire>(64, 16, 64, 64, gen),
      std::make_shared<Fire>(128, 16, 64, 64, gen),
      pool(),
      std::make_shared<Fire>(128, 32, 128, 128, gen),
      std::make_shared<Fire>(256, 32, 128, 128, gen),
      pool(),
      std::make_shared<Fire>(256, 48, 192, 192, gen),
      std::make_shared<Fire>(384, 48, 192, 192, gen),
      std::make_shared<Fire>(384, 64, 256, 256, gen),
      std::make_shared<Fire>(512, 64, 256, 256, gen),
  }));
  register_module("classifier", std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      std::make_shared<Dropout>(dropout, dropout_gen),
      std::make_shared<Conv2d>(512, num_classes, 1, 1, 0, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<AdaptiveAvgPool2d>(1),
  }));
}

Tensor SqueezeNet::forward(const Tensor& x) {
  ENGINE_CHECK(x.dim() == 4 && x.size(1) == 3, "SqueezeNet: input must be [N, 3, H, W], got shape ",
               engine::shape_str(x.shape()));
  return engine::flatten(child("classifier")->forward(child("features")->forward(x)), 1);
}

}  // namespace nets
