// CPU softmax, log_softmax and cross-entropy (kernels/softmax.h).
#include "kernels/softmax.h"

#include <algorithm>
#include <cmath>

namespace kernels {

template <typename T>
void softmax_forward_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log) {
  if (dim == 0) return;  // nothing to write; the max below would read past the end
#pragma omp parallel for if (outer * dim * inner > (1 << 15))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const T* xr = x + o * dim * inner + i;
      T* yr = y + o * dim * inner + i;
      T m = xr[0];
      for (int64_t d = 1; d < dim; ++d) m = std::max(m, xr[d * inner]);
      double s = 0;
      for (int64_t d = 0; d < dim; ++d) s += std::exp(static_cast<double>(xr[d * inner] - m));
      if (log) {
        const double lse = std::log(s);
        for (int64_t d = 0; d < dim; ++d)
          yr[d * inner] = static_cast<T>(static_cast<double>(xr[d * inner] - m) - lse);
      } else {
        for (int64_t d = 0; d < dim; ++d)
          yr[d * inner] = static_cast<T>(std::exp(static_cast<double>(xr[d * inner] - m)) / s);
      }
    }
}

template <typename T>
void softmax_backward_cpu(const T* gy, const T* y, T* gx, int64_t outer, int64_t dim,
                          int64_t inner, bool log) {
#pragma omp parallel for if (outer * dim * inner > (1 << 15))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t base = o * dim * inner + i;
      double s = 0;
      if (log) {
        for (int64_t d = 0; d < dim; ++d) s += gy[base + d * inner];
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t k = base + d * inner;
          gx[k] = static_cast<T>(gy[k] - std::exp(static_cast<double>(y[k])) * s);
        }
      } else {
        for (int64_t d = 0; d < dim; ++d) s += static_cast<double>(gy[base + d * inner]) * y[base + d * inner];
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t k = base + d * inner;
          gx[k] = static_cast<T>(y[k] * (gy[k] - s));
        }
      }
    }
}

template <typename T>
T cross_entropy_forward_cpu(const T* z, const int64_t* target, T* prob, int64_t N, int64_t K) {
  softmax_forward_cpu(z, prob, N, K, 1, /*log=*/false);
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* zr = z + n * K;
    const T m = *std::max_element(zr, zr + K);
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += std::exp(static_cast<double>(zr[k] - m));
    total += std::log(s) + static_cast<double>(m) - static_cast<double>(zr[target[n]]);
  }
  return static_cast<T>(total / static_cast<double>(N));
}

template <typename T>
void cross_entropy_backward_cpu(const T* prob, const int64_t* target, T g, T* gz, int64_t N,
                                int64_t K) {
  const T scale = g / static_cast<T>(N);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      gz[n * K + k] = scale * (prob[n * K + k] - (k == target[n] ? T(1) : T(0)));
}

#define INSTANTIATE(T)                                                                         \
  template void softmax_forward_cpu<T>(const T*, T*, int64_t, int64_t, int64_t, bool);         \
  template void softmax_backward_cpu<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool); \
  template T cross_entropy_forward_cpu<T>(const T*, const int64_t*, T*, int64_t, int64_t);     \
  template void cross_entropy_backward_cpu<T>(const T*, const int64_t*, T, T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
