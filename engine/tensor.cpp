#include "engine/tensor.h"

#include <cstring>
#include <sstream>

#include "engine/autograd.h"
#include "engine/random.h"
#include "kernels/cuda_runtime.h"
#include "kernels/elementwise.h"

namespace engine {

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}
void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

namespace {

Tensor make(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    ENGINE_CHECK(d >= 0, "cannot create a tensor of shape ", shape_str(shape),
                 ": negative size");
  auto impl = std::make_shared<TensorImpl>();
  impl->shape = shape;
  impl->dtype = dtype;
  impl->storage =
      std::make_shared<Storage>(static_cast<std::size_t>(numel_of(shape)) * element_size(dtype), device);
  return Tensor(std::move(impl));
}

// Copies nbytes between any two devices.
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, std::size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu())
    std::memcpy(dst, src, nbytes);
  else if (dst_dev.is_cuda() && src_dev.is_cpu())
    kernels::cuda::memcpy_h2d(dst, src, nbytes);
  else if (dst_dev.is_cpu() && src_dev.is_cuda())
    kernels::cuda::memcpy_d2h(dst, src, nbytes);
  else
    kernels::cuda::memcpy_d2d(dst, src, nbytes);
}

void fill(const Tensor& t, double value) {
  dispatch_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (t.device().is_cpu())
      kernels::fill_cpu<T>(t.data<T>(), static_cast<T>(value), t.numel());
    else
      kernels::fill_cuda<T>(t.data<T>(), static_cast<T>(value), t.numel());
  });
}

template <typename T> Tensor from_host(const Shape& shape, const T* data, Device device) {
  Tensor t = make(shape, dtype_of<T>::value, device);
  copy_bytes(t.raw_data(), device, data, Device::cpu(), static_cast<std::size_t>(t.numel()) * sizeof(T));
  return t;
}

}  // namespace

// ---- creation -----------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) { return make(shape, dtype, device); }

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = make(shape, dtype, device);
  fill(t, value);
  return t;
}

Tensor Tensor::from_data(const Shape& shape, const float* data, Device device) {
  return from_host(shape, data, device);
}
Tensor Tensor::from_data(const Shape& shape, const double* data, Device device) {
  return from_host(shape, data, device);
}

Tensor Tensor::from_vector(const Shape& shape, const std::vector<float>& data, Device device) {
  ENGINE_CHECK(static_cast<int64_t>(data.size()) == numel_of(shape), "from_vector: ", data.size(),
               " values for shape ", shape_str(shape));
  return from_host(shape, data.data(), device);
}
Tensor Tensor::from_vector(const Shape& shape, const std::vector<double>& data, Device device) {
  ENGINE_CHECK(static_cast<int64_t>(data.size()) == numel_of(shape), "from_vector: ", data.size(),
               " values for shape ", shape_str(shape));
  return from_host(shape, data.data(), device);
}

Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::randn(const Shape& shape, Generator& gen, DType dtype, Device device, double mean,
                     double std) {
  Tensor t = make(shape, dtype, device);
  const uint64_t n = static_cast<uint64_t>(t.numel());
  const uint64_t offset = gen.advance(n);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (device.is_cpu())
      kernels::normal_cpu<T>(t.data<T>(), T(mean), T(std), gen.seed(), offset, t.numel());
    else
      kernels::normal_cuda<T>(t.data<T>(), T(mean), T(std), gen.seed(), offset, t.numel());
  });
  return t;
}

Tensor Tensor::rand(const Shape& shape, Generator& gen, DType dtype, Device device, double lo,
                    double hi) {
  Tensor t = make(shape, dtype, device);
  const uint64_t offset = gen.advance(static_cast<uint64_t>(t.numel()));
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (device.is_cpu())
      kernels::uniform_cpu<T>(t.data<T>(), T(lo), T(hi), gen.seed(), offset, t.numel());
    else
      kernels::uniform_cuda<T>(t.data<T>(), T(lo), T(hi), gen.seed(), offset, t.numel());
  });
  return t;
}

