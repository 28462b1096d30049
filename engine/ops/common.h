// Helpers shared by the op implementations (not part of the public API).
#pragma once

#include <string>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/conv.h"
#include "kernels/pool.h"

namespace engine::detail {

// All inputs defined, on one device, of one dtype; names the op and both tensors if not.
inline void check_compatible(const char* op, const Tensor& a, const Tensor& b) {
  ENGINE_CHECK(a.defined() && b.defined(), op, ": undefined input");
  ENGINE_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", a.str(), " and ", b.str());
  ENGINE_CHECK(a.device() == b.device(), op, ": devices differ: ", a.str(), " and ", b.str());
}

inline void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  check_compatible(op, a, b);
  ENGINE_CHECK(a.shape() == b.shape(), op, ": shapes ", shape_str(a.shape()), " and ",
               shape_str(b.shape()), " differ");
}

// Runs cpu() or cuda() according to the device the op's tensors live on.
template <typename Cpu, typename Cuda> void on_device(Device d, Cpu&& cpu, Cuda&& cuda) {
  if (d.is_cpu()) cpu();
  else cuda();
}

// Normalises a possibly negative dimension index.
inline int64_t wrap_dim(const char* op, int64_t d, int64_t ndim) {
  const int64_t k = d < 0 ? d + ndim : d;
  ENGINE_CHECK(k >= 0 && k < ndim, op, ": dimension ", d, " out of range for ", ndim,
               "-dimensional input");
  return k;
}

// [outer, dim, inner] view of shape around axis d.
struct Split3 {
  int64_t outer = 1, dim = 1, inner = 1;
};
inline Split3 split_at(const Shape& s, int64_t d) {
  Split3 r;
  for (int64_t i = 0; i < static_cast<int64_t>(s.size()); ++i) {
    if (i < d) r.outer *= s[static_cast<size_t>(i)];
    else if (i == d) r.dim = s[static_cast<size_t>(i)];
    else r.inner *= s[static_cast<size_t>(i)];
  }
  return r;
}

// The shapes of a convolution and of a max-pool on an input of shape x, after the checks
// that conv2d and max_pool2d make (engine/ops/layers.cpp, engine/ops/pool.cpp).
kernels::Conv2dShape conv2d_shape(const Shape& x, const Tensor& weight, const Tensor& bias, Size2 stride,
                                  Size2 padding);
kernels::Pool2dShape max_pool2d_shape(const Shape& x, Size2 kernel, Size2 stride, Size2 padding, bool ceil_mode);

}  // namespace engine::detail
