// CUDA elementwise kernels (kernels/elementwise.h). Memory-bound: one read of each
// input and one write per element; the per-element math is kernels/common.h's, so the
// CPU and CUDA backends compute the same values (random draws included).
#include "kernels/common.h"
#include "kernels/cuda/check.cuh"
#include "kernels/elementwise.h"

namespace kernels {

using cuda::parallel_for;

template <typename T> void relu_forward_cuda(const T* x, T* y, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { y[i] = relu_fwd(x[i]); });
}
template <typename T> void relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { gx[i] = relu_bwd(gy[i], y[i]); });
}
template <typename T> void guided_relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { gx[i] = guided_relu_bwd(gy[i], y[i]); });
}
template <typename T> void axpby_cuda(T a, const T* x, T b, const T* z, T* y, int64_t n) {
  if (b == T(0) || z == nullptr)
    parallel_for(n, [=] __device__(int64_t i) { y[i] = a * x[i]; });
  else
    parallel_for(n, [=] __device__(int64_t i) { y[i] = a * x[i] + b * z[i]; });
}
template <typename T> void mul_cuda(const T* a, const T* b, T* y, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { y[i] = a[i] * b[i]; });
}
template <typename T> void fill_cuda(T* y, T value, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { y[i] = value; });
}
template <typename From, typename To> void convert_cuda(const From* x, To* y, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { y[i] = static_cast<To>(x[i]); });
}
template <typename T>
void uniform_cuda(T* y, T lo, T hi, uint64_t seed, uint64_t offset, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) {
    y[i] = lo + (hi - lo) * philox_uniform<T>(seed, offset + static_cast<uint64_t>(i));
  });
}
template <typename T>
void normal_cuda(T* y, T mean, T std, uint64_t seed, uint64_t offset, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) {
    y[i] = mean + std * philox_normal<T>(seed, offset + static_cast<uint64_t>(i));
  });
}
template <typename T>
void dropout_forward_cuda(const T* x, T* mask, T* y, T p, uint64_t seed, uint64_t offset,
                          int64_t n) {
  const T scale = p < T(1) ? T(1) / (T(1) - p) : T(0);
  parallel_for(n, [=] __device__(int64_t i) {
    const T keep = philox_uniform<T>(seed, offset + static_cast<uint64_t>(i)) >= p ? scale : T(0);
    mask[i] = keep;
    y[i] = x[i] * keep;
  });
}

#define INSTANTIATE(T)                                                                   \
  template void relu_forward_cuda<T>(const T*, T*, int64_t);                             \
  template void relu_backward_cuda<T>(const T*, const T*, T*, int64_t);                  \
  template void guided_relu_backward_cuda<T>(const T*, const T*, T*, int64_t);           \
  template void axpby_cuda<T>(T, const T*, T, const T*, T*, int64_t);                    \
  template void mul_cuda<T>(const T*, const T*, T*, int64_t);                            \
  template void fill_cuda<T>(T*, T, int64_t);                                            \
  template void uniform_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                  \
  template void normal_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                   \
  template void dropout_forward_cuda<T>(const T*, T*, T*, T, uint64_t, uint64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE
template void convert_cuda<float, double>(const float*, double*, int64_t);
template void convert_cuda<double, float>(const double*, float*, int64_t);

}  // namespace kernels
