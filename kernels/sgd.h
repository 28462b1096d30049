// One SGD step for one parameter, exactly torch.optim.SGD:
//   d = g + wd * p
//   if momentum: buf = first ? d : momentum * buf + (1 - dampening) * d
//                d = nesterov ? d + momentum * buf : buf
//   p -= lr * d
// Memory-bound: reads p, g, buf and writes p, buf once.
#pragma once

#include <cstdint>

namespace kernels {

struct SgdParams {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  bool first_step;  // momentum buffer not yet initialised
};

template <typename T> void sgd_step_cpu(T* p, const T* g, T* buf, const SgdParams& h, int64_t n);
template <typename T> void sgd_step_cuda(T* p, const T* g, T* buf, const SgdParams& h, int64_t n);
// The float kernel's per-thread code (four elements at a time) run on the host, thread by
// thread over the grid sgd_step_cuda launches, so tests check it without a GPU. p, g and
// buf must be 16-byte aligned.
void sgd_step_float4_cuda_on_host(float* p, const float* g, float* buf, const SgdParams& h, int64_t n);

}  // namespace kernels
