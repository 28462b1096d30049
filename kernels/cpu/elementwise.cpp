// CPU elementwise kernels; the per-element math is shared with CUDA (kernels/common.h).
#include "kernels/elementwise.h"

#include <cmath>
#include <type_traits>

#include "kernels/common.h"
#include "kernels/cpu/avx2.h"

namespace kernels {
namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threads cost more than they save

#if defined(__AVX2__)
// Philox4x32-10's four words for the 8 counters base, base + 1, ..., base + 7 (lane i:
// counter base + i), the same integer operations as philox4x32_10 in kernels/common.h,
// lane by lane. The 32x32 -> 64-bit products come from two _mm256_mul_epu32, one on the
// even lanes and one on the odd. The caller keeps the low words from wrapping within
// the 8 (their high word is then the same for all lanes).
struct PhiloxKeys8 {
  __m256i k0[10], k1[10];
  explicit PhiloxKeys8(uint64_t seed) {
    uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
      k0[r] = _mm256_set1_epi32(static_cast<int32_t>(a));
      k1[r] = _mm256_set1_epi32(static_cast<int32_t>(b));
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
  }
};

inline void mulhilo32x8(__m256i a, __m256i m, __m256i* lo, __m256i* hi) {
  const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

inline void philox_x8(const PhiloxKeys8& keys, uint64_t base, __m256i words[4]) {
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(base))),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i c1 = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(base >> 32)));
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  const __m256i m0 = _mm256_set1_epi32(static_cast<int32_t>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int32_t>(0xCD9E8D57u));
  for (int r = 0; r < 10; ++r) {
    __m256i lo0, hi0, lo1, hi1;
    mulhilo32x8(c0, m0, &lo0, &hi0);
    mulhilo32x8(c2, m1, &lo1, &hi1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), keys.k0[r]);
    c1 = lo1;
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), keys.k1[r]);
    c3 = lo0;
  }
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}

inline __m256i philox_word0_x8(const PhiloxKeys8& keys, uint64_t base) {
  __m256i words[4];
  philox_x8(keys, base, words);
  return words[0];
}

// uniform_from_word (kernels/common.h) lane by lane: (w >> 8) * 2^-24, exact in float.
inline __m256 uniform_from_word_x8(__m256i w) {
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(w, 8)), _mm256_set1_ps(1.0f / 16777216.0f));
}

// The four words of 8 counters in counter order: out[j] holds counters 2j and 2j + 1,
// words 0-3 of each (a 4 x 8 transpose of philox_x8's word vectors).
inline void philox_x8_counter_major(const __m256i w[4], __m256i out[4]) {
  const __m256i t0 = _mm256_unpacklo_epi32(w[0], w[1]), t1 = _mm256_unpackhi_epi32(w[0], w[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(w[2], w[3]), t3 = _mm256_unpackhi_epi32(w[2], w[3]);
  // u0: counters 0 | 4, u1: 1 | 5, u2: 2 | 6, u3: 3 | 7 (a 128-bit half each).
  const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
  const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
  out[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
  out[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
  out[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
  out[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
}

// Float uniforms in [0, 1), 8 counters at a time: lane i of u is (word0 >> 8) * 2^-24 for
// counter offset + i0 + i, exactly what philox_uniform<float> computes. Calls
// vec(i0, u) for each group of 8 elements and one(i, u_i) for the rest, and for any
// group whose counters' low word would wrap within it (done one by one instead).
template <typename Vec, typename One>
void for_float_uniforms(uint64_t seed, uint64_t offset, int64_t n, Vec&& vec, One&& one) {
  const PhiloxKeys8 keys(seed);
  const int64_t groups = n / 8;
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t i0 = g * 8;
    const uint64_t base = offset + static_cast<uint64_t>(i0);
    if (static_cast<uint32_t>(base) > 0xFFFFFFFFu - 7u) {
      for (int64_t i = i0; i < i0 + 8; ++i) one(i, philox_uniform<float>(seed, offset + static_cast<uint64_t>(i)));
      continue;
    }
    vec(i0, uniform_from_word_x8(philox_word0_x8(keys, base)));
  }
  for (int64_t i = groups * 8; i < n; ++i) one(i, philox_uniform<float>(seed, offset + static_cast<uint64_t>(i)));
}
#endif
}  // namespace

template <typename T> void relu_forward_cpu(const T* x, T* y, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = relu_fwd(x[i]);
}

template <typename T> void relu_backward_cpu(const T* gy, const T* y, T* gx, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) gx[i] = relu_bwd(gy[i], y[i]);
}

template <typename T> void guided_relu_backward_cpu(const T* gy, const T* y, T* gx, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) gx[i] = guided_relu_bwd(gy[i], y[i]);
}

template <typename T> void axpby_cpu(T a, const T* x, T b, const T* z, T* y, int64_t n) {
  if (b == T(0) || z == nullptr) {
#pragma omp parallel for simd if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) y[i] = a * x[i];
  } else {
#pragma omp parallel for simd if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) y[i] = a * x[i] + b * z[i];
  }
}

template <typename T> void mul_cpu(const T* a, const T* b, T* y, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = a[i] * b[i];
}

template <typename T> void fill_cpu(T* y, T value, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = value;
}

template <typename From, typename To> void convert_cpu(const From* x, To* y, int64_t n) {
#pragma omp parallel for simd if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<To>(x[i]);
}

template <typename T>
void uniform_cpu(T* y, T lo, T hi, uint64_t seed, uint64_t offset, int64_t n) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 lov = _mm256_set1_ps(lo), span = _mm256_set1_ps(hi - lo);
    for_float_uniforms(
        seed, offset, n, [&](int64_t i, __m256 u) { _mm256_storeu_ps(y + i, _mm256_fmadd_ps(span, u, lov)); },
        [&](int64_t i, float u) { y[i] = std::fma(hi - lo, u, lo); });
    return;
  }
#endif
  // One rounding, written out (a compiler may or may not contract lo + (hi - lo) * u),
  // so that the vector path above and every build give the same bits.
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i)
    y[i] = std::fma(hi - lo, philox_uniform<T>(seed, offset + static_cast<uint64_t>(i)), lo);
}

