// Shared by both backends: the host/device qualifier, the per-element math that the
// CPU loops and the CUDA kernels both call, and the counter-based random numbers
// (Philox4x32-10) that make CPU and CUDA draw the same values for the same seed.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ENGINE_HD __host__ __device__ __forceinline__
#else
#define ENGINE_HD inline
#endif

namespace kernels {

// ---- per-element math ------------------------------------------------------------

template <typename T> ENGINE_HD T relu_fwd(T x) { return x > T(0) ? x : T(0); }
// Gradient of relu, written in terms of the output: y > 0 exactly where x > 0.
template <typename T> ENGINE_HD T relu_bwd(T gy, T y) { return y > T(0) ? gy : T(0); }

// Guided backpropagation's ReLU rule (Springenberg et al.): pass a gradient only where
// both the forward input and the gradient itself are positive.
template <typename T> ENGINE_HD T guided_relu_bwd(T gy, T y) { return (y > T(0) && gy > T(0)) ? gy : T(0); }

// ---- Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3") --

struct Philox4 { uint32_t v[4]; };

ENGINE_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Four 32-bit random words for (seed, counter). Pure function: any element of a
// stream can be computed independently, on any device.
ENGINE_HD Philox4 philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(0xD2511F53u, c0, &hi0);
    const uint32_t lo1 = mulhilo32(0xCD9E8D57u, c2, &hi1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  Philox4 r;
  r.v[0] = c0; r.v[1] = c1; r.v[2] = c2; r.v[3] = c3;
  return r;
}

// Uniform in [0, 1) from Philox words: 24 bits of one word for float, 53 bits of two
// for double.
ENGINE_HD float uniform_from_word(uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }
ENGINE_HD double uniform_from_words(uint32_t a, uint32_t b) {
  const uint64_t bits = (static_cast<uint64_t>(a) << 21) ^ (b >> 11);
  return static_cast<double>(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// The uniform of one counter (its first words): one draw a counter, as the uniform fill
// and the data augmentation use them.
template <typename T> ENGINE_HD T philox_uniform(uint64_t seed, uint64_t counter);
template <> ENGINE_HD float philox_uniform<float>(uint64_t seed, uint64_t counter) {
  return uniform_from_word(philox4x32_10(seed, counter).v[0]);
}
template <> ENGINE_HD double philox_uniform<double>(uint64_t seed, uint64_t counter) {
  const Philox4 r = philox4x32_10(seed, counter);
  return uniform_from_words(r.v[0], r.v[1]);
}

// ---- inverted dropout --------------------------------------------------------------
// A kept element's multiplier is 1 / (1 - p) (0 for p = 1, when nothing is kept), a
// dropped one's 0. The draws use every word of a Philox block: the elements go in groups
// of dropout_group<T>() (4 for float, a word each; 2 for double, two words each), and
// group g of a call whose first counter is `offset` is counter offset + g. Element i
// is kept where its uniform is at least p: word i % 4 of counter offset + i / 4 (float),
// words 2 (i % 2) and 2 (i % 2) + 1 of counter offset + i / 2 (double). A call over n
// elements uses dropout_counters<T>(n) = ceil(n / group) counters.
template <typename T> ENGINE_HD constexpr int dropout_group() { return sizeof(T) == sizeof(float) ? 4 : 2; }
template <typename T> ENGINE_HD uint64_t dropout_counters(int64_t n) {
  return static_cast<uint64_t>((n + dropout_group<T>() - 1) / dropout_group<T>());
}
template <typename T> ENGINE_HD T dropout_scale(T p) { return p < T(1) ? T(1) / (T(1) - p) : T(0); }

// The multipliers of one group's elements, from its counter.
ENGINE_HD void dropout_keep_group(float p, float scale, uint64_t seed, uint64_t counter, float keep[4]) {
  const Philox4 r = philox4x32_10(seed, counter);
  for (int k = 0; k < 4; ++k) keep[k] = uniform_from_word(r.v[k]) >= p ? scale : 0.0f;
}
ENGINE_HD void dropout_keep_group(double p, double scale, uint64_t seed, uint64_t counter, double keep[2]) {
  const Philox4 r = philox4x32_10(seed, counter);
  keep[0] = uniform_from_words(r.v[0], r.v[1]) >= p ? scale : 0.0;
  keep[1] = uniform_from_words(r.v[2], r.v[3]) >= p ? scale : 0.0;
}

// Group g of a dropout call over n elements: its mask and output elements (those below n).
template <typename T>
ENGINE_HD void dropout_apply_group(const T* x, T* mask, T* y, T p, T scale, uint64_t seed, uint64_t offset, int64_t n,
                                   int64_t g) {
  constexpr int kGroup = dropout_group<T>();
  T keep[kGroup];
  dropout_keep_group(p, scale, seed, offset + static_cast<uint64_t>(g), keep);
  for (int k = 0; k < kGroup; ++k) {
    const int64_t i = g * kGroup + k;
    if (i < n) {
      mask[i] = keep[k];
      y[i] = x[i] * keep[k];
    }
  }
}

// Standard normal by Box-Muller on two independent uniforms of the same counter.
template <typename T> ENGINE_HD T philox_normal(uint64_t seed, uint64_t counter) {
  const Philox4 r = philox4x32_10(seed, counter);
  const double u1 = (static_cast<double>(r.v[0]) + 1.0) * (1.0 / 4294967297.0);  // (0, 1)
  const double u2 = static_cast<double>(r.v[1]) * (1.0 / 4294967296.0);          // [0, 1)
  const double kTwoPi = 6.283185307179586476925286766559;
  return static_cast<T>(std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2));
}

// Output size of a pooling or convolution window along one axis, PyTorch's rule:
// with ceil_mode the last window may hang over the edge, but must start inside the
// input or its left padding.
ENGINE_HD int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t dilation,
                              bool ceil_mode) {
  const int64_t span = in + 2 * p - dilation * (k - 1) - 1;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

// Adaptive pooling window [start, end) for output index i of n over an input of size in.
ENGINE_HD int64_t adaptive_start(int64_t i, int64_t n, int64_t in) { return (i * in) / n; }
ENGINE_HD int64_t adaptive_end(int64_t i, int64_t n, int64_t in) {
  return ((i + 1) * in + n - 1) / n;
}

}  // namespace kernels
