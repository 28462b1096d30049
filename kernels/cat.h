// Concatenation along an axis of contiguous tensors viewed as [outer, size_i * inner]:
// each input contributes a block of size_i * inner per outer row. Its adjoint (split)
// copies the blocks back out. Memory-bound.
#pragma once

#include <cstdint>
#include <vector>

namespace kernels {

template <typename T>
void cat_cpu(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y,
             int64_t outer, int64_t inner);
template <typename T>
void split_cpu(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes,
               int64_t outer, int64_t inner);

// CUDA (kernels/cuda/cat.cu): device pointers in host vectors; one strided 2-D copy per
// input on the engine's stream.
template <typename T>
void cat_cuda(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y,
              int64_t outer, int64_t inner);
template <typename T>
void split_cuda(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes,
                int64_t outer, int64_t inner);

}  // namespace kernels
