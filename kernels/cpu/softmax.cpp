// CPU softmax, log_softmax and cross-entropy (kernels/softmax.h).
#include "kernels/softmax.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu/avx2.h"

namespace kernels {

#if defined(__AVX2__)
namespace {

// e^x for 8 floats with x <= 88 (here: max-subtracted inputs and log-probabilities, both
// <= 0): Cephes' expf (x = n ln2 + r with |r| <= ln2 / 2 in two steps, a degree-6
// polynomial, 2^n through the exponent bits), within 2 ulp of e^x. NaN stays NaN; below
// ln(FLT_MIN) = -87.34 the result is 0, which is less than FLT_MIN from e^x.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3365447505f);
  const __m256 xc = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));  // NaN, the second operand, passes
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// x[i .. i+8), the lanes at or past n as `fill`.
inline __m256 load8(const float* x, int64_t i, int64_t n, float fill) {
  if (n - i >= 8) return _mm256_loadu_ps(x + i);
  const __m256i m = first_lanes(n - i);
  return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(x + i, m), _mm256_castsi256_ps(m));
}
inline void store8(float* y, int64_t i, int64_t n, __m256 v) {
  if (n - i >= 8)
    _mm256_storeu_ps(y + i, v);
  else
    _mm256_maskstore_ps(y + i, first_lanes(n - i), v);
}
// acc += the 8 lanes of v, in double.
inline void add8(__m256d& lo, __m256d& hi, __m256 v) {
  lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}
inline double sum4(__m256d v) {
  alignas(32) double t[4];
  _mm256_store_pd(t, v);
  return (t[0] + t[1]) + (t[2] + t[3]);
}
// f(lanes as double) back to float, 8 at a time.
template <typename F> inline __m256 in_double(__m256 v, F&& f) {
  const __m256d lo = f(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), 0);
  const __m256d hi = f(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), 4);
  return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
}

// One contiguous float row of softmax_forward_cpu, 8 at a time: the same steps (the max,
// the sum of e^(x - max) in double, then the outputs in double), with exp8 for e^x.
void softmax_row_avx2(const float* x, float* y, int64_t n, bool log) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 8) mv = _mm256_max_ps(mv, load8(x, i, n, -INFINITY));  // a NaN x makes s NaN below
  alignas(32) float mt[8];
  _mm256_store_ps(mt, mv);
  const float m = std::max({mt[0], mt[1], mt[2], mt[3], mt[4], mt[5], mt[6], mt[7]});
  const __m256 mb = _mm256_set1_ps(m);
  __m256d slo = _mm256_setzero_pd(), shi = _mm256_setzero_pd();
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(load8(x, i, n, -INFINITY), mb));
    add8(slo, shi, e);
    if (!log) store8(y, i, n, e);  // divided by the sum below
  }
  const double s = sum4(_mm256_add_pd(slo, shi));
  if (log) {
    const __m256d lse = _mm256_set1_pd(std::log(s));
    for (int64_t i = 0; i < n; i += 8)
      store8(y, i, n, in_double(_mm256_sub_ps(load8(x, i, n, 0), mb), [&](__m256d d, int) { return _mm256_sub_pd(d, lse); }));
  } else {
    const __m256d sb = _mm256_set1_pd(s);
    for (int64_t i = 0; i < n; i += 8)
      store8(y, i, n, in_double(load8(y, i, n, 0), [&](__m256d e, int) { return _mm256_div_pd(e, sb); }));
  }
}

// One contiguous float row of log_softmax's backward: gx = gy - e^y * sum(gy).
void log_softmax_backward_row_avx2(const float* gy, const float* y, float* gx, int64_t n) {
  __m256d slo = _mm256_setzero_pd(), shi = _mm256_setzero_pd();
  for (int64_t i = 0; i < n; i += 8) add8(slo, shi, load8(gy, i, n, 0));
  const __m256d sb = _mm256_set1_pd(sum4(_mm256_add_pd(slo, shi)));
  for (int64_t i = 0; i < n; i += 8) {
    const __m256 g = load8(gy, i, n, 0);
    const __m256 e = exp8(load8(y, i, n, 0));
    const __m256d glo = _mm256_cvtps_pd(_mm256_castps256_ps128(g)), ghi = _mm256_cvtps_pd(_mm256_extractf128_ps(g, 1));
    store8(gx, i, n, in_double(e, [&](__m256d ed, int half) { return _mm256_fnmadd_pd(ed, sb, half == 0 ? glo : ghi); }));
  }
}

}  // namespace
#endif

