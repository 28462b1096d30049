// CPU reductions (kernels/reduce.h). Float sums accumulate in double.
#include "kernels/reduce.h"

#include <cmath>

namespace kernels {

template <typename T> T sum_all_cpu(const T* x, int64_t n) {
  double acc = 0;
#pragma omp parallel for simd reduction(+ : acc) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) acc += x[i];
  return static_cast<T>(acc);
}

template <typename T>
void sum_dim_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner) {
#pragma omp parallel for if (outer * dim * inner > (1 << 16))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double acc = 0;
      for (int64_t d = 0; d < dim; ++d) acc += x[(o * dim + d) * inner + i];
      y[o * inner + i] = static_cast<T>(acc);
    }
}

template <typename T>
void abs_max_dim_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner) {
#pragma omp parallel for if (outer * dim * inner > (1 << 16))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      T m = 0;
      for (int64_t d = 0; d < dim; ++d) {
        const T v = std::fabs(x[(o * dim + d) * inner + i]);
        m = v > m ? v : m;
      }
      y[o * inner + i] = m;
    }
}

template <typename T>
void broadcast_dim_cpu(const T* y, T* x, T scale, int64_t outer, int64_t dim, int64_t inner) {
#pragma omp parallel for if (outer * dim * inner > (1 << 16))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t i = 0; i < inner; ++i) x[(o * dim + d) * inner + i] = scale * y[o * inner + i];
}

template <typename T> void add_bias_cpu(T* y, const T* b, int64_t outer, int64_t C, int64_t inner) {
#pragma omp parallel for if (outer * C * inner > (1 << 16))
  for (int64_t oc = 0; oc < outer * C; ++oc) {
    const T bc = b[oc % C];
    T* yr = y + oc * inner;
    for (int64_t i = 0; i < inner; ++i) yr[i] += bc;
  }
}

// One channel per thread, summed over o then i in order: the same result for any number
// of threads.
template <typename T>
void bias_grad_cpu(const T* gy, T* gb, int64_t outer, int64_t C, int64_t inner) {
#pragma omp parallel for if (outer * C * inner > (1 << 16))
  for (int64_t c = 0; c < C; ++c) {
    double acc = 0;
    for (int64_t o = 0; o < outer; ++o) {
      const T* g = gy + (o * C + c) * inner;
      for (int64_t i = 0; i < inner; ++i) acc += g[i];
    }
    gb[c] = static_cast<T>(acc);
  }
}

#define INSTANTIATE(T)                                                               \
  template T sum_all_cpu<T>(const T*, int64_t);                                     \
  template void sum_dim_cpu<T>(const T*, T*, int64_t, int64_t, int64_t);            \
  template void abs_max_dim_cpu<T>(const T*, T*, int64_t, int64_t, int64_t);        \
  template void broadcast_dim_cpu<T>(const T*, T*, T, int64_t, int64_t, int64_t);   \
  template void add_bias_cpu<T>(T*, const T*, int64_t, int64_t, int64_t);           \
  template void bias_grad_cpu<T>(const T*, T*, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
