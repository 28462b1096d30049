// CUDA SGD step (kernels/sgd.h), the same per-element update as the CPU loop.
#include "kernels/cuda/check.cuh"
#include "kernels/sgd.h"
#include "kernels/sgd_math.h"

namespace kernels {

template <typename T> void sgd_step_cuda(T* p, const T* g, T* buf, const SgdParams& h, int64_t n) {
  const SgdParams hp = h;
  cuda::parallel_for(n, [=] __device__(int64_t i) {
    sgd_update(p[i], g[i], buf ? &buf[i] : nullptr, hp);
  });
}

template void sgd_step_cuda<float>(float*, const float*, float*, const SgdParams&, int64_t);
template void sgd_step_cuda<double>(double*, const double*, double*, const SgdParams&, int64_t);

}  // namespace kernels
