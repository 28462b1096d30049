// sum and mean, over everything or along one dimension.
#include "engine/ops/common.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace engine {
namespace {

Tensor reduce_all(const Tensor& x, double scale, const char* name) {
  ENGINE_CHECK(x.defined(), name, ": undefined input");
  ENGINE_CHECK(x.numel() > 0 || scale == 1.0, name, ": mean of an empty tensor ", shape_str(x.shape()));
  Tensor y = Tensor::empty({}, x.dtype(), x.device());
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    detail::on_device(x.device(),
        [&] { *y.data<T>() = static_cast<T>(scale * kernels::sum_all_cpu<T>(x.data<T>(), x.numel())); },
        [&] { kernels::sum_all_cuda<T>(x.data<T>(), y.data<T>(), T(scale), x.numel()); });
  });
  const Shape shape = x.shape();
  return record(y, {x}, name, [shape, scale](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty(shape, g.dtype(), g.device());
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      detail::on_device(g.device(),
          [&] { kernels::broadcast_dim_cpu<T>(g.data<T>(), gx.data<T>(), T(scale), 1, numel_of(shape), 1); },
          [&] { kernels::broadcast_dim_cuda<T>(g.data<T>(), gx.data<T>(), T(scale), 1, numel_of(shape), 1); });
    });
    return TensorList{gx};
  });
}

Tensor reduce_dim(const Tensor& x, int64_t dim, bool keepdim, bool average, const char* name) {
  ENGINE_CHECK(x.defined(), name, ": undefined input");
  const int64_t d = detail::wrap_dim(name, dim, x.dim());
  const detail::Split3 sp = detail::split_at(x.shape(), d);
  ENGINE_CHECK(!average || sp.dim > 0, name, ": mean over an empty dimension of ", shape_str(x.shape()));
  const double scale = average ? 1.0 / static_cast<double>(sp.dim) : 1.0;
  Shape out = x.shape();
  if (keepdim) out[static_cast<size_t>(d)] = 1;
  else out.erase(out.begin() + d);
  Tensor y = Tensor::empty(out, x.dtype(), x.device());
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yp = y.data<T>();
    detail::on_device(x.device(),
        [&] {
          kernels::sum_dim_cpu<T>(x.data<T>(), yp, sp.outer, sp.dim, sp.inner);
          if (average)
            for (int64_t i = 0; i < y.numel(); ++i) yp[i] = static_cast<T>(yp[i] * scale);
        },
        [&] {
          kernels::sum_dim_cuda<T>(x.data<T>(), yp, sp.outer, sp.dim, sp.inner);
          if (average) kernels::axpby_cuda<T>(T(scale), yp, T(0), nullptr, yp, y.numel());
        });
  });
  const Shape shape = x.shape();
  return record(y, {x}, name, [shape, sp, scale](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = Tensor::empty(shape, g.dtype(), g.device());
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      detail::on_device(g.device(),
          [&] { kernels::broadcast_dim_cpu<T>(g.data<T>(), gx.data<T>(), T(scale), sp.outer, sp.dim, sp.inner); },
          [&] { kernels::broadcast_dim_cuda<T>(g.data<T>(), gx.data<T>(), T(scale), sp.outer, sp.dim, sp.inner); });
    });
    return TensorList{gx};
  });
}

}  // namespace

Tensor abs_max(const Tensor& x, int64_t dim, bool keepdim) {
  ENGINE_CHECK(x.defined(), "abs_max: undefined input");
  const int64_t d = detail::wrap_dim("abs_max", dim, x.dim());
  const detail::Split3 sp = detail::split_at(x.shape(), d);
  Shape out = x.shape();
  if (keepdim) out[static_cast<size_t>(d)] = 1;
  else out.erase(out.begin() + d);
  Tensor y = Tensor::empty(out, x.dtype(), x.device());
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    detail::on_device(x.device(),
        [&] { kernels::abs_max_dim_cpu<T>(x.data<T>(), y.data<T>(), sp.outer, sp.dim, sp.inner); },
        [&] { kernels::abs_max_dim_cuda<T>(x.data<T>(), y.data<T>(), sp.outer, sp.dim, sp.inner); });
  });
  return y;
}

Tensor sum(const Tensor& x) { return reduce_all(x, 1.0, "sum"); }
Tensor mean(const Tensor& x) {
  return reduce_all(x, x.defined() && x.numel() > 0 ? 1.0 / static_cast<double>(x.numel()) : 0.0, "mean");
}
Tensor sum(const Tensor& x, int64_t dim, bool keepdim) { return reduce_dim(x, dim, keepdim, false, "sum"); }
Tensor mean(const Tensor& x, int64_t dim, bool keepdim) { return reduce_dim(x, dim, keepdim, true, "mean"); }

}  // namespace engine
