// For the CUDA sources only: a warp's 32 lanes as a group that combines its members'
// values with shuffles (every lane gets the result), in butterfly order: lane l takes
// lane l ^ 16, then l ^ 8, ... . Per-thread code written against the group's interface
// (rank(), sum(), max()) also runs on the host with cuda::HostWarp (host_threads.h),
// which combines in the same order.
#pragma once

#include <cstdint>

namespace kernels::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// std::max's rule (the CPU's): keeps m unless v is larger.
template <typename T> __host__ __device__ __forceinline__ T max_of(T m, T v) { return m < v ? v : m; }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max_of(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

struct WarpGroup {  // the 32 lanes of a warp
  int lane;
  __device__ __forceinline__ int64_t rank() const { return lane; }
  template <typename A> __device__ __forceinline__ A sum(A v) const { return warp_sum(v); }
  template <typename A> __device__ __forceinline__ A max(A v) const { return warp_max(v); }
};

}  // namespace kernels::cuda
