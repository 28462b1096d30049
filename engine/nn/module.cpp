#include "engine/nn/module.h"

#include <cmath>
#include <sstream>
#include <typeinfo>

namespace engine::nn {

// ---- Module ------------------------------------------------------------------------

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  t.requires_grad_(true);
  params_.emplace_back(name, std::move(t));
  return params_.back().second;
}

Tensor Module::own_parameter(const std::string& local) const {
  for (const auto& [n, t] : params_)
    if (n == local) return t;
  return Tensor();
}

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [n, t] : params_)
    if (t.defined()) out.emplace_back(prefix + n, t);
  for (const auto& [n, m] : children_) m->collect(prefix + n + ".", out);
}

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

Tensor Module::parameter(const std::string& name) const {
  for (auto& [n, t] : named_parameters())
    if (n == name) return t;
  throw Error("module " + this->name() + " has no parameter '" + name + "'");
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, m] : children_) m->train(on);
}

void Module::zero_grad() {
  for (Tensor& t : parameters()) t.zero_grad();
}

void Module::requires_grad_(bool on) {
  for (Tensor& t : parameters()) t.requires_grad_(on);
}

void Module::to(Device device) {
  for (auto& [n, t] : params_)
    if (t.defined() && t.device() != device) t.set_data(t.detach().to(device));
  for (auto& [n, m] : children_) m->to(device);
}

void Module::to(DType dtype) {
  for (auto& [n, t] : params_)
    if (t.defined() && t.dtype() != dtype) t.set_data(t.detach().to(dtype));
  for (auto& [n, m] : children_) m->to(dtype);
}

void Module::replace_child(const std::string& name, std::shared_ptr<Module> module) {
  ENGINE_CHECK(module != nullptr, "replace_child: null module for '", name, "'");
  for (auto& [n, m] : children_)
    if (n == name) {
      m = std::move(module);
      m->train(training_);
      return;
    }
  throw Error("module " + this->name() + " has no child '" + name + "'");
}

std::shared_ptr<Module> Module::child(const std::string& name) const {
  for (auto& [n, m] : children_)
    if (n == name) return m;
  throw Error("module " + this->name() + " has no child '" + name + "'");
}

std::string Module::describe(int indent) const {
  std::ostringstream os;
  os << name();
  if (!children_.empty()) {
    os << "(\n";
    for (const auto& [n, m] : children_)
      os << std::string(static_cast<size_t>(indent + 2), ' ') << "(" << n << "): " << m->describe(indent + 2) << "\n";
    os << std::string(static_cast<size_t>(indent), ' ') << ")";
  }
  return os.str();
}

// ---- Sequential ----------------------------------------------------------------------

Sequential::Sequential(std::vector<std::shared_ptr<Module>> modules) {
  for (auto& m : modules) push_back(std::move(m));
}

void Sequential::push_back(std::shared_ptr<Module> m) {
  ENGINE_CHECK(m != nullptr, "Sequential: null module at index ", size());
  register_module(std::to_string(size()), std::move(m));
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  const auto& ch = children();
  auto is = [&ch](size_t i, const std::type_info& t) { return i < ch.size() && typeid(*ch[i].second) == t; };
  for (size_t i = 0; i < ch.size();) {
    // Conv2d + ReLU pairs (exactly those classes) and the MaxPool2d after them: one op,
    // conv_relu_pool.
    std::vector<ConvReluPoolLayer> run;
    size_t j = i;
    for (;;) {
      if (is(j, typeid(Conv2d)) && is(j + 1, typeid(ReLU))) {
        const auto& c = static_cast<const Conv2d&>(*ch[j].second);
        ConvReluPoolLayer l;
        l.weight = c.weight();
        l.bias = c.bias();
        l.stride = c.stride;
        l.padding = c.padding;
        run.push_back(l);
        j += 2;
      } else if (!run.empty() && is(j, typeid(MaxPool2d))) {
        const auto& p = static_cast<const MaxPool2d&>(*ch[j].second);
        ConvReluPoolLayer l;
        l.pool = true;
        l.kernel = p.kernel;
        l.stride = p.stride;
        l.padding = p.padding;
        l.ceil_mode = p.ceil_mode;
        run.push_back(l);
        j += 1;
      } else {
        break;
      }
    }
    if (run.empty()) {
      h = ch[i].second->forward(h);
      ++i;
    } else {
      h = conv_relu_pool(h, run);
      i = j;
    }
  }
  return h;
}

// ---- layers ----------------------------------------------------------------------------

namespace {
// torch.nn's default for Conv2d and Linear: kaiming_uniform_(a=sqrt(5)) on the weight,
// which is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias.
Tensor init_uniform(const Shape& shape, int64_t fan_in, Generator& gen) {
  const double bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
  return Tensor::rand(shape, gen, DType::F32, Device::cpu(), -bound, bound);
}
}  // namespace

Conv2d::Conv2d(int64_t in, int64_t out, Size2 kernel, Size2 stride, Size2 padding, bool with_bias, Generator* gen)
    : in_channels(in), out_channels(out), kernel(kernel), stride(stride), padding(padding) {
  ENGINE_CHECK(in > 0 && out > 0 && kernel.h > 0 && kernel.w > 0, "Conv2d(", in, ", ", out, ", kernel ", kernel.h,
               "x", kernel.w, "): sizes must be positive");
  Generator& g = gen ? *gen : default_generator();
  const int64_t fan_in = in * kernel.h * kernel.w;
  register_parameter("weight", init_uniform({out, in, kernel.h, kernel.w}, fan_in, g));
  if (with_bias) register_parameter("bias", init_uniform({out}, fan_in, g));
}

Tensor Conv2d::forward(const Tensor& x) {
  return conv2d(x, weight(), bias(), stride, padding);
}

std::string Conv2d::name() const {
  std::ostringstream os;
  os << "Conv2d(" << in_channels << ", " << out_channels << ", kernel_size=(" << kernel.h << ", " << kernel.w
     << "), stride=(" << stride.h << ", " << stride.w << "), padding=(" << padding.h << ", " << padding.w << "))";
  return os.str();
}

Linear::Linear(int64_t in, int64_t out, bool with_bias, Generator* gen) : in_features(in), out_features(out) {
  ENGINE_CHECK(in > 0 && out > 0, "Linear(", in, ", ", out, "): sizes must be positive");
  Generator& g = gen ? *gen : default_generator();
  register_parameter("weight", init_uniform({out, in}, in, g));
  if (with_bias) register_parameter("bias", init_uniform({out}, in, g));
}

Tensor Linear::forward(const Tensor& x) {
  return linear(x, weight(), bias());
}

std::string Linear::name() const {
  return "Linear(in_features=" + std::to_string(in_features) + ", out_features=" + std::to_string(out_features) + ")";
}

std::string MaxPool2d::name() const {
  std::ostringstream os;
  os << "MaxPool2d(kernel_size=" << kernel.h << ", stride=" << (stride.h ? stride.h : kernel.h)
     << ", padding=" << padding.h << ", ceil_mode=" << (ceil_mode ? "True" : "False") << ")";
  return os.str();
}

std::string AdaptiveAvgPool2d::name() const {
  return "AdaptiveAvgPool2d(output_size=(" + std::to_string(output_size.h) + ", " + std::to_string(output_size.w) + "))";
}

std::string Dropout::name() const {
  std::ostringstream os;
  os << "Dropout(p=" << p << ")";
  return os.str();
}

}  // namespace engine::nn
