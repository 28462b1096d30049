// CPU elementwise kernels; the per-element math is shared with CUDA (kernels/common.h).
#include "kernels/elementwise.h"

#include "kernels/common.h"

namespace kernels {
namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threads cost more than they save
}

template <typename T> void relu_forward_cpu(const T* x, T* y, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = relu_fwd(x[i]);
}

template <typename T> void relu_backward_cpu(const T* gy, const T* y, T* gx, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) gx[i] = relu_bwd(gy[i], y[i]);
}

template <typename T> void guided_relu_backward_cpu(const T* gy, const T* y, T* gx, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) gx[i] = guided_relu_bwd(gy[i], y[i]);
}

template <typename T> void axpby_cpu(T a, const T* x, T b, const T* z, T* y, int64_t n) {
  if (b == T(0) || z == nullptr) {
#pragma omp parallel for simd if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
  } else {
#pragma omp parallel for simd if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) y[i] = a * x[i] + b * z[i];
  }
}

template <typename T> void mul_cpu(const T* a, const T* b, T* y, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}

template <typename T> void fill_cpu(T* y, T value, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = value;
}

template <typename From, typename To> void convert_cpu(const From* x, To* y, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<To>(x[i]);
}

template <typename T>
void uniform_cpu(T* y, T lo, T hi, uint64_t seed, uint64_t offset, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i)
    y[i] = lo + (hi - lo) * philox_uniform<T>(seed, offset + static_cast<uint64_t>(i));
}

template <typename T>
void normal_cpu(T* y, T mean, T std, uint64_t seed, uint64_t offset, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i)
    y[i] = mean + std * philox_normal<T>(seed, offset + static_cast<uint64_t>(i));
}

template <typename T>
void dropout_forward_cpu(const T* x, T* mask, T* y, T p, uint64_t seed, uint64_t offset,
                         int64_t n) {
  const T scale = p < T(1) ? T(1) / (T(1) - p) : T(0);
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) {
    const T keep = philox_uniform<T>(seed, offset + static_cast<uint64_t>(i)) >= p ? scale : T(0);
    mask[i] = keep;
    y[i] = x[i] * keep;
  }
}

#define INSTANTIATE(T)                                                                  \
  template void relu_forward_cpu<T>(const T*, T*, int64_t);                             \
  template void relu_backward_cpu<T>(const T*, const T*, T*, int64_t);                  \
  template void guided_relu_backward_cpu<T>(const T*, const T*, T*, int64_t);           \
  template void axpby_cpu<T>(T, const T*, T, const T*, T*, int64_t);                    \
  template void mul_cpu<T>(const T*, const T*, T*, int64_t);                            \
  template void fill_cpu<T>(T*, T, int64_t);                                            \
  template void uniform_cpu<T>(T*, T, T, uint64_t, uint64_t, int64_t);                  \
  template void normal_cpu<T>(T*, T, T, uint64_t, uint64_t, int64_t);                   \
  template void dropout_forward_cpu<T>(const T*, T*, T*, T, uint64_t, uint64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE
template void convert_cpu<float, double>(const float*, double*, int64_t);
template void convert_cpu<double, float>(const double*, float*, int64_t);
template void convert_cpu<float, float>(const float*, float*, int64_t);
template void convert_cpu<double, double>(const double*, double*, int64_t);

}  // namespace kernels
