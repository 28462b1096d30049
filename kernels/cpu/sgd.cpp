// CPU SGD step (kernels/sgd.h); the per-element update is shared with CUDA.
#include "kernels/sgd.h"

#include "kernels/sgd_math.h"

namespace kernels {

template <typename T> void sgd_step_cpu(T* p, const T* g, T* buf, const SgdParams& h, int64_t n) {
#pragma omp parallel for simd if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) sgd_update(p[i], g[i], buf ? &buf[i] : nullptr, h);
}

template void sgd_step_cpu<float>(float*, const float*, float*, const SgdParams&, int64_t);
template void sgd_step_cpu<double>(double*, const double*, double*, const SgdParams&, int64_t);

}  // namespace kernels
