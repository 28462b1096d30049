// Pooling, NCHW. Memory-bound: each reads its input once.
//   max_pool2d: y = max over each window (padding counts as -inf); the flat index of the
//     maximum within its (n, c) plane is kept for backward: dx[argmax] += dy.
//   adaptive_avg_pool2d: window i covers [floor(i*H/Ho), ceil((i+1)*H/Ho)), mean over it.
#pragma once

#include <cstdint>

namespace kernels {

struct Pool2dShape {
  int64_t N, C, H, W;
  int64_t kh, kw, sh, sw, ph, pw;
  int64_t Ho, Wo;
};

// argmax may be null (a forward pass without a graph): then only y is written.
template <typename T>
void max_pool2d_forward_cpu(const T* x, T* y, int64_t* argmax, const Pool2dShape& s);
template <typename T>
void max_pool2d_backward_cpu(const T* gy, const int64_t* argmax, T* gx, const Pool2dShape& s);

template <typename T>
void adaptive_avg_pool2d_forward_cpu(const T* x, T* y, int64_t NC, int64_t H, int64_t W,
                                     int64_t Ho, int64_t Wo);
template <typename T>
void adaptive_avg_pool2d_backward_cpu(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W,
                                      int64_t Ho, int64_t Wo);

// CUDA (kernels/cuda/pool.cu): same contracts. max_pool2d backward gathers, for each
// input element, the gradients of the windows whose argmax it is, so it needs no atomics
// and is deterministic; argmax lives in device memory.
template <typename T>
void max_pool2d_forward_cuda(const T* x, T* y, int64_t* argmax, const Pool2dShape& s);
template <typename T>
void max_pool2d_backward_cuda(const T* gy, const int64_t* argmax, T* gx, const Pool2dShape& s);
// For tests: the max-pool kernels' per-thread code run on the host, thread by thread (no
// GPU needed). Host pointers. flat = false: the packed kernels, in the instance the
// launch would pick, with their index arithmetic (shapes whose indices fit in int only,
// else std::invalid_argument); true: the flat kernels that shapes beyond int get, for any
// shape.
template <typename T>
void max_pool2d_forward_cuda_on_host(const T* x, T* y, int64_t* argmax, const Pool2dShape& s, bool flat = false);
template <typename T>
void max_pool2d_backward_cuda_on_host(const T* gy, const int64_t* argmax, T* gx, const Pool2dShape& s,
                                      bool flat = false);
template <typename T>
void adaptive_avg_pool2d_forward_cuda(const T* x, T* y, int64_t NC, int64_t H, int64_t W,
                                      int64_t Ho, int64_t Wo);
// For tests: the global average pool's warp code (Ho = Wo = 1) run on the host, 32 threads
// a plane with the shuffles' order of summation; and its backward's per-thread code (all
// the planes' elements below 2^31), thread by thread: the float4 kernel's over its grid
// for float with gx 16-byte aligned, else one element a thread. Host pointers.
template <typename T>
void adaptive_avg_pool2d_forward_cuda_on_host(const T* x, T* y, int64_t NC, int64_t H, int64_t W);
template <typename T>
void adaptive_avg_pool2d_backward_cuda_on_host(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W);
template <typename T>
void adaptive_avg_pool2d_backward_cuda(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W,
                                       int64_t Ho, int64_t Wo);

}  // namespace kernels
