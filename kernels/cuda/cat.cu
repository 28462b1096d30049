// CUDA concatenation and its adjoint (kernels/cat.h). With the tensors viewed as
// [outer, size_k * inner], input k fills columns [offset_k, offset_k + size_k) * inner of
// every row of y = [outer, total * inner]; split copies them back out. Memory-bound: one
// strided 2-D copy per input (cudaMemcpy2DAsync: `outer` rows of size_k * inner elements,
// pitches size_k * inner and total * inner), all on the engine's stream.
#include <climits>

#include "kernels/cat.h"
#include "kernels/cuda/check.cuh"

namespace kernels {
namespace {

// dst[r * dpitch, + width) = src[r * spitch, + width) for r < rows (bytes), device to
// device on the engine's stream. One row, or pitches past what the 2-D copy accepts,
// go as plain copies.
void copy_rows(void* dst, std::size_t dpitch, const void* src, std::size_t spitch,
               std::size_t width, int64_t rows) {
  if (width == 0 || rows <= 0) return;
  if (rows == 1 || (dpitch == width && spitch == width)) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, width * static_cast<std::size_t>(rows),
                               cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
  if (dpitch <= static_cast<std::size_t>(INT_MAX) && spitch <= static_cast<std::size_t>(INT_MAX)) {
    CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, static_cast<std::size_t>(rows),
                                 cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
  for (int64_t r = 0; r < rows; ++r)
    CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + static_cast<std::size_t>(r) * dpitch,
                               static_cast<const char*>(src) + static_cast<std::size_t>(r) * spitch,
                               width, cudaMemcpyDeviceToDevice, cuda::stream()));
}

}  // namespace

template <typename T>
void cat_cuda(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y,
              int64_t outer, int64_t inner) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  const std::size_t row = static_cast<std::size_t>(total * inner) * sizeof(T);
  int64_t offset = 0;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const std::size_t block = static_cast<std::size_t>(sizes[k] * inner) * sizeof(T);
    copy_rows(y + offset * inner, row, xs[k], block, block, outer);
    offset += sizes[k];
  }
}

template <typename T>
void split_cuda(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes,
                int64_t outer, int64_t inner) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  const std::size_t row = static_cast<std::size_t>(total * inner) * sizeof(T);
  int64_t offset = 0;
  for (std::size_t k = 0; k < xs.size(); ++k) {
    const std::size_t block = static_cast<std::size_t>(sizes[k] * inner) * sizeof(T);
    if (xs[k] != nullptr) copy_rows(xs[k], block, y + offset * inner, row, block, outer);
    offset += sizes[k];
  }
}

#define INSTANTIATE(T)                                                                         \
  template void cat_cuda<T>(const std::vector<const T*>&, const std::vector<int64_t>&, T*,     \
                            int64_t, int64_t);                                                 \
  template void split_cuda<T>(const T*, const std::vector<T*>&, const std::vector<int64_t>&,   \
                              int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
