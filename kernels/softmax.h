// softmax / log_softmax along the middle axis of [outer, dim, inner], and cross-entropy
// over logits [N, K] with integer targets, averaged over the batch. Max-subtracted for
// stability; sums in double for float. Memory-bound. On the CPU, float rows with the
// softmax axis last go 8 at a time (AVX2) with a float e^x within 2 ulp (0 below
// FLT_MIN); the rest computes e^x in double.
//   softmax backward:     gx = y * (gy - sum(gy * y))
//   log_softmax backward: gx = gy - softmax(x) * sum(gy)
//   cross_entropy:        loss = mean_n (logsumexp(z_n) - z_n[t_n]);
//                         gz = g * (softmax(z) - onehot(t)) / N
#pragma once

#include <cstdint>

namespace kernels {

template <typename T>
void softmax_forward_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log);
template <typename T>
void softmax_backward_cpu(const T* gy, const T* y, T* gx, int64_t outer, int64_t dim,
                          int64_t inner, bool log);

// Returns the mean loss; writes the softmax probabilities to prob (N*K) for backward.
template <typename T>
T cross_entropy_forward_cpu(const T* z, const int64_t* target, T* prob, int64_t N, int64_t K);
template <typename T>
void cross_entropy_backward_cpu(const T* prob, const int64_t* target, T g, T* gz, int64_t N,
                                int64_t K);

// CUDA (kernels/cuda/softmax.cu): one warp (or block) per row with warp-shuffle
// reductions. Pointers are device pointers, target included; the mean loss is written
// to the one-element device array loss, and backward reads the upstream gradient g from
// the one-element device array g.
template <typename T>
void softmax_forward_cuda(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log);
template <typename T>
void softmax_backward_cuda(const T* gy, const T* y, T* gx, int64_t outer, int64_t dim,
                           int64_t inner, bool log);
// For tests: the CUDA code run on the host (no GPU needed), host pointers, dispatched as
// the device dispatches it. With inner == 1, rows of at most 1024 elements take the warp
// kernel's code (a row in a warp's registers), 32 host threads standing in for a warp's
// lanes: `warps` warps take the rows in turn, as the kernel's do (warp w: rows w, w +
// warps, ...; each loads its next row before it computes the current one), 0: a warp a
// row. Longer rows take the block kernel's code on 256 host threads, a row at a time;
// inner > 1 the per-column code. Negative sizes or warps: std::invalid_argument.
template <typename T>
void softmax_forward_cuda_on_host(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log,
                                  int64_t warps = 0);
template <typename T>
void softmax_backward_cuda_on_host(const T* gy, const T* y, T* gx, int64_t outer, int64_t dim, int64_t inner,
                                   bool log, int64_t warps = 0);
template <typename T>
void cross_entropy_forward_cuda(const T* z, const int64_t* target, T* prob, T* loss, int64_t N,
                                int64_t K);
template <typename T>
void cross_entropy_backward_cuda(const T* prob, const int64_t* target, const T* g, T* gz,
                                 int64_t N, int64_t K);

}  // namespace kernels
