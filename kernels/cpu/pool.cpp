// CPU pooling kernels (math in kernels/pool.h), parallel over (n, c) planes.
#include "kernels/pool.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/common.h"
#include "kernels/cpu/avx2.h"

namespace kernels {

namespace {

// max(a, b) where a NaN in b wins (and one in a stays): PyTorch's rule, branch-free.
template <typename T> inline T nan_max(T a, T b) { return ((b > a) | (b != b)) ? b : a; }

// y[ow] for the windows [ow*sw - pw, + kw) that lie inside the row, ow in [first, last).
// KW and SW fixed at compile time (0: taken from s) let the compiler vectorise over ow.
template <typename T, int KW, int SW>
void max_row_inner(const T* colmax, T* yrow, int64_t first, int64_t last, const Pool2dShape& s) {
  const int64_t kw = KW > 0 ? KW : s.kw, sw = SW > 0 ? SW : s.sw;
  for (int64_t ow = first; ow < last; ++ow) {
    const T* c = colmax + ow * sw - s.pw;
    T best = c[0];
    for (int64_t j = 1; j < kw; ++j) best = nan_max(best, c[j]);
    yrow[ow] = best;
  }
}

// The same with the argmax: the flat index (row * W + column) of the window's maximum,
// ties to the smaller row, then the smaller column (colarg holds each column's row).
// Branch-free, so that it vectorises too.
template <typename T, int KW, int SW>
void max_row_inner_arg(const T* colmax, const int32_t* colarg, T* yrow, int64_t* arow, int64_t first, int64_t last,
                       const Pool2dShape& s) {
  const int64_t kw = KW > 0 ? KW : s.kw, sw = SW > 0 ? SW : s.sw;
  for (int64_t ow = first; ow < last; ++ow) {
    const int64_t w0 = ow * sw - s.pw;
    T best = colmax[w0];
    int32_t br = colarg[w0], bw = static_cast<int32_t>(w0);
    for (int64_t j = 1; j < kw; ++j) {
      const T c = colmax[w0 + j];
      const int32_t r = colarg[w0 + j];
      const bool take = (c > best) | (c != c) | ((c == best) & (r < br));
      best = take ? c : best;
      br = take ? r : br;
      bw = take ? static_cast<int32_t>(w0 + j) : bw;
    }
    yrow[ow] = best;
    arow[ow] = static_cast<int64_t>(br) * s.W + bw;
  }
}

#if defined(__AVX2__)
// float, windows 3 wide with stride 2, 8 outputs at a time (AVX2): lanes i = 0..7 of the
// windows' three columns c[2i], c[2i+1], c[2i+2], for windows starting at c. Reads c[0]
// to c[17]: the row buffers have spare entries past W. Bit for bit what the loops above
// give: the same comparisons in the same order.
inline __m256 even_lanes(__m256 lo, __m256 hi) {
  const __m256 e = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));  // lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline __m256 odd_lanes(__m256 lo, __m256 hi) {
  const __m256 o = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), _MM_SHUFFLE(3, 1, 2, 0)));
}
inline void window_columns(const float* c, __m256& c0, __m256& c1, __m256& c2) {
  const __m256 lo = _mm256_loadu_ps(c), hi = _mm256_loadu_ps(c + 8);
  c0 = even_lanes(lo, hi);
  c1 = odd_lanes(lo, hi);
  c2 = even_lanes(_mm256_loadu_ps(c + 2), _mm256_loadu_ps(c + 10));
}
// nan_max, 8 lanes.
inline __m256 nan_max8(__m256 a, __m256 b) {
  const __m256 take = _mm256_or_ps(_mm256_cmp_ps(b, a, _CMP_GT_OQ), _mm256_cmp_ps(b, b, _CMP_UNORD_Q));
  return _mm256_blendv_ps(a, b, take);
}
// Outputs [first, last) of max_row_inner<float, 3, 2>; the last group of fewer than 8 is
// stored through a mask (its other lanes read spare entries and are dropped).
inline void max_row_3x2_avx2(const float* colmax, float* yrow, int64_t first, int64_t last, const Pool2dShape& s) {
  for (int64_t ow = first; ow < last; ow += 8) {
    __m256 c0, c1, c2;
    window_columns(colmax + 2 * ow - s.pw, c0, c1, c2);
    const __m256 y = nan_max8(nan_max8(c0, c1), c2);
    if (last - ow >= 8)
      _mm256_storeu_ps(yrow + ow, y);
    else
      _mm256_maskstore_ps(yrow + ow, first_lanes(last - ow), y);
  }
}
// The same for max_row_inner_arg<float, 3, 2> (needs H * W < 2^31: int32 indices).
inline void max_row_3x2_arg_avx2(const float* colmax, const int32_t* colarg, float* yrow, int64_t* arow,
                                 int64_t first, int64_t last, const Pool2dShape& s) {
  const __m256i lanes2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), width = _mm256_set1_epi32(static_cast<int32_t>(s.W));
  for (int64_t ow = first; ow < last; ow += 8) {
    const int64_t w0 = 2 * ow - s.pw;
    __m256 c[3], r[3];
    window_columns(colmax + w0, c[0], c[1], c[2]);
    window_columns(reinterpret_cast<const float*>(colarg + w0), r[0], r[1], r[2]);  // int32 bits, moved only
    const __m256i col0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(w0)), lanes2);
    __m256 best = c[0], br = r[0], bw = _mm256_castsi256_ps(col0);
    for (int j = 1; j < 3; ++j) {
      const __m256 row_less = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_castps_si256(br), _mm256_castps_si256(r[j])));
      const __m256 take = _mm256_or_ps(
          _mm256_or_ps(_mm256_cmp_ps(c[j], best, _CMP_GT_OQ), _mm256_cmp_ps(c[j], c[j], _CMP_UNORD_Q)),
          _mm256_and_ps(_mm256_cmp_ps(c[j], best, _CMP_EQ_OQ), row_less));
      best = _mm256_blendv_ps(best, c[j], take);
      br = _mm256_blendv_ps(br, r[j], take);
      bw = _mm256_blendv_ps(bw, _mm256_castsi256_ps(_mm256_add_epi32(col0, _mm256_set1_epi32(j))), take);
    }
    const __m256i flat = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_castps_si256(br), width), _mm256_castps_si256(bw));
    const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(flat));
    const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(flat, 1));
    auto* a = reinterpret_cast<long long*>(arow + ow);
    if (last - ow >= 8) {
      _mm256_storeu_ps(yrow + ow, best);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + 4), hi);
    } else {
      const __m256i m = first_lanes(last - ow);
      _mm256_maskstore_ps(yrow + ow, m, best);
      _mm256_maskstore_epi64(a, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(m)), lo);
      _mm256_maskstore_epi64(a + 4, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1)), hi);
    }
  }
}

