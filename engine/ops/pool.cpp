// max_pool2d (with ceil_mode) and adaptive_avg_pool2d.
#include <memory>

#include "engine/ops/common.h"
#include "kernels/common.h"
#include "kernels/pool.h"

namespace engine {

kernels::Pool2dShape detail::max_pool2d_shape(const Shape& x, Size2 kernel, Size2 stride, Size2 padding,
                                              bool ceil_mode) {
  ENGINE_CHECK(x.size() == 4, "max_pool2d: input must be [N, C, H, W], got shape ", shape_str(x));
  if (stride.h == 0 && stride.w == 0) stride = kernel;
  ENGINE_CHECK(kernel.h > 0 && kernel.w > 0 && stride.h > 0 && stride.w > 0,
               "max_pool2d: kernel and stride must be positive");
  ENGINE_CHECK(padding.h >= 0 && padding.w >= 0 && padding.h <= kernel.h / 2 && padding.w <= kernel.w / 2,
               "max_pool2d: padding (", padding.h, ", ", padding.w,
               ") must be at most half the kernel (", kernel.h, ", ", kernel.w, ")");
  kernels::Pool2dShape s{};
  s.N = x[0]; s.C = x[1]; s.H = x[2]; s.W = x[3];
  s.kh = kernel.h; s.kw = kernel.w; s.sh = stride.h; s.sw = stride.w; s.ph = padding.h; s.pw = padding.w;
  s.Ho = kernels::pooled_size(s.H, s.kh, s.sh, s.ph, 1, ceil_mode);
  s.Wo = kernels::pooled_size(s.W, s.kw, s.sw, s.pw, 1, ceil_mode);
  ENGINE_CHECK(s.H + 2 * s.ph >= s.kh && s.W + 2 * s.pw >= s.kw && s.Ho > 0 && s.Wo > 0,
               "max_pool2d: kernel ", s.kh, "x", s.kw, " does not fit input ", shape_str(x),
               " with padding ", s.ph, "x", s.pw);
  return s;
}

Tensor max_pool2d(const Tensor& x, Size2 kernel, Size2 stride, Size2 padding, bool ceil_mode) {
  ENGINE_CHECK(x.defined(), "max_pool2d: undefined input");
  const kernels::Pool2dShape s = detail::max_pool2d_shape(x.shape(), kernel, stride, padding, ceil_mode);
  Tensor y = Tensor::empty({s.N, s.C, s.Ho, s.Wo}, x.dtype(), x.device());
  // The argmax is kept only for a backward pass; without one the kernels write y alone.
  const bool graph = needs_graph({x});
  auto argmax = graph ? std::make_shared<Storage>(static_cast<std::size_t>(y.numel()) * sizeof(int64_t), x.device())
                      : nullptr;
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    int64_t* am = argmax ? static_cast<int64_t*>(argmax->data()) : nullptr;
    detail::on_device(x.device(), [&] { kernels::max_pool2d_forward_cpu<T>(x.data<T>(), y.data<T>(), am, s); },
                      [&] { kernels::max_pool2d_forward_cuda<T>(x.data<T>(), y.data<T>(), am, s); });
  });
  if (!graph) return y;
  return record(y, {x}, "max_pool2d", [argmax, s](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty({s.N, s.C, s.H, s.W}, g.dtype(), g.device());
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const int64_t* am = static_cast<const int64_t*>(argmax->data());
      detail::on_device(g.device(), [&] { kernels::max_pool2d_backward_cpu<T>(g.data<T>(), am, gx.data<T>(), s); },
                        [&] { kernels::max_pool2d_backward_cuda<T>(g.data<T>(), am, gx.data<T>(), s); });
    });
    return TensorList{gx};
  });
}

Tensor adaptive_avg_pool2d(const Tensor& x, Size2 output_size) {
  ENGINE_CHECK(x.defined(), "adaptive_avg_pool2d: undefined input");
  ENGINE_CHECK(x.dim() == 4, "adaptive_avg_pool2d: input must be [N, C, H, W], got shape ",
               shape_str(x.shape()));
  ENGINE_CHECK(output_size.h > 0 && output_size.w > 0, "adaptive_avg_pool2d: output size must be positive");
  ENGINE_CHECK(x.size(2) > 0 && x.size(3) > 0, "adaptive_avg_pool2d: empty input ", shape_str(x.shape()));
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = output_size.h, Wo = output_size.w;
  Tensor y = Tensor::empty({N, C, Ho, Wo}, x.dtype(), x.device());
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    detail::on_device(x.device(),
        [&] { kernels::adaptive_avg_pool2d_forward_cpu<T>(x.data<T>(), y.data<T>(), N * C, H, W, Ho, Wo); },
        [&] { kernels::adaptive_avg_pool2d_forward_cuda<T>(x.data<T>(), y.data<T>(), N * C, H, W, Ho, Wo); });
  });
  return record(y, {x}, "adaptive_avg_pool2d", [N, C, H, W, Ho, Wo](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty({N, C, H, W}, g.dtype(), g.device());
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      detail::on_device(g.device(),
          [&] { kernels::adaptive_avg_pool2d_backward_cpu<T>(g.data<T>(), gx.data<T>(), N * C, H, W, Ho, Wo); },
          [&] { kernels::adaptive_avg_pool2d_backward_cuda<T>(g.data<T>(), gx.data<T>(), N * C, H, W, Ho, Wo); });
    });
    return TensorList{gx};
  });
}

}  // namespace engine
