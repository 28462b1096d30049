// softmax, log_softmax and cross_entropy.
#include <cstring>
#include <memory>

#include "engine/ops/common.h"
#include "engine/storage.h"
#include "kernels/cuda_runtime.h"
#include "kernels/softmax.h"

namespace engine {
namespace {

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log, const char* name) {
  ENGINE_CHECK(x.defined(), name, ": undefined input");
  const int64_t d = detail::wrap_dim(name, dim, x.dim());
  const detail::Split3 sp = detail::split_at(x.shape(), d);
  Tensor y = empty_like(x);
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    detail::on_device(x.device(),
        [&] { kernels::softmax_forward_cpu<T>(x.data<T>(), y.data<T>(), sp.outer, sp.dim, sp.inner, log); },
        [&] { kernels::softmax_forward_cuda<T>(x.data<T>(), y.data<T>(), sp.outer, sp.dim, sp.inner, log); });
  });
  const Tensor saved = needs_graph({x}) ? y.detach() : Tensor();
  return record(y, {x}, name, [saved, sp, log](const Tensor& g, const std::vector<bool>&) {
    Tensor gx = empty_like(g);
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      detail::on_device(g.device(),
          [&] {
            kernels::softmax_backward_cpu<T>(g.data<T>(), saved.data<T>(), gx.data<T>(), sp.outer,
                                             sp.dim, sp.inner, log);
          },
          [&] {
            kernels::softmax_backward_cuda<T>(g.data<T>(), saved.data<T>(), gx.data<T>(), sp.outer,
                                              sp.dim, sp.inner, log);
          });
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
  Tensor prob = empty_like(logits);
  Tensor loss = Tensor::empty({}, logits.dtype(), logits.device());
  // The targets live where the logits do: copied once to the device for CUDA.
  const std::size_t tbytes = targets.size() * sizeof(int64_t);
  auto t = std::make_shared<Storage>(tbytes, logits.device());
  const int64_t* tp = static_cast<const int64_t*>(t->data());
  if (logits.device().is_cpu()) std::memcpy(t->data(), targets.data(), tbytes);
  else kernels::cuda::memcpy_h2d(t->data(), targets.data(), tbytes);
  dispatch_dtype(logits.dtype(), [&](auto tag) {
    using T = decltype(tag);
    detail::on_device(logits.device(),
        [&] { *loss.data<T>() = kernels::cross_entropy_forward_cpu<T>(logits.data<T>(), tp, prob.data<T>(), N, K); },
        [&] { kernels::cross_entropy_forward_cuda<T>(logits.data<T>(), tp, prob.data<T>(), loss.data<T>(), N, K); });
  });
  return record(loss, {logits}, "cross_entropy", [prob, t, N, K](const Tensor& g, const std::vector<bool>&) {
    Tensor gz = empty_like(prob);
    const int64_t* tp = static_cast<const int64_t*>(t->data());
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      detail::on_device(g.device(),
          [&] { kernels::cross_entropy_backward_cpu<T>(prob.data<T>(), tp, *g.data<T>(), gz.data<T>(), N, K); },
          [&] { kernels::cross_entropy_backward_cuda<T>(prob.data<T>(), tp, g.data<T>(), gz.data<T>(), N, K); });
    });
    return TensorList{gz};
  });
}

}  // namespace engine
