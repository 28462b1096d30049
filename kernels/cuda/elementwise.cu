// CUDA elementwise kernels (kernels/elementwise.h). Memory-bound: one read of each
// input and one write per element (float maps four at a time, see map2); the
// per-element math is kernels/common.h's, so the CPU and CUDA backends compute the same
// values (random draws included).
#include <type_traits>

#include "kernels/common.h"
#include "kernels/cuda/check.cuh"
#include "kernels/elementwise.h"

namespace kernels {

using cuda::parallel_for;

namespace {

// y[i] = op(a[i], b[i]) over float arrays, four elements per thread with 16-byte loads
// and stores (one instruction each instead of four), the last n % 4 one at a time; b
// null: a unary map, op(a[i], a[i]), reading a once. In-place use (y == a or y == b) is
// fine: each element is read before it is written, by the same thread.
template <typename Op>
__global__ void map2_float4_kernel(const float* a, const float* b, float* y, int64_t n, Op op) {
  const int64_t n4 = n >> 2, stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float4* a4 = reinterpret_cast<const float4*>(a);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  float4* y4 = reinterpret_cast<float4*>(y);
  for (int64_t i = first; i < n4; i += stride) {
    const float4 u = a4[i], v = b4 != nullptr ? b4[i] : u;
    y4[i] = make_float4(op(u.x, v.x), op(u.y, v.y), op(u.z, v.z), op(u.w, v.w));
  }
  for (int64_t i = (n4 << 2) + first; i < n; i += stride) y[i] = op(a[i], b != nullptr ? b[i] : a[i]);
}

// y[i] = op(a[i], b[i]); b null for a unary map (op(a[i], a[i])). The float4 kernel where
// T is float and every pointer is 16-byte aligned (cached device blocks are; views into a
// tensor may not be), else one element per thread.
template <typename T, typename Op> void map2(const T* a, const T* b, T* y, int64_t n, Op op) {
  if (n <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (cuda::aligned16(a) && (b == nullptr || cuda::aligned16(b)) && cuda::aligned16(y)) {
      constexpr int kThreads = 256;
      map2_float4_kernel<<<cuda::grid_for((n + 3) / 4, kThreads), kThreads, 0, cuda::stream()>>>(a, b, y, n, op);
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  if (b == nullptr)
    parallel_for(n, [=] __device__(int64_t i) { y[i] = op(a[i], a[i]); });
  else
    parallel_for(n, [=] __device__(int64_t i) { y[i] = op(a[i], b[i]); });
}

}  // namespace

template <typename T> void relu_forward_cuda(const T* x, T* y, int64_t n) {
  map2(x, static_cast<const T*>(nullptr), y, n, [] __device__(T v, T) { return relu_fwd(v); });
}
template <typename T> void relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n) {
  map2(gy, y, gx, n, [] __device__(T g, T v) { return relu_bwd(g, v); });
}
template <typename T> void guided_relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n) {
  map2(gy, y, gx, n, [] __device__(T g, T v) { return guided_relu_bwd(g, v); });
}
template <typename T> void axpby_cuda(T a, const T* x, T b, const T* z, T* y, int64_t n) {
  if (b == T(0) || z == nullptr)
    map2(x, static_cast<const T*>(nullptr), y, n, [a] __device__(T u, T) { return a * u; });
  else
    map2(x, z, y, n, [a, b] __device__(T u, T v) { return a * u + b * v; });
}
template <typename T> void mul_cuda(const T* a, const T* b, T* y, int64_t n) {
  map2(a, b, y, n, [] __device__(T u, T v) { return u * v; });
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
    y[i] = ::fma(hi - lo, philox_uniform<T>(seed, offset + static_cast<uint64_t>(i)), lo);  // as on the CPU
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
