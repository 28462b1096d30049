// relu and dropout.
#include "engine/ops/common.h"
#include "engine/random.h"
#include "kernels/common.h"
#include "kernels/elementwise.h"

namespace engine {

namespace {

Tensor relu_impl(const Tensor& x, bool guided) {
  const char* name = guided ? "guided_relu" : "relu";
  ENGINE_CHECK(x.defined(), name, ": undefined input");
  Tensor y = empty_like(x);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (x.device().is_cpu()) kernels::relu_forward_cpu<T>(x.data<T>(), y.data<T>(), x.numel());
    else kernels::relu_forward_cuda<T>(x.data<T>(), y.data<T>(), x.numel());
  });
  const Tensor saved = needs_graph({x}) ? y.detach() : Tensor();
  return record(y, {x}, name, [saved, guided](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = empty_like(g);
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T *gp = g.data<T>(), *yp = saved.data<T>();
      T* out = gx.data<T>();
      const bool cpu = g.device().is_cpu();
      if (guided) {
        if (cpu) kernels::guided_relu_backward_cpu<T>(gp, yp, out, g.numel());
        else kernels::guided_relu_backward_cuda<T>(gp, yp, out, g.numel());
      } else {
        if (cpu) kernels::relu_backward_cpu<T>(gp, yp, out, g.numel());
        else kernels::relu_backward_cuda<T>(gp, yp, out, g.numel());
      }
    });
    return TensorList{gx};
  });
}

}  // namespace

Tensor relu(const Tensor& x) { return relu_impl(x, false); }
Tensor guided_relu(const Tensor& x) { return relu_impl(x, true); }

Tensor dropout(const Tensor& x, double p, bool training, Generator* gen) {
  ENGINE_CHECK(x.defined(), "dropout: undefined input");
  ENGINE_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got ", p);
  if (!training || p == 0.0) return x;
  Generator& g = gen != nullptr ? *gen : default_generator();
  Tensor y = empty_like(x), mask = empty_like(x);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // One Philox counter for each group of kernels::dropout_group<T>() elements.
    const uint64_t offset = g.advance(kernels::dropout_counters<T>(x.numel()));
    if (x.device().is_cpu())
      kernels::dropout_forward_cpu<T>(x.data<T>(), mask.data<T>(), y.data<T>(), T(p), g.seed(),
                                      offset, x.numel());
    else
      kernels::dropout_forward_cuda<T>(x.data<T>(), mask.data<T>(), y.data<T>(), T(p), g.seed(),
                                       offset, x.numel());
  });
  return record(y, {x}, "dropout", [mask](const Tensor& gy, const std::vector<bool>&) {
    return TensorList{mul(gy, mask)};
  });
}

}  // namespace engine
