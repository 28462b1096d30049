#include "nets/zoo.h"

#include "nets/alexnet.h"
#include "nets/squeezenet.h"

namespace nets {

using namespace engine::nn;

Arch parse_arch(const std::string& name) {
  if (name == "alexnet") return Arch::AlexNet;
  if (name == "squeezenet1_1") return Arch::SqueezeNet1_1;
  throw engine::Error("unknown architecture '" + name + "': expected alexnet or squeezenet1_1");
}

std::string arch_name(Arch arch) { return arch == Arch::AlexNet ? "alexnet" : "squeezenet1_1"; }

std::shared_ptr<Module> make_model(Arch arch, int64_t num_classes, engine::Generator* gen,
                                   engine::Generator* dropout_gen) {
  if (arch == Arch::AlexNet) return std::make_shared<AlexNet>(num_classes, 0.5, gen, dropout_gen);
  return std::make_shared<SqueezeNet>(num_classes, 0.5, gen, dropout_gen);
}

std::vector<std::string> replace_head(Module& model, Arch arch, int which_case, int64_t K, engine::Generator* gen) {
  ENGINE_CHECK(K > 0, "replace_head: number of classes must be positive, got ", K);
  ENGINE_CHECK(which_case == 1 || which_case == 2, "replace_head: case must be 1 or 2, got ", which_case);
  auto classifier = std::dynamic_pointer_cast<Sequential>(model.child("classifier"));
  ENGINE_CHECK(classifier != nullptr, "replace_head: the model has no Sequential classifier");
  if (arch == Arch::SqueezeNet1_1) {
    ENGINE_CHECK(which_case == 1, "replace_head: Case 2 is defined for AlexNet only");
    classifier->replace_child("1", std::make_shared<Conv2d>(512, K, 1, 1, 0, true, gen));
    return {"classifier.1.weight", "classifier.1.bias"};
  }
  if (which_case == 1) {
    classifier->replace_child("6", std::make_shared<Linear>(4096, K, true, gen));
    return {"classifier.6.weight", "classifier.6.bias"};
  }
  // Case 2: keep Dropout, fc6, ReLU, Dropout; one new Linear(4096, K) in place of fc7..fc8.
  auto head = std::make_shared<Sequential>(std::vector<std::shared_ptr<Module>>{
      (*classifier)[0], (*classifier)[1], (*classifier)[2], (*classifier)[3],
      std::make_shared<Linear>(4096, K, true, gen)});
  model.replace_child("classifier", head);
  return {"classifier.4.weight", "classifier.4.bias"};
}

engine::saliency::Split gradcam_split(Module& model, Arch arch) {
  auto features = std::dynamic_pointer_cast<Sequential>(model.child("features"));
  ENGINE_CHECK(features != nullptr, "gradcam_split: the model has no Sequential features");
  // AlexNet: features.0-11 | features.12 (pool), avgpool, flatten, classifier.
  // SqueezeNet: features | classifier, flatten.
  const size_t cut = arch == Arch::AlexNet ? 12 : features->size();
  engine::saliency::Split split;
  split.trunk = [features, cut](const engine::Tensor& x) {
    engine::Tensor h = x;
    for (size_t i = 0; i < cut; ++i) h = (*features)[i]->forward(h);
    return h;
  };
  Module* m = &model;
  split.head = [features, cut, m, arch](const engine::Tensor& a) {
    engine::Tensor h = a;
    for (size_t i = cut; i < features->size(); ++i) h = (*features)[i]->forward(h);
    if (arch == Arch::AlexNet) h = engine::flatten(m->child("avgpool")->forward(h), 1);
    h = m->child("classifier")->forward(h);
    return arch == Arch::AlexNet ? h : engine::flatten(h, 1);
  };
  return split;
}

}  // namespace nets
