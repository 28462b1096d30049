// Error checks for CUDA runtime calls and kernel launches, and a grid-stride
// parallel_for that turns a __device__ lambda into a checked launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kernels::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err) + " in " + expr +
                           " at " + file + ":" + std::to_string(line));
}

}  // namespace kernels::cuda

#define CUDA_CHECK(expr)                                                               \
  do {                                                                                 \
    const cudaError_t engine_cuda_err_ = (expr);                                       \
    if (engine_cuda_err_ != cudaSuccess)                                               \
      ::kernels::cuda::throw_cuda_error(engine_cuda_err_, #expr, __FILE__, __LINE__);  \
  } while (0)

namespace kernels::cuda {

template <typename F> __global__ void parallel_for_kernel(int64_t n, F f) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)
    f(i);
}

// Runs f(i) for i in [0, n) on the default stream; checks the launch.
template <typename F> void parallel_for(int64_t n, F f) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < 65535 * 16 ? want : 65535 * 16);
  parallel_for_kernel<<<blocks, kThreads>>>(n, f);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace kernels::cuda
