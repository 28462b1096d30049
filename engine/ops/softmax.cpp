// softmax, log_softmax and cross_entropy.
#include <memory>

#include "engine/ops/common.h"
#include "kernels/softmax.h"

namespace engine {
namespace {

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log, const char* name) {
  ENGINE_CHECK(x.defined(), name, ": undefined input");
  const int64_t d = detail::wrap_dim(name, dim, x.dim());
  detail::require_cpu(name, x);
  const detail::Split3 sp = detail::split_at(x.shape(), d);
  Tensor y = empty_like(x);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    kernels::softmax_forward_cpu<T>(x.data<T>(), y.data<T>(), sp.outer, sp.dim, sp.inner, log);
  });
  const Tensor saved = needs_graph({x}) ? y.detach() : Tensor();
  return record(y, {x}, name, [saved, sp, log](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = empty_like(g);
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::softmax_backward_cpu<T>(g.data<T>(), saved.data<T>(), gx.data<T>(), sp.outer, sp.dim,
                                       sp.inner, log);
    });
    return TensorList{gx};
  });
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false, "softmax"); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true, "log_softmax"); }

Tensor cross_entropy(const Tensor& logits, const std::vector<int64_t>& targets) {
  ENGINE_CHECK(logits.defined(), "cross_entropy: undefined logits");
  ENGINE_CHECK(logits.dim() == 2, "cross_entropy: logits must be [N, K], got shape ",
               shape_str(logits.shape()));
  const int64_t N = logits.size(0), K = logits.size(1);
  ENGINE_CHECK(N > 0 && K > 0, "cross_entropy: empty logits ", shape_str(logits.shape()));
  ENGINE_CHECK(static_cast<int64_t>(targets.size()) == N, "cross_entropy: ", targets.size(),
               " targets for logits ", shape_str(logits.shape()));
  for (int64_t n = 0; n < N; ++n)
    ENGINE_CHECK(targets[static_cast<size_t>(n)] >= 0 && targets[static_cast<size_t>(n)] < K,
                 "cross_entropy: target ", targets[static_cast<size_t>(n)], " of sample ", n,
                 " is out of range for ", K, " classes");
  detail::require_cpu("cross_entropy", logits);
  Tensor prob = empty_like(logits);
  Tensor loss = Tensor::empty({}, logits.dtype(), logits.device());
  dispatch_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    *loss.data<T>() = kernels::cross_entropy_forward_cpu<T>(logits.data<T>(), targets.data(),
                                                            prob.data<T>(), N, K);
  });
  auto t = std::make_shared<const std::vector<int64_t>>(targets);
  return record(loss, {logits}, "cross_entropy", [prob, t, N, K](const Tensor& g, const std::vector<bool>&) {
    Tensor gz = empty_like(prob);
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::cross_entropy_backward_cpu<T>(prob.data<T>(), t->data(), *g.data<T>(), gz.data<T>(), N, K);
    });
    return TensorList{gz};
  });
}

}  // namespace engine