// The vertical pass over a window of three rows in one sweep, 8 columns at a time (the
// last group through masked loads; the row buffers' spare entries take the full-width
// stores): colmax[iw] = nan_max(nan_max(r0, r1), r2) and, with WithArg, colarg[iw] the
// row that gave it. The same comparisons in the same order as the loops in max_pool_row.
template <bool WithArg>
inline void vertical_3_avx2(const float* r0, int64_t W, int32_t row0, float* colmax, int32_t* colarg) {
  const float* r1 = r0 + W;
  const float* r2 = r1 + W;
  const __m256 a0 = _mm256_castsi256_ps(_mm256_set1_epi32(row0));
  const __m256 a1 = _mm256_castsi256_ps(_mm256_set1_epi32(row0 + 1));
  const __m256 a2 = _mm256_castsi256_ps(_mm256_set1_epi32(row0 + 2));
  for (int64_t i = 0; i < W; i += 8) {
    __m256 x0, x1, x2;
    if (W - i >= 8) {
      x0 = _mm256_loadu_ps(r0 + i), x1 = _mm256_loadu_ps(r1 + i), x2 = _mm256_loadu_ps(r2 + i);
    } else {
      const __m256i m = first_lanes(W - i);
      x0 = _mm256_maskload_ps(r0 + i, m), x1 = _mm256_maskload_ps(r1 + i, m), x2 = _mm256_maskload_ps(r2 + i, m);
    }
    const __m256 t1 = _mm256_or_ps(_mm256_cmp_ps(x1, x0, _CMP_GT_OQ), _mm256_cmp_ps(x1, x1, _CMP_UNORD_Q));
    const __m256 m1 = _mm256_blendv_ps(x0, x1, t1);
    const __m256 t2 = _mm256_or_ps(_mm256_cmp_ps(x2, m1, _CMP_GT_OQ), _mm256_cmp_ps(x2, x2, _CMP_UNORD_Q));
    _mm256_storeu_ps(colmax + i, _mm256_blendv_ps(m1, x2, t2));
    if constexpr (WithArg)
      _mm256_storeu_ps(reinterpret_cast<float*>(colarg + i), _mm256_blendv_ps(_mm256_blendv_ps(a0, a1, t1), a2, t2));
  }
}
#endif

// Spare entries past W in the row buffers: the AVX2 loops read up to 17 entries from the
// start of a group's first window, which lies at most at W - 3, and the vertical pass
// writes up to 7 past W.
constexpr int64_t kRowSpare = 16;

