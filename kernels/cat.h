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

// CUDA (kernels/cuda/cat.cu): device pointers in host vectors; a strided 2-D copy per
// input on the engine's stream (one kernel launch for up to 16 inputs whose rows are at
// least 512 bytes wide, 16 bytes at a time where every address and width allows).
template <typename T>
void cat_cuda(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y,
              int64_t outer, int64_t inner);
template <typename T>
void split_cuda(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes,
                int64_t outer, int64_t inner);

// The copy kernel's per-thread code run on the host (host pointers), thread by thread over
// the blocks of each launch that cat_cuda / split_cuda would make, every input through the
// kernel whatever its width, so tests check it without a GPU. grid_x, when non-zero,
// replaces a launch's blocks along a row, and grid_y its blocks across rows (fewer than
// the launch's, so that threads take several strides or rows).
template <typename T>
void cat_cuda_on_host(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y,
                      int64_t outer, int64_t inner, unsigned grid_x = 0, unsigned grid_y = 0);
template <typename T>
void split_cuda_on_host(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes,
                        int64_t outer, int64_t inner, unsigned grid_x = 0, unsigned grid_y = 0);

}  // namespace kernels
