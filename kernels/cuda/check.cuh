// For the CUDA sources only: error checks that turn CUDA runtime, cuBLAS and cuDNN
// failures into exceptions naming the call, file and line; the engine's stream and
// library handles; and a grid-stride parallel_for that turns a __device__ lambda into a
// checked launch on that stream.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kernels::cuda {

[[noreturn]] inline void throw_cuda_error(const char* library, const std::string& what,
                                          const char* expr, const char* file, int line) {
  throw std::runtime_error(std::string(library) + " error: " + what + " in " + expr + " at " +
                           file + ":" + std::to_string(line));
}
const char* cublas_status_name(cublasStatus_t status);

// The stream every kernel, copy and library call of the engine is ordered on (created
// on first use with default flags, so it also orders with the legacy default stream).
cudaStream_t stream();
// cuBLAS and cuDNN handles bound to stream(), created on first use.
cublasHandle_t cublas_handle();
cudnnHandle_t cudnn_handle();

}  // namespace kernels::cuda

#define CUDA_CHECK(expr)                                                                    \
  do {                                                                                      \
    const cudaError_t engine_cuda_err_ = (expr);                                            \
    if (engine_cuda_err_ != cudaSuccess)                                                    \
      ::kernels::cuda::throw_cuda_error("CUDA", cudaGetErrorString(engine_cuda_err_), #expr, \
                                        __FILE__, __LINE__);                                \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                      \
    const cublasStatus_t engine_cublas_st_ = (expr);                                        \
    if (engine_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                         \
      ::kernels::cuda::throw_cuda_error(                                                    \
          "cuBLAS", ::kernels::cuda::cublas_status_name(engine_cublas_st_), #expr, __FILE__, \
          __LINE__);                                                                        \
  } while (0)

#define CUDNN_CHECK(expr)                                                                   \
  do {                                                                                      \
    const cudnnStatus_t engine_cudnn_st_ = (expr);                                          \
    if (engine_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                           \
      ::kernels::cuda::throw_cuda_error("cuDNN", cudnnGetErrorString(engine_cudnn_st_),     \
                                        #expr, __FILE__, __LINE__);                         \
  } while (0)

// After a <<<...>>> launch: a bad configuration shows up here, not at the next call.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace kernels::cuda {

template <typename F> __global__ void parallel_for_kernel(int64_t n, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    f(i);
}

// Runs f(i) for i in [0, n) on the engine's stream; checks the launch.
template <typename F> void parallel_for(int64_t n, F f) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < 65535 * 16 ? want : 65535 * 16);
  parallel_for_kernel<<<blocks, kThreads, 0, stream()>>>(n, f);
  CUDA_CHECK_LAUNCH();
}

// Thread `first` of `stride` threads visits the items first, first + stride, ... below n,
// as a grid-stride loop does, but U at a time: load(i) of all U items first, then
// finish(i, loaded) of each in order. U loads are then in flight at once instead of one,
// which a streaming kernel needs to keep enough bytes in flight to approach the copy
// bandwidth. Each item is still loaded and finished by the same thread, so in-place use
// stays safe, and finish runs in the grid-stride loop's order (sums keep their order).
// Also runs on the host (tests of the kernels' per-thread code).
template <int U, typename Load, typename Finish>
__host__ __device__ __forceinline__ void strided_unrolled(int64_t first, int64_t stride, int64_t n, Load load,
                                                          Finish finish) {
  using V = decltype(load(int64_t{}));
  for (int64_t base = first; base < n; base += U * stride) {
    V v[U];
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
    for (int j = 0; j < U; ++j)
      if (base + j * stride < n) v[j] = load(base + j * stride);
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
    for (int j = 0; j < U; ++j)
      if (base + j * stride < n) finish(base + j * stride, v[j]);
  }
}

// min for int, on the device and the host (for kernel code that also runs on the host).
__host__ __device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }

// Whether p may be read and written 16 bytes at a time (float4, double2).
inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// Blocks for a grid-stride launch of n items with `threads` per block.
inline unsigned grid_for(int64_t n, int threads) {
  const int64_t want = (n + threads - 1) / threads;
  return static_cast<unsigned>(want < 65535 * 16 ? (want > 0 ? want : 1) : 65535 * 16);
}

}  // namespace kernels::cuda
