// Small AVX2 helpers shared by the CPU kernels (compiled only where __AVX2__ is defined).
#pragma once

#if defined(__AVX2__)
#include <immintrin.h>

#include <cstdint>

namespace kernels {

// The lanes below n (of 8), as a mask of 32-bit lanes: for masked loads and stores of a
// row's last group.
inline __m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

}  // namespace kernels
#endif
