// Tensor: a shape, a dtype and an offset into shared, contiguous storage, plus the
// autograd state (requires_grad, grad, the function that produced it).
//
// Every tensor is contiguous (row-major); reshape/view/flatten share storage with their
// source. Copies are explicit (clone, to). A default-constructed Tensor is "undefined".
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "engine/error.h"
#include "engine/storage.h"
#include "engine/types.h"

namespace engine {

class Generator;
struct Node;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  DType dtype = DType::F32;
  bool requires_grad = false;          // set on leaves by the user
  std::shared_ptr<TensorImpl> grad;    // accumulated gradient of a leaf
  std::shared_ptr<Node> grad_fn;       // producer, for non-leaf tensors in a graph
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // ---- creation -----------------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // Copies numel(shape) values from host memory.
  static Tensor from_data(const Shape& shape, const float* data, Device device = Device::cpu());
  static Tensor from_data(const Shape& shape, const double* data, Device device = Device::cpu());
  static Tensor from_vector(const Shape& shape, const std::vector<float>& data,
                            Device device = Device::cpu());
  static Tensor from_vector(const Shape& shape, const std::vector<double>& data,
                            Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::F32, Device device = Device::cpu());
  // Normal(mean, std) and Uniform[lo, hi) draws from an explicit generator.
  static Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::F32,
                      Device device = Device::cpu(), double mean = 0.0, double std = 1.0);
  static Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::F32,
                     Device device = Device::cpu(), double lo = 0.0, double hi = 1.0);

  // ---- properties ---------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  // Size along d; negative d counts from the end.
  int64_t size(int64_t d) const;
  int64_t numel() const { return numel_of(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  std::string str() const;  // "float32 [2, 3] on cpu"

  // Raw pointer to the first element (device memory for CUDA tensors).
  void* raw_data() const;
  template <typename T> T* data() const {
    ENGINE_CHECK(dtype_of<T>::value == dtype(), "data<", dtype_name(dtype_of<T>::value),
                 ">() on a ", str(), " tensor");
    return static_cast<T*>(raw_data());
  }

  // ---- host access (copies from the device when needed) --------------------------
  template <typename T> std::vector<T> to_vector() const;
  // Element at a multi-index, as double (for tests).
  double at(const std::vector<int64_t>& index) const;
  // The single value of a one-element tensor.
  double item() const;

  // ---- copies and views -----------------------------------------------------------
  Tensor to(Device device) const;  // differentiable
  Tensor to(DType dtype) const;    // differentiable
  Tensor clone() const;            // differentiable
  // Views sharing storage; -1 in one place is inferred. Differentiable.
  Tensor reshape(const Shape& shape) const;
  Tensor view(const Shape& shape) const { return reshape(shape); }
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  // Copies src's values into this tensor's storage (same shape; no autograd).
  Tensor& copy_(const Tensor& src);
  // Makes this tensor (and every handle to it) refer to src's storage, shape, dtype and
  // device, keeping its own autograd flags; like PyTorch's `param.data = src`.
  Tensor& set_data(const Tensor& src);
  Tensor& fill_(double value);

  // ---- autograd -------------------------------------------------------------------
  bool requires_grad() const { return impl().requires_grad || impl().grad_fn != nullptr; }
  // Marks a leaf as requiring a gradient (error on a non-leaf).
  Tensor& requires_grad_(bool on = true);
  bool is_leaf() const { return impl().grad_fn == nullptr; }
  // Accumulated gradient (undefined until a backward reaches this leaf).
  Tensor grad() const;
  void set_grad(const Tensor& g);
  void zero_grad() { impl().grad.reset(); }
  // Same data, cut from the graph.
  Tensor detach() const;
  const std::shared_ptr<Node>& grad_fn() const { return impl().grad_fn; }
  // Backward from a one-element tensor (gradient 1) or with an explicit upstream
  // gradient of this tensor's shape. The graph is freed unless retain_graph.
  void backward(const Tensor& grad = Tensor(), bool retain_graph = false) const;

  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

 private:
  TensorImpl& impl() const {
    ENGINE_CHECK(impl_ != nullptr, "operation on an undefined tensor");
    return *impl_;
  }
  std::shared_ptr<TensorImpl> impl_;
};

using TensorList = std::vector<Tensor>;

// A tensor with this shape and dtype on the same device, uninitialised / zero-filled.
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);

}  // namespace engine