template <typename T>
void softmax_forward_cpu(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log) {
  if (dim == 0) return;  // nothing to write; the max below would read past the end
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>)
    if (inner == 1) {
#pragma omp parallel for if (outer * dim > (1 << 15))
      for (int64_t o = 0; o < outer; ++o) softmax_row_avx2(x + o * dim, y + o * dim, dim, log);
      return;
    }
#endif
#pragma omp parallel for if (outer * dim * inner > (1 << 15))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const T* xr = x + o * dim * inner + i;
      T* yr = y + o * dim * inner + i;
      T m = xr[0];
      for (int64_t d = 1; d < dim; ++d) m = std::max(m, xr[d * inner]);
      double s = 0;
      for (int64_t d = 0; d < dim; ++d) s += std::exp(static_cast<double>(xr[d * inner] - m));
      if (log) {
        const double lse = std::log(s);
        for (int64_t d = 0; d < dim; ++d)
          yr[d * inner] = static_cast<T>(static_cast<double>(xr[d * inner] - m) - lse);
      } else {
        for (int64_t d = 0; d < dim; ++d)
          yr[d * inner] = static_cast<T>(std::exp(static_cast<double>(xr[d * inner] - m)) / s);
      }
    }
}

template <typename T>
void softmax_backward_cpu(const T* gy, const T* y, T* gx, int64_t outer, int64_t dim,
                          int64_t inner, bool log) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>)
    if (inner == 1 && log) {
#pragma omp parallel for if (outer * dim > (1 << 15))
      for (int64_t o = 0; o < outer; ++o) log_softmax_backward_row_avx2(gy + o * dim, y + o * dim, gx + o * dim, dim);
      return;
    }
#endif
#pragma omp parallel for if (outer * dim * inner > (1 << 15))
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t base = o * dim * inner + i;
      double s = 0;
      if (log) {
        for (int64_t d = 0; d < dim; ++d) s += gy[base + d * inner];
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t k = base + d * inner;
          gx[k] = static_cast<T>(gy[k] - std::exp(static_cast<double>(y[k])) * s);
        }
      } else {
        for (int64_t d = 0; d < dim; ++d) s += static_cast<double>(gy[base + d * inner]) * y[base + d * inner];
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t k = base + d * inner;
          gx[k] = static_cast<T>(y[k] * (gy[k] - s));
        }
      }
    }
}

template <typename T>
T cross_entropy_forward_cpu(const T* z, const int64_t* target, T* prob, int64_t N, int64_t K) {
  softmax_forward_cpu(z, prob, N, K, 1, /*log=*/false);
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* zr = z + n * K;
    const T m = *std::max_element(zr, zr + K);
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += std::exp(static_cast<double>(zr[k] - m));
    total += std::log(s) + static_cast<double>(m) - static_cast<double>(zr[target[n]]);
  }
  return static_cast<T>(total / static_cast<double>(N));
}

template <typename T>
void cross_entropy_backward_cpu(const T* prob, const int64_t* target, T g, T* gz, int64_t N,
                                int64_t K) {
  const T scale = g / static_cast<T>(N);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      gz[n * K + k] = scale * (prob[n * K + k] - (k == target[n] ? T(1) : T(0)));
}

#define INSTANTIATE(T)                                                                         \
  template void softmax_forward_cpu<T>(const T*, T*, int64_t, int64_t, int64_t, bool);         \
  template void softmax_backward_cpu<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool); \
  template T cross_entropy_forward_cpu<T>(const T*, const int64_t*, T*, int64_t, int64_t);     \
  template void cross_entropy_backward_cpu<T>(const T*, const int64_t*, T, T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
