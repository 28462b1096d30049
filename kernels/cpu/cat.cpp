// CPU concatenation and its adjoint (kernels/cat.h).
#include "kernels/cat.h"

#include <cstring>

namespace kernels {

template <typename T>
void cat_cpu(const std::vector<const T*>& xs, const std::vector<int64_t>& sizes, T* y,
             int64_t outer, int64_t inner) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
#pragma omp parallel for if (outer * total * inner > (1 << 16))
  for (int64_t o = 0; o < outer; ++o) {
    T* dst = y + o * total * inner;
    for (size_t k = 0; k < xs.size(); ++k) {
      const int64_t block = sizes[k] * inner;
      std::memcpy(dst, xs[k] + o * block, static_cast<size_t>(block) * sizeof(T));
      dst += block;
    }
  }
}

template <typename T>
void split_cpu(const T* y, const std::vector<T*>& xs, const std::vector<int64_t>& sizes,
               int64_t outer, int64_t inner) {
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
#pragma omp parallel for if (outer * total * inner > (1 << 16))
  for (int64_t o = 0; o < outer; ++o) {
    const T* src = y + o * total * inner;
    for (size_t k = 0; k < xs.size(); ++k) {
      const int64_t block = sizes[k] * inner;
      if (xs[k] != nullptr)
        std::memcpy(xs[k] + o * block, src, static_cast<size_t>(block) * sizeof(T));
      src += block;
    }
  }
}

#define INSTANTIATE(T)                                                                         \
  template void cat_cpu<T>(const std::vector<const T*>&, const std::vector<int64_t>&, T*,      \
                           int64_t, int64_t);                                                  \
  template void split_cpu<T>(const T*, const std::vector<T*>&, const std::vector<int64_t>&,    \
                             int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