// One output row of one plane, in two passes over the window's input rows:
//   vertical:   colmax[iw] = max over the window's rows of x[ih, iw], and the first row
//               holding it (contiguous: vectorises);
//   horizontal: y[ow] = max over the window's columns of colmax, strided by sw.
// Ties go to the first element in row-major order, as the one-pass scan gives: the
// smallest row, then the smallest column. NaN propagates, as in PyTorch.
template <typename T>
void max_pool_row(const T* xp, T* yrow, int64_t* arow, int64_t oh, const Pool2dShape& s, T* colmax,
                  int32_t* colarg) {
  const int64_t h0 = oh * s.sh - s.ph;
  const int64_t hs = h0 < 0 ? 0 : h0, he = h0 + s.kh < s.H ? h0 + s.kh : s.H;
  const T* top = xp + hs * s.W;
  bool vertical_done = false;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>)
    if (he - hs == 3) {
      if (arow != nullptr)
        vertical_3_avx2<true>(top, s.W, static_cast<int32_t>(hs), colmax, colarg);
      else
        vertical_3_avx2<false>(top, s.W, static_cast<int32_t>(hs), colmax, colarg);
      vertical_done = true;
    }
#endif
  if (!vertical_done) {
    for (int64_t iw = 0; iw < s.W; ++iw) colmax[iw] = top[iw];
    if (arow != nullptr)
      for (int64_t iw = 0; iw < s.W; ++iw) colarg[iw] = static_cast<int32_t>(hs);
    for (int64_t ih = hs + 1; ih < he; ++ih) {
      const T* r = xp + ih * s.W;
      if (arow != nullptr) {
        const int32_t row = static_cast<int32_t>(ih);
        for (int64_t iw = 0; iw < s.W; ++iw) {
          const bool take = (r[iw] > colmax[iw]) | (r[iw] != r[iw]);
          colmax[iw] = take ? r[iw] : colmax[iw];
          colarg[iw] = take ? row : colarg[iw];
        }
      } else {
        for (int64_t iw = 0; iw < s.W; ++iw) {
          const bool take = (r[iw] > colmax[iw]) | (r[iw] != r[iw]);
          colmax[iw] = take ? r[iw] : colmax[iw];
        }
      }
    }
  }
  // The windows that lie inside the row (all of them, without padding) in a branch-free
  // loop that vectorises, with the window fixed at 3 wide and stride 2 (every max-pool of
  // AlexNet and SqueezeNet); the edges in the general loops below.
  const int64_t first = (s.pw + s.sw - 1) / s.sw;  // first ow whose window starts at >= 0
  int64_t last = s.W - s.kw + s.pw >= 0 ? (s.W - s.kw + s.pw) / s.sw + 1 : 0;  // windows ending <= W
  last = std::max(first, std::min(last, s.Wo));
  [[maybe_unused]] const bool avx2 = std::is_same_v<T, float> && s.kw == 3 && s.sw == 2;
  if (arow == nullptr) {
    int64_t done = first;
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>)
      if (avx2) {
        max_row_3x2_avx2(colmax, yrow, first, last, s);
        done = last;
      }
#endif
    if (s.kw == 3 && s.sw == 2)
      max_row_inner<T, 3, 2>(colmax, yrow, done, last, s);
    else
      max_row_inner<T, 0, 0>(colmax, yrow, done, last, s);
    for (int64_t ow = 0; ow < s.Wo; ++ow) {
      if (ow == first) ow = last;
      if (ow >= s.Wo) break;
      const int64_t w0 = ow * s.sw - s.pw;
      const int64_t ws = w0 < 0 ? 0 : w0, we = w0 + s.kw < s.W ? w0 + s.kw : s.W;
      T best = colmax[ws];
      for (int64_t iw = ws + 1; iw < we; ++iw) best = nan_max(best, colmax[iw]);
      yrow[ow] = best;
    }
    return;
  }
  int64_t done = first;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>)
    if (avx2 && s.H * s.W < (int64_t{1} << 31)) {
      max_row_3x2_arg_avx2(colmax, colarg, yrow, arow, first, last, s);
      done = last;
    }
