// add, sub, mul (equal shapes) and their scalar forms.
#include "engine/ops/common.h"
#include "kernels/elementwise.h"

namespace engine {
namespace {

// y = a * x + b * z on x's device.
Tensor axpby(double a, const Tensor& x, double b, const Tensor& z) {
  Tensor y = empty_like(x);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* zp = z.defined() ? z.data<T>() : nullptr;
    if (x.device().is_cpu())
      kernels::axpby_cpu<T>(T(a), x.data<T>(), T(b), zp, y.data<T>(), x.numel());
    else
      kernels::axpby_cuda<T>(T(a), x.data<T>(), T(b), zp, y.data<T>(), x.numel());
  });
  return y;
}

Tensor mul_raw(const Tensor& a, const Tensor& b) {
  Tensor y = empty_like(a);
  dispatch_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (a.device().is_cpu())
      kernels::mul_cpu<T>(a.data<T>(), b.data<T>(), y.data<T>(), a.numel());
    else
      kernels::mul_cuda<T>(a.data<T>(), b.data<T>(), y.data<T>(), a.numel());
  });
  return y;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  detail::check_same_shape("add", a, b);
  return record(axpby(1, a, 1, b), {a, b}, "add",
                [](const Tensor& g, const std::vector<bool>&) { return TensorList{g, g}; });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  detail::check_same_shape("sub", a, b);
  return record(axpby(1, a, -1, b), {a, b}, "sub", [](const Tensor& g, const std::vector<bool>& needs) {
    return TensorList{g, needs[1] ? axpby(-1, g, 0, Tensor()) : Tensor()};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  detail::check_same_shape("mul", a, b);
  const Tensor sa = b.requires_grad() ? a.detach() : Tensor();
  const Tensor sb = a.requires_grad() ? b.detach() : Tensor();
  return record(mul_raw(a, b), {a, b}, "mul", [sa, sb](const Tensor& g, const std::vector<bool>& needs) {
    return TensorList{needs[0] ? mul_raw(g, sb) : Tensor(), needs[1] ? mul_raw(g, sa) : Tensor()};
  });
}

Tensor mul(const Tensor& a, double s) {
  ENGINE_CHECK(a.defined(), "mul: undefined input");
  return record(axpby(s, a, 0, Tensor()), {a}, "mul_scalar", [s](const Tensor& g, const std::vector<bool>&) {
    return TensorList{axpby(s, g, 0, Tensor())};
  });
}

Tensor add(const Tensor& a, double s) {
  ENGINE_CHECK(a.defined(), "add: undefined input");
  const Tensor c = Tensor::full(a.shape(), s, a.dtype(), a.device());
  return record(axpby(1, a, 1, c), {a}, "add_scalar",
                [](const Tensor& g, const std::vector<bool>&) { return TensorList{g}; });
}

}  // namespace engine
