// Reductions and their adjoints over a tensor viewed as [outer, dim, inner].
// sum_dim: y[o, i] = sum_d x[o, d, i].  broadcast_dim: x[o, d, i] = y[o, i] (its adjoint).
// Totals accumulate in double for float inputs. Memory-bound.
#pragma once

#include <cstdint>
#include <vector>

namespace kernels {

template <typename T> T sum_all_cpu(const T* x, int64_t n);
template <typename T>
void sum_dim_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner);
// y[o, i] = max_d |x[o, d, i]| (saliency's channel-wise maximum of |gradient|).
template <typename T>
void abs_max_dim_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner);
template <typename T>
void broadcast_dim_cpu(const T* y, T* x, T scale, int64_t outer, int64_t dim, int64_t inner);

// Bias of a layer whose output is [outer, C, inner] (conv: [N, C, H*W]; linear: [M, C, 1]):
//   add_bias:  y[o, c, i] += b[c]
//   bias_grad: gb[c] = sum over o, i of gy[o, c, i]
template <typename T> void add_bias_cpu(T* y, const T* b, int64_t outer, int64_t C, int64_t inner);
template <typename T>
void bias_grad_cpu(const T* gy, T* gb, int64_t outer, int64_t C, int64_t inner);

// CUDA (kernels/cuda/reduce.cu). Results stay on the device: sum_all writes
// scale * sum(x) to the one-element device array y. Block reductions with warp shuffles;
// float totals accumulate in double, as on the CPU.
template <typename T> void sum_all_cuda(const T* x, T* y, T scale, int64_t n);
// sum_all's per-thread code run on the host, for each thread of the grid sum_all_cuda
// launches for n (float: four elements at a time where x is 16-byte aligned and n is
// beyond one block's share), so tests check it without a GPU: the threads' sums, in
// thread order.
template <typename T> std::vector<double> sum_all_thread_sums_cuda_on_host(const T* x, int64_t n);
template <typename T>
void sum_dim_cuda(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner);
template <typename T>
void abs_max_dim_cuda(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner);
template <typename T>
void broadcast_dim_cuda(const T* y, T* x, T scale, int64_t outer, int64_t dim, int64_t inner);
template <typename T> void add_bias_cuda(T* y, const T* b, int64_t outer, int64_t C, int64_t inner);
template <typename T>
void bias_grad_cuda(const T* gy, T* gb, int64_t outer, int64_t C, int64_t inner);

}  // namespace kernels
