#include "nets/alexnet.h"

namespace nets {

using namespace engine::nn;

AlexNet::AlexNet(int64_t num_classes, double dropout, engine::Generator* gen, engine::Generator* dropout_gen) {
  register_module("features", std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      std::make_shared<Conv2d>(3, 64, 11, 4, 2, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<MaxPool2d>(3, 2),
      std::make_shared<Conv2d>(64, 192, 5, 1, 2, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<MaxPool2d>(3, 2),
      std::make_shared<Conv2d>(192, 384, 3, 1, 1, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<Conv2d>(384, 256, 3, 1, 1, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<Conv2d>(256, 256, 3, 1, 1, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<MaxPool2d>(3, 2),
  }));
  register_module("avgpool", std::make_shared<AdaptiveAvgPool2d>(engine::Size2(6, 6)));
  register_module("classifier", std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      std::make_shared<Dropout>(dropout, dropout_gen),
      std::make_shared<Linear>(256 * 6 * 6, 4096, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<Dropout>(dropout, dropout_gen),
      std::make_shared<Linear>(4096, 4096, true, gen),
      std::make_shared<ReLU>(),
      std::make_shared<Linear>(4096, num_classes, true, gen),
  }));
}

engine::Tensor AlexNet::forward(const engine::Tensor& x) {
  ENGINE_CHECK(x.dim() == 4 && x.size(1) == 3, "AlexNet: input must be [N, 3, H, W], got shape ",
               engine::shape_str(x.shape()));
  // Children are looked up by name: head surgery may have replaced the classifier.
  const engine::Tensor f = child("avgpool")->forward(child("features")->forward(x));
  return child("classifier")->forward(engine::flatten(f, 1));
}

}  // namespace nets