#endif
  if (s.kw == 3 && s.sw == 2)
    max_row_inner_arg<T, 3, 2>(colmax, colarg, yrow, arow, done, last, s);
  else
    max_row_inner_arg<T, 0, 0>(colmax, colarg, yrow, arow, done, last, s);
  for (int64_t ow = 0; ow < s.Wo; ++ow) {
    if (ow == first) ow = last;
    if (ow >= s.Wo) break;
    const int64_t w0 = ow * s.sw - s.pw;
    const int64_t ws = w0 < 0 ? 0 : w0, we = w0 + s.kw < s.W ? w0 + s.kw : s.W;
    T best = colmax[ws];
    int64_t bw = ws;
    for (int64_t iw = ws + 1; iw < we; ++iw) {
      const T c = colmax[iw];
      const bool take = (c > best) | (c != c) | ((c == best) & (colarg[iw] < colarg[bw]));
      best = take ? c : best;
      bw = take ? iw : bw;
    }
    yrow[ow] = best;
    arow[ow] = static_cast<int64_t>(colarg[bw]) * s.W + bw;
  }
}

}  // namespace

template <typename T>
void max_pool2d_forward_cpu(const T* x, T* y, int64_t* argmax, const Pool2dShape& s) {
  const int64_t planes = s.N * s.C;
#pragma omp parallel if (planes * s.Ho * s.Wo > (1 << 14))
  {
    std::vector<T> colmax(static_cast<size_t>(s.W + kRowSpare));
    std::vector<int32_t> colarg(static_cast<size_t>(s.W + kRowSpare));
#pragma omp for
    for (int64_t pl = 0; pl < planes; ++pl)
      for (int64_t oh = 0; oh < s.Ho; ++oh)
        max_pool_row(x + pl * s.H * s.W, y + (pl * s.Ho + oh) * s.Wo,
                     argmax != nullptr ? argmax + (pl * s.Ho + oh) * s.Wo : nullptr, oh, s,
                     colmax.data(), colarg.data());
  }
}

template <typename T>
void max_pool2d_backward_cpu(const T* gy, const int64_t* argmax, T* gx, const Pool2dShape& s) {
  const int64_t planes = s.N * s.C;
#pragma omp parallel for if (planes * s.Ho * s.Wo > (1 << 14))
  for (int64_t pl = 0; pl < planes; ++pl) {
    T* gp = gx + pl * s.H * s.W;
    for (int64_t i = 0; i < s.H * s.W; ++i) gp[i] = T(0);
    const T* g = gy + pl * s.Ho * s.Wo;
    const int64_t* a = argmax + pl * s.Ho * s.Wo;
    for (int64_t o = 0; o < s.Ho * s.Wo; ++o) gp[a[o]] += g[o];
  }
}

template <typename T>
void adaptive_avg_pool2d_forward_cpu(const T* x, T* y, int64_t NC, int64_t H, int64_t W,
                                     int64_t Ho, int64_t Wo) {
#pragma omp parallel for if (NC * H * W > (1 << 15))
  for (int64_t pl = 0; pl < NC; ++pl) {
    const T* xp = x + pl * H * W;
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const int64_t hs = adaptive_start(oh, Ho, H), he = adaptive_end(oh, Ho, H);
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t ws = adaptive_start(ow, Wo, W), we = adaptive_end(ow, Wo, W);
        T acc = 0;
        for (int64_t ih = hs; ih < he; ++ih)
          for (int64_t iw = ws; iw < we; ++iw) acc += xp[ih * W + iw];
        y[(pl * Ho + oh) * Wo + ow] = acc / static_cast<T>((he - hs) * (we - ws));
      }
    }
  }
}

template <typename T>
void adaptive_avg_pool2d_backward_cpu(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W,
                                      int64_t Ho, int64_t Wo) {
#pragma omp parallel for if (NC * H * W > (1 << 15))
  for (int64_t pl = 0; pl < NC; ++pl) {
    T* gp = gx + pl * H * W;
    for (int64_t i = 0; i < H * W; ++i) gp[i] = T(0);
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const int64_t hs = adaptive_start(oh, Ho, H), he = adaptive_end(oh, Ho, H);
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t ws = adaptive_start(ow, Wo, W), we = adaptive_end(ow, Wo, W);
        const T g = gy[(pl * Ho + oh) * Wo + ow] / static_cast<T>((he - hs) * (we - ws));
        for (int64_t ih = hs; ih < he; ++ih)
          for (int64_t iw = ws; iw < we; ++iw) gp[ih * W + iw] += g;
      }
    }
  }
}

#define INSTANTIATE(T)                                                                      \
  template void max_pool2d_forward_cpu<T>(const T*, T*, int64_t*, const Pool2dShape&);      \
  template void max_pool2d_backward_cpu<T>(const T*, const int64_t*, T*, const Pool2dShape&); \
  template void adaptive_avg_pool2d_forward_cpu<T>(const T*, T*, int64_t, int64_t, int64_t, \
                                                   int64_t, int64_t);                       \
  template void adaptive_avg_pool2d_backward_cpu<T>(const T*, T*, int64_t, int64_t, int64_t, \
                                                    int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
