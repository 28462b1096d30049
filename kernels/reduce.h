// Reductions and their adjoints over a tensor viewed as [outer, dim, inner].
// sum_dim: y[o, i] = sum_d x[o, d, i].  broadcast_dim: x[o, d, i] = y[o, i] (its adjoint).
// Totals accumulate in double for float inputs. Memory-bound.
#pragma once

#include <cstdint>

namespace kernels {

template <typename T> T sum_all_cpu(const T* x, int64_t n);
template <typename T>
void sum_dim_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner);
// y[o, i] = max_d |x[o, d, i]| (saliency's channel-wise maximum of |gradient|).
template <typename T>
void abs_max_dim_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner);
template <typename T>
void broadcast_dim_cpu(const T* y, T* x, T scale, int64_t outer, int64_t dim, int64_t inner);

}  // namespace kernels