Tensor empty_like(const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), t.device()); }
Tensor zeros_like(const Tensor& t) { return Tensor::zeros(t.shape(), t.dtype(), t.device()); }

// ---- properties -----------------------------------------------------------------------

int64_t Tensor::size(int64_t d) const {
  const int64_t nd = dim();
  const int64_t k = d < 0 ? d + nd : d;
  ENGINE_CHECK(k >= 0 && k < nd, "dimension ", d, " out of range for shape ", shape_str(shape()));
  return shape()[static_cast<size_t>(k)];
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype())) + " " + shape_str(shape()) + " on " + device().str();
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl().storage->data()) +
         impl().offset * static_cast<int64_t>(element_size(dtype()));
}

template <typename T> std::vector<T> Tensor::to_vector() const {
  const Tensor src = dtype() == dtype_of<T>::value ? *this : detach().to(dtype_of<T>::value);
  std::vector<T> out(static_cast<size_t>(numel()));
  copy_bytes(out.data(), Device::cpu(), src.raw_data(), device(), out.size() * sizeof(T));
  return out;
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;

double Tensor::at(const std::vector<int64_t>& index) const {
  ENGINE_CHECK(static_cast<int64_t>(index.size()) == dim(), "at: ", index.size(),
               " indices for shape ", shape_str(shape()));
  int64_t flat = 0;
  for (size_t i = 0; i < index.size(); ++i) {
    ENGINE_CHECK(index[i] >= 0 && index[i] < shape()[i], "at: index ", index[i],
                 " out of range in dimension ", i, " of shape ", shape_str(shape()));
    flat = flat * shape()[i] + index[i];
  }
  double v = 0;
  const std::size_t es = element_size(dtype());
  char buf[8];
  copy_bytes(buf, Device::cpu(), static_cast<char*>(raw_data()) + flat * static_cast<int64_t>(es),
             device(), es);
  if (dtype() == DType::F32) {
    float f;
    std::memcpy(&f, buf, 4);
    v = f;
  } else {
    std::memcpy(&v, buf, 8);
  }
  return v;
}

double Tensor::item() const {
  ENGINE_CHECK(numel() == 1, "item() on a tensor of shape ", shape_str(shape()),
               " (needs exactly one element)");
  return at(std::vector<int64_t>(static_cast<size_t>(dim()), 0));
}

// ---- copies and views -----------------------------------------------------------------

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor out = make(shape(), dtype(), device);
  copy_bytes(out.raw_data(), device, raw_data(), this->device(),
             static_cast<std::size_t>(numel()) * element_size(dtype()));
  const Device from = this->device();
  return record(out, {*this}, "to_device", [from](const Tensor& g, const std::vector<bool>&) {
    return TensorList{g.to(from)};
  });
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == this->dtype()) return *this;
  Tensor out = make(shape(), dtype, device());
  const bool cpu = device().is_cpu();
  if (dtype == DType::F64) {
    if (cpu) kernels::convert_cpu<float, double>(data<float>(), out.data<double>(), numel());
    else kernels::convert_cuda<float, double>(data<float>(), out.data<double>(), numel());
  } else {
    if (cpu) kernels::convert_cpu<double, float>(data<double>(), out.data<float>(), numel());
    else kernels::convert_cuda<double, float>(data<double>(), out.data<float>(), numel());
  }
  const DType from = this->dtype();
  return record(out, {*this}, "to_dtype", [from](const Tensor& g, const std::vector<bool>&) {
    return TensorList{g.to(from)};
  });
}

Tensor Tensor::clone() const {
  Tensor out = make(shape(), dtype(), device());
  copy_bytes(out.raw_data(), device(), raw_data(), device(),
             static_cast<std::size_t>(numel()) * element_size(dtype()));
  return record(out, {*this}, "clone",
                [](const Tensor& g, const std::vector<bool>&) { return TensorList{g}; });
}

