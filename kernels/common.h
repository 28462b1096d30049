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

// Uniform in [0, 1): 24 random bits for float, 53 for double.
template <typename T> ENGINE_HD T philox_uniform(uint64_t seed, uint64_t counter);
template <> ENGINE_HD float philox_uniform<float>(uint64_t seed, uint64_t counter) {
  return static_cast<float>(philox4x32_10(seed, counter).v[0] >> 8) * (1.0f / 16777216.0f);
}
template <> ENGINE_HD double philox_uniform<double>(uint64_t seed, uint64_t counter) {
  const Philox4 r = philox4x32_10(seed, counter);
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 21) ^ (r.v[1] >> 11);
  return static_cast<double>(bits & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

// Inverted dropout: a kept element's multiplier, 1 / (1 - p) (0 for p = 1, when nothing
// is kept), and element `counter` of the mask: that multiplier where the element's
// uniform draw is at least p, else 0.
template <typename T> ENGINE_HD T dropout_scale(T p) { return p < T(1) ? T(1) / (T(1) - p) : T(0); }
template <typename T> ENGINE_HD T dropout_keep(T p, T scale, uint64_t seed, uint64_t counter) {
  return philox_uniform<T>(seed, counter) >= p ? scale : T(0);
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
