// Modules in the manner of torch.nn: a Module owns named parameters and named child
// modules; named_parameters() joins the names with dots ("features.0.weight"), so a
// network composed as torchvision composes it has torchvision's state_dict keys.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/ops.h"
#include "engine/random.h"
#include "engine/tensor.h"

namespace engine::nn {

class Module {
 public:
  virtual ~Module() = default;
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }

  // Every parameter of this module and its children, in registration order.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> parameters() const;
  // Parameters by name; throws naming the key when absent.
  Tensor parameter(const std::string& name) const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }

  // Train/eval mode for this module and all children (dropout reads it).
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // Drops every parameter's gradient.
  void zero_grad();
  // Sets requires_grad on every parameter (freezing when false).
  void requires_grad_(bool on);
  // Moves/converts every parameter in place (the same Tensor handles see the result).
  void to(Device device);
  void to(DType dtype);

  // Replaces a direct child (head surgery); throws if there is no such child.
  void replace_child(const std::string& name, std::shared_ptr<Module> module);
  std::shared_ptr<Module> child(const std::string& name) const;

  // Human-readable structure, one module per line.
  virtual std::string name() const = 0;
  std::string describe(int indent = 0) const;

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);
  template <typename M> std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }
  // This module's own parameter by local name ("weight"); undefined if absent.
  Tensor own_parameter(const std::string& local) const;

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// Children named "0", "1", ... applied in order.
class Sequential : public Module {
 public:
  Sequential() = default;
  explicit Sequential(std::vector<std::shared_ptr<Module>> modules);
  void push_back(std::shared_ptr<Module> m);  // m must not be null
  size_t size() const { return children().size(); }
  std::shared_ptr<Module> operator[](size_t i) const { return children()[i].second; }
  Tensor forward(const Tensor& x) override;
  std::string name() const override { return "Sequential"; }
};

// Weight [out, in, kh, kw] and bias [out], initialised as torch.nn.Conv2d does:
// kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
class Conv2d : public Module {
 public:
  Conv2d(int64_t in, int64_t out, Size2 kernel, Size2 stride = 1, Size2 padding = 0, bool bias = true,
         Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  Tensor weight() const { return own_parameter("weight"); }
  Tensor bias() const { return own_parameter("bias"); }  // undefined without bias
  int64_t in_channels, out_channels;
  Size2 kernel, stride, padding;
};

// Weight [out, in] and bias [out], initialised as torch.nn.Linear does (as Conv2d).
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out, bool bias = true, Generator* gen = nullptr);
  Tensor forward(const Tensor& x) override;
  std::string name() const override;
  Tensor weight() const { return own_parameter("weight"); }
  Tensor bias() const { return own_parameter("bias"); }  // undefined without bias
  int64_t in_features, out_features;
};

class ReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return relu(x); }
  std::string name() const override { return "ReLU"; }
};

// ReLU with guided backpropagation's backward rule (engine::guided_relu).
class GuidedReLU : public Module {
 public:
  Tensor forward(const Tensor& x) override { return guided_relu(x); }
  std::string name() const override { return "GuidedReLU"; }
};

class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(Size2 kernel, Size2 stride = 0, Size2 padding = 0, bool ceil_mode = false)
      : kernel(kernel), stride(stride), padding(padding), ceil_mode(ceil_mode) {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, kernel, stride, padding, ceil_mode); }
  std::string name() const override;
  Size2 kernel, stride, padding;
  bool ceil_mode;
};

class AdaptiveAvgPool2d : public Module {
 public:
  explicit AdaptiveAvgPool2d(Size2 output_size) : output_size(output_size) {}
  Tensor forward(const Tensor& x) override { return adaptive_avg_pool2d(x, output_size); }
  std::string name() const override;
  Size2 output_size;
};

// Drops with probability p in training mode, from gen (the default generator if null).
class Dropout : public Module {
 public:
  explicit Dropout(double p = 0.5, Generator* gen = nullptr) : p(p), gen(gen) {}
  Tensor forward(const Tensor& x) override { return dropout(x, p, is_training(), gen); }
  std::string name() const override;
  double p;
  Generator* gen;
};

class Flatten : public Module {
 public:
  explicit Flatten(int64_t start_dim = 1, int64_t end_dim = -1) : start_dim(start_dim), end_dim(end_dim) {}
  Tensor forward(const Tensor& x) override { return flatten(x, start_dim, end_dim); }
  std::string name() const override { return "Flatten"; }
  int64_t start_dim, end_dim;
};

}  // namespace engine::nn