template <typename T>
void normal_cpu(T* y, T mean, T std, uint64_t seed, uint64_t offset, int64_t n) {
#pragma omp parallel for if (n > kParallelMin)
  for (int64_t i = 0; i < n; ++i)
    y[i] = mean + std * philox_normal<T>(seed, offset + static_cast<uint64_t>(i));
}

template <typename T>
void dropout_forward_cpu(const T* x, T* mask, T* y, T p, uint64_t seed, uint64_t offset,
                         int64_t n) {
  const T scale = dropout_scale(p);
  const int64_t groups = static_cast<int64_t>(dropout_counters<T>(n));
  int64_t first_group = 0;  // the groups before it are done by the vector path
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    // 8 counters, 32 elements at a time; the last n % 32 (and any 8 whose counters' low
    // word would wrap) group by group below.
    const __m256 pv = _mm256_set1_ps(p), sv = _mm256_set1_ps(scale);
    const PhiloxKeys8 keys(seed);
    const int64_t blocks = n / 32;
#pragma omp parallel for if (n > kParallelMin)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint64_t base = offset + static_cast<uint64_t>(8 * b);
      if (static_cast<uint32_t>(base) > 0xFFFFFFFFu - 7u) {
        for (int64_t g = 8 * b; g < 8 * b + 8; ++g) dropout_apply_group(x, mask, y, p, scale, seed, offset, n, g);
        continue;
      }
      __m256i words[4], ordered[4];
      philox_x8(keys, base, words);
      philox_x8_counter_major(words, ordered);
      for (int j = 0; j < 4; ++j) {
        const int64_t i = 32 * b + 8 * j;
        const __m256 u = uniform_from_word_x8(ordered[j]);
        const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(u, pv, _CMP_GE_OQ), sv);
        _mm256_storeu_ps(mask + i, keep);
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), keep));
      }
    }
    first_group = 8 * blocks;
  }
#endif
#pragma omp parallel for if ((groups - first_group) * dropout_group<T>() > kParallelMin)
  for (int64_t g = first_group; g < groups; ++g) dropout_apply_group(x, mask, y, p, scale, seed, offset, n, g);
}

#define INSTANTIATE(T)                                                                  \
  template void relu_forward_cpu<T>(const T*, T*, int64_t);                             \
  template void relu_backward_cpu<T>(const T*, const T*, T*, int64_t);                  \
  template void guided_relu_backward_cpu<T>(const T*, const T*, T*, int64_t);           \
  template void axpby_cpu<T>(T, const T*, T, const T*, T*, int64_t);                    \
  template void mul_cpu<T>(const T*, const T*, T*, int64_t);                            \
  template void fill_cpu<T>(T*, T, int64_t);                                            \
  template void uniform_cpu<T>(T*, T, T, uint64_t, uint64_t, int64_t);                  \
  template void normal_cpu<T>(T*, T, T, uint64_t, uint64_t, int64_t);                   \
  template void dropout_forward_cpu<T>(const T*, T*, T*, T, uint64_t, uint64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE
template void convert_cpu<float, double>(const float*, double*, int64_t);
template void convert_cpu<double, float>(const double*, float*, int64_t);
template void convert_cpu<float, float>(const float*, float*, int64_t);
template void convert_cpu<double, double>(const double*, double*, int64_t);

}  // namespace kernels