Tensor Tensor::reshape(const Shape& new_shape) const {
  Shape s = new_shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      ENGINE_CHECK(infer < 0, "reshape of ", shape_str(shape()), " to ", shape_str(new_shape),
                   ": more than one -1");
      infer = static_cast<int64_t>(i);
    } else {
      ENGINE_CHECK(s[i] >= 0, "reshape of ", shape_str(shape()), " to ", shape_str(new_shape),
                   ": negative size");
      known *= s[i];
    }
  }
  if (infer >= 0) {
    ENGINE_CHECK(known > 0 && numel() % known == 0, "reshape of ", shape_str(shape()), " to ",
                 shape_str(new_shape), ": sizes do not divide");
    s[static_cast<size_t>(infer)] = numel() / known;
  }
  ENGINE_CHECK(numel_of(s) == numel(), "reshape of ", shape_str(shape()), " (", numel(),
               " elements) to ", shape_str(new_shape), " (", numel_of(s), " elements)");
  auto view = std::make_shared<TensorImpl>();
  view->storage = impl().storage;
  view->offset = impl().offset;
  view->shape = s;
  view->dtype = dtype();
  const Shape from = shape();
  return record(Tensor(view), {*this}, "reshape",
                [from](const Tensor& g, const std::vector<bool>&) { return TensorList{g.reshape(from)}; });
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  const int64_t nd = dim();
  if (nd == 0) return reshape({1});
  const int64_t s = start_dim < 0 ? start_dim + nd : start_dim;
  const int64_t e = end_dim < 0 ? end_dim + nd : end_dim;
  ENGINE_CHECK(s >= 0 && s < nd && e >= 0 && e < nd && s <= e, "flatten(", start_dim, ", ",
               end_dim, ") of shape ", shape_str(shape()));
  Shape out(shape().begin(), shape().begin() + s);
  int64_t m = 1;
  for (int64_t i = s; i <= e; ++i) m *= shape()[static_cast<size_t>(i)];
  out.push_back(m);
  out.insert(out.end(), shape().begin() + e + 1, shape().end());
  return reshape(out);
}

Tensor& Tensor::copy_(const Tensor& src) {
  ENGINE_CHECK(src.shape() == shape(), "copy_: source ", src.str(), " into ", str());
  const Tensor s = src.dtype() == dtype() ? src : src.detach().to(dtype());
  copy_bytes(raw_data(), device(), s.raw_data(), s.device(),
             static_cast<std::size_t>(numel()) * element_size(dtype()));
  return *this;
}

Tensor& Tensor::set_data(const Tensor& src) {
  ENGINE_CHECK(src.defined(), "set_data: undefined source");
  TensorImpl& me = impl();
  const TensorImpl& s = *src.impl_ptr();
  me.storage = s.storage;
  me.offset = s.offset;
  me.shape = s.shape;
  me.dtype = s.dtype;
  me.grad.reset();
  return *this;
}

Tensor& Tensor::fill_(double value) {
  fill(*this, value);
  return *this;
}

// ---- autograd ---------------------------------------------------------------------------

Tensor& Tensor::requires_grad_(bool on) {
  ENGINE_CHECK(is_leaf(), "requires_grad_ on a non-leaf tensor (", str(),
               "); detach() it first");
  impl().requires_grad = on;
  return *this;
}

Tensor Tensor::grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }

void Tensor::set_grad(const Tensor& g) {
  if (!g.defined()) {
    impl().grad.reset();
    return;
  }
  ENGINE_CHECK(g.shape() == shape() && g.dtype() == dtype() && g.device() == device(),
               "set_grad: gradient ", g.str(), " for tensor ", str());
  impl().grad = g.detach().impl_ptr();
}

Tensor Tensor::detach() const {
  auto d = std::make_shared<TensorImpl>();
  d->storage = impl().storage;
  d->offset = impl().offset;
  d->shape = shape();
  d->dtype = dtype();
  return Tensor(d);
}

void Tensor::backward(const Tensor& grad, bool retain_graph) const {
  run_backward(*this, grad, retain_graph);
}

}  // namespace engine
