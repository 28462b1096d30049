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
// The mask of lanes where nan_max8 takes b: b > a, or b is NaN (not with NoNaN).
template <bool NoNaN> inline __m256 takes_b(__m256 a, __m256 b) {
  const __m256 gt = _mm256_cmp_ps(b, a, _CMP_GT_OQ);
  return NoNaN ? gt : _mm256_or_ps(gt, _mm256_cmp_ps(b, b, _CMP_UNORD_Q));
}
// nan_max, 8 lanes. With NoNaN (b holds no NaN) it is (b > a) ? b : a, which is what
// MAXPS(b, a) returns (its second operand where either is NaN or the two are equal): one
// instruction for the comparisons, their OR and the blend (a three-micro-op blend on
// Intel's cores).
template <bool NoNaN> inline __m256 nan_max8(__m256 a, __m256 b) {
  if constexpr (NoNaN) return _mm256_max_ps(b, a);
  return _mm256_blendv_ps(a, b, takes_b<false>(a, b));
}
// Whether any of x[0, n) is NaN: 16 elements a step, the last 16 (overlapping the steps)
// for the rest, or masked loads (lanes past n read 0) where n < 16.
inline bool any_nan(const float* x, int64_t n) {
  auto unordered = [](const float* p, const float* q) {
    return _mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(q), _CMP_UNORD_Q);
  };
  __m256 acc;
  if (n >= 16) {
    acc = unordered(x + n - 16, x + n - 8);
    for (int64_t i = 0; i + 16 <= n; i += 16) acc = _mm256_or_ps(acc, unordered(x + i, x + i + 8));
  } else {
    const __m256 lo = _mm256_maskload_ps(x, first_lanes(n));
    const __m256 hi = n > 8 ? _mm256_maskload_ps(x + 8, first_lanes(n - 8)) : _mm256_setzero_ps();
    acc = _mm256_cmp_ps(lo, hi, _CMP_UNORD_Q);
  }
  return _mm256_movemask_ps(acc) != 0;
}
// Outputs [first, last) of max_row_inner<float, 3, 2>; the last group of fewer than 8 is
// stored through a mask (its other lanes read spare entries and are dropped). NoNaN: no
// column maximum is NaN.
template <bool NoNaN>
inline void max_row_3x2_avx2(const float* colmax, float* yrow, int64_t first, int64_t last, const Pool2dShape& s) {
  for (int64_t ow = first; ow < last; ow += 8) {
    __m256 c0, c1, c2;
    window_columns(colmax + 2 * ow - s.pw, c0, c1, c2);
    const __m256 y = nan_max8<NoNaN>(nan_max8<NoNaN>(c0, c1), c2);
    if (last - ow >= 8)
      _mm256_storeu_ps(yrow + ow, y);
    else
      _mm256_maskstore_ps(yrow + ow, first_lanes(last - ow), y);
  }
}

// Outputs [ow, ow + min(left, 8)) from the windows' columns c[0..2] and the rows r[0..2]
// that gave them (int32 bits in float lanes), the windows starting at column w0 + 2i:
// the maximum, ties to the smaller row, then the smaller column, as max_row_inner_arg;
// the argmax stored as int64 row * W + column.
template <bool NoNaN>
inline void store_window_argmax(const __m256 c[3], const __m256 r[3], int64_t w0, int64_t W, float* y, int64_t* a,
                                int64_t left) {
  const __m256i col0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(w0)),
                                        _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
  __m256 best = c[0], br = r[0], bw = _mm256_castsi256_ps(col0);
  for (int j = 1; j < 3; ++j) {
    const __m256 row_less = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_castps_si256(br), _mm256_castps_si256(r[j])));
    const __m256 take =
        _mm256_or_ps(takes_b<NoNaN>(best, c[j]), _mm256_and_ps(_mm256_cmp_ps(c[j], best, _CMP_EQ_OQ), row_less));
    best = _mm256_blendv_ps(best, c[j], take);
    br = _mm256_blendv_ps(br, r[j], take);
    bw = _mm256_blendv_ps(bw, _mm256_castsi256_ps(_mm256_add_epi32(col0, _mm256_set1_epi32(j))), take);
  }
  const __m256i flat = _mm256_add_epi32(
      _mm256_mullo_epi32(_mm256_castps_si256(br), _mm256_set1_epi32(static_cast<int32_t>(W))), _mm256_castps_si256(bw));
  const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(flat));
  const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(flat, 1));
  auto* al = reinterpret_cast<long long*>(a);
  if (left >= 8) {
    _mm256_storeu_ps(y, best);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(al), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(al + 4), hi);
  } else {
    const __m256i m = first_lanes(left);
    _mm256_maskstore_ps(y, m, best);
    _mm256_maskstore_epi64(al, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(m)), lo);
    _mm256_maskstore_epi64(al + 4, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1)), hi);
  }
}

// The same for max_row_inner_arg<float, 3, 2> (needs H * W < 2^31: int32 indices).
template <bool NoNaN>
inline void max_row_3x2_arg_avx2(const float* colmax, const int32_t* colarg, float* yrow, int64_t* arow,
                                 int64_t first, int64_t last, const Pool2dShape& s) {
  for (int64_t ow = first; ow < last; ow += 8) {
    const int64_t w0 = 2 * ow - s.pw;
    __m256 c[3], r[3];
    window_columns(colmax + w0, c[0], c[1], c[2]);
    window_columns(reinterpret_cast<const float*>(colarg + w0), r[0], r[1], r[2]);  // int32 bits, moved only
    store_window_argmax<NoNaN>(c, r, w0, s.W, yrow + ow, arow + ow, last - ow);
  }
}

// Rows row0, row0 + 1 and row0 + 2 in every lane (int32 bits in float registers).
struct RowIds {
  explicit RowIds(int32_t row0)
      : a0(_mm256_castsi256_ps(_mm256_set1_epi32(row0))), a1(_mm256_castsi256_ps(_mm256_set1_epi32(row0 + 1))),
        a2(_mm256_castsi256_ps(_mm256_set1_epi32(row0 + 2))) {}
  __m256 a0, a1, a2;
};

// vmax = nan_max(nan_max(x0, x1), x2), lane by lane, and with WithArg varg the row that
// gave it: the same comparisons in the same order as the loops in max_pool_row.
// With NoNaN, x1 and x2 hold no NaN.
template <bool WithArg, bool NoNaN>
inline void vertical_3(__m256 x0, __m256 x1, __m256 x2, const RowIds& rows, __m256& vmax, __m256& varg) {
  const __m256 m1 = nan_max8<NoNaN>(x0, x1);
  vmax = nan_max8<NoNaN>(m1, x2);
  if constexpr (WithArg)
    varg = _mm256_blendv_ps(_mm256_blendv_ps(rows.a0, rows.a1, takes_b<NoNaN>(x0, x1)), rows.a2, takes_b<NoNaN>(m1, x2));
}

// vertical_3 over columns w .. w + 7 of the three rows r0, r0 + W, r0 + 2W; columns at or
// past W are masked out of the loads and read 0.
template <bool WithArg, bool NoNaN>
inline void vertical_3_lanes(const float* r0, int64_t W, int64_t w, const RowIds& rows, __m256& vmax, __m256& varg) {
  const float* r1 = r0 + W;
  const float* r2 = r1 + W;
  if (W - w >= 8) {
    vertical_3<WithArg, NoNaN>(_mm256_loadu_ps(r0 + w), _mm256_loadu_ps(r1 + w), _mm256_loadu_ps(r2 + w), rows, vmax,
                               varg);
  } else {
    const __m256i m = first_lanes(W - w);
    vertical_3<WithArg, NoNaN>(_mm256_maskload_ps(r0 + w, m), _mm256_maskload_ps(r1 + w, m),
                               _mm256_maskload_ps(r2 + w, m), rows, vmax, varg);
  }
}

// The vertical pass over a window of three rows in one sweep, 8 columns at a time (the
// row buffers' spare entries take the last group's full-width stores): colmax[iw] =
// nan_max(nan_max(r0, r1), r2) and, with WithArg, colarg[iw] the row that gave it.
template <bool WithArg, bool NoNaN>
inline void vertical_3_avx2(const float* r0, int64_t W, int32_t row0, float* colmax, int32_t* colarg) {
  const RowIds rows(row0);
  for (int64_t i = 0; i < W; i += 8) {
    __m256 vmax, varg;
    vertical_3_lanes<WithArg, NoNaN>(r0, W, i, rows, vmax, varg);
    _mm256_storeu_ps(colmax + i, vmax);
    if constexpr (WithArg) _mm256_storeu_ps(reinterpret_cast<float*>(colarg + i), varg);
  }
}

// Lanes i of the windows' three columns 2i, 2i + 1 and 2i + 2, of the 17 columns held in
// lo, hi and lane 7 of c16: what window_columns loads from a column buffer.
inline void columns_from_lanes(const __m256& lo, const __m256& hi, const __m256& c16, __m256& c0, __m256& c1,
                               __m256& c2) {
  c0 = even_lanes(lo, hi);
  c1 = odd_lanes(lo, hi);
  c2 = _mm256_blend_ps(_mm256_permutevar8x32_ps(c0, _mm256_setr_epi32(1, 2, 3, 4, 5, 6, 7, 7)), c16, 0x80);
}

// One output row of a 3x3, stride-2 pool whose windows all lie inside the row (no
// padding, no window past the end), its three input rows from `top`: the vertical and
// horizontal passes fused, 8 outputs at a time in registers. Columns w0 .. w0 + 15 go
// through the vertical pass as two vectors, column w0 + 16 (the last window's third) as
// a scalar, and the windows' columns are taken from those registers: no store and
// reload of the column maxima between the passes, no per-row set-up. The same
// comparisons in the same order as vertical_3_avx2 followed by max_row_3x2(_arg)_avx2,
// so the same bits. AlexNet's pool3 (13-wide rows, 6 outputs) is one group a row.
template <bool WithArg, bool NoNaN>
void max_row_3x2_fused_avx2(const float* top, int64_t W, int32_t row0, float* yrow, int64_t* arow, int64_t Wo) {
  const float* r1 = top + W;
  const float* r2 = r1 + W;
  const RowIds rows(row0);
  for (int64_t ow = 0; ow < Wo; ow += 8) {
    const int64_t w0 = 2 * ow;
    // Columns past the row read 0 and reach only outputs >= Wo.
    __m256 vlo, vhi, alo, ahi;
    vertical_3_lanes<WithArg, NoNaN>(top, W, w0, rows, vlo, alo);
    vertical_3_lanes<WithArg, NoNaN>(top, W, w0 + 8, rows, vhi, ahi);
    // Column w0 + 16 in every lane, through the same vector comparisons (branch-free).
    __m256 v16 = _mm256_setzero_ps(), a16 = _mm256_setzero_ps();
    if (w0 + 16 < W)
      vertical_3<WithArg, NoNaN>(_mm256_broadcast_ss(top + w0 + 16), _mm256_broadcast_ss(r1 + w0 + 16),
                                 _mm256_broadcast_ss(r2 + w0 + 16), rows, v16, a16);
    __m256 c0, c1, c2;
    columns_from_lanes(vlo, vhi, v16, c0, c1, c2);
    const int64_t left = Wo - ow;
    if constexpr (!WithArg) {
      const __m256 y = nan_max8<NoNaN>(nan_max8<NoNaN>(c0, c1), c2);
      if (left >= 8)
        _mm256_storeu_ps(yrow + ow, y);
      else
        _mm256_maskstore_ps(yrow + ow, first_lanes(left), y);
    } else {
      const __m256 c[3] = {c0, c1, c2};
      __m256 r[3];
      columns_from_lanes(alo, ahi, a16, r[0], r[1], r[2]);  // int32 bits, moved only
      store_window_argmax<NoNaN>(c, r, w0, W, yrow + ow, arow + ow, left);
    }
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
// smallest row, then the smallest column. NaN propagates, as in PyTorch. The AVX2 code
// (float) first scans the window's rows (contiguous) for NaN: without one, no column
// maximum holds one either, and every comparison drops its NaN term (the NoNaN forms of
// nan_max8 and takes_b, the same bits).
template <typename T>
void max_pool_row(const T* xp, T* yrow, int64_t* arow, int64_t oh, const Pool2dShape& s, T* colmax,
                  int32_t* colarg) {
  const int64_t h0 = oh * s.sh - s.ph;
  const int64_t hs = h0 < 0 ? 0 : h0, he = h0 + s.kh < s.H ? h0 + s.kh : s.H;
  const T* top = xp + hs * s.W;
  // The windows [first, last) lie inside the row; the others are its edges.
  const int64_t first = (s.pw + s.sw - 1) / s.sw;  // first ow whose window starts at >= 0
  int64_t last = s.W - s.kw + s.pw >= 0 ? (s.W - s.kw + s.pw) / s.sw + 1 : 0;  // windows ending <= W
  last = std::max(first, std::min(last, s.Wo));
  bool vertical_done = false;
#if defined(__AVX2__)
  // f(std::true_type) where the window's rows hold no NaN, f(std::false_type) otherwise.
  [[maybe_unused]] bool no_nan = false;
  [[maybe_unused]] auto nan_form = [&no_nan](auto f) { no_nan ? f(std::true_type{}) : f(std::false_type{}); };
  if constexpr (std::is_same_v<T, float>) {
    no_nan = (he - hs == 3 || (s.kw == 3 && s.sw == 2)) && !any_nan(top, (he - hs) * s.W);  // where it is used
    if (he - hs == 3 && s.kw == 3 && s.sw == 2 && first == 0 && last == s.Wo &&
        (arow == nullptr || s.H * s.W < (int64_t{1} << 31))) {  // no edges: the fused pass
      nan_form([&](auto nn) {
        if (arow != nullptr)
          max_row_3x2_fused_avx2<true, decltype(nn)::value>(top, s.W, static_cast<int32_t>(hs), yrow, arow, s.Wo);
        else
          max_row_3x2_fused_avx2<false, decltype(nn)::value>(top, s.W, static_cast<int32_t>(hs), yrow, arow, s.Wo);
      });
      return;
    }
    if (he - hs == 3) {
      nan_form([&](auto nn) {
        if (arow != nullptr)
          vertical_3_avx2<true, decltype(nn)::value>(top, s.W, static_cast<int32_t>(hs), colmax, colarg);
        else
          vertical_3_avx2<false, decltype(nn)::value>(top, s.W, static_cast<int32_t>(hs), colmax, colarg);
      });
      vertical_done = true;
    }
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
  // The windows that lie inside the row in a branch-free loop that vectorises, with the
  // window fixed at 3 wide and stride 2 (every max-pool of AlexNet and SqueezeNet); the
  // edges in the general loops below.
  [[maybe_unused]] const bool avx2 = std::is_same_v<T, float> && s.kw == 3 && s.sw == 2;
  if (arow == nullptr) {
    int64_t done = first;
#if defined(__AVX2__)
    if constexpr (std::is_same_v<T, float>)
      if (avx2) {
        nan_form([&](auto nn) { max_row_3x2_avx2<decltype(nn)::value>(colmax, yrow, first, last, s); });
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
      nan_form([&](auto nn) { max_row_3x2_arg_avx2<decltype(nn)::value>(colmax, colarg, yrow, arow, first, last, s); });
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

namespace {

// Adaptive windows [start[i], end[i]) along one axis, computed once per call rather than
// by two divisions per output.
struct AdaptiveWindows {
  std::vector<int64_t> start, end;
  AdaptiveWindows(int64_t out, int64_t in) : start(static_cast<size_t>(out)), end(static_cast<size_t>(out)) {
    for (int64_t i = 0; i < out; ++i) {
      start[static_cast<size_t>(i)] = adaptive_start(i, out, in);
      end[static_cast<size_t>(i)] = adaptive_end(i, out, in);
    }
  }
};

// The means of one plane, each window summed in row-major order from +0.
template <typename T>
void adaptive_avg_plane(const T* x, T* y, int64_t W, const AdaptiveWindows& rows, const AdaptiveWindows& cols) {
  const size_t Ho = rows.start.size(), Wo = cols.start.size();
  for (size_t oh = 0; oh < Ho; ++oh)
    for (size_t ow = 0; ow < Wo; ++ow) {
      T acc = 0;
      for (int64_t ih = rows.start[oh]; ih < rows.end[oh]; ++ih)
        for (int64_t iw = cols.start[ow]; iw < cols.end[ow]; ++iw) acc += x[ih * W + iw];
      y[oh * Wo + ow] = acc / static_cast<T>((rows.end[oh] - rows.start[oh]) * (cols.end[ow] - cols.start[ow]));
    }
}

// Windows of one element (AlexNet's 6 x 6 -> 6 x 6 at 224 x 224 inputs), forward or
// backward: the shortcut of the general sum, 0 + x over a count of 1, the same bits (-0
// gives +0).
template <typename T> void adaptive_avg_one_element_windows(const T* x, T* y, int64_t n) {
#pragma omp parallel for simd if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) y[i] = T(0) + x[i];
}

}  // namespace

template <typename T>
void adaptive_avg_pool2d_forward_cpu(const T* x, T* y, int64_t NC, int64_t H, int64_t W,
                                     int64_t Ho, int64_t Wo) {
  if (Ho == H && Wo == W) return adaptive_avg_one_element_windows(x, y, NC * H * W);
  const AdaptiveWindows rows(Ho, H), cols(Wo, W);
#pragma omp parallel for if (NC * H * W > (1 << 15))
  for (int64_t pl = 0; pl < NC; ++pl) adaptive_avg_plane<T>(x + pl * H * W, y + pl * Ho * Wo, W, rows, cols);
}

template <typename T>
void adaptive_avg_pool2d_backward_cpu(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W,
                                      int64_t Ho, int64_t Wo) {
  if (Ho == H && Wo == W) return adaptive_avg_one_element_windows(gy, gx, NC * H * W);
  const AdaptiveWindows rows(Ho, H), cols(Wo, W);
#pragma omp parallel for if (NC * H * W > (1 << 15))
  for (int64_t pl = 0; pl < NC; ++pl) {
    T* gp = gx + pl * H * W;
    for (int64_t i = 0; i < H * W; ++i) gp[i] = T(0);
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const int64_t hs = rows.start[static_cast<size_t>(oh)], he = rows.end[static_cast<size_t>(oh)];
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t ws = cols.start[static_cast<size_t>(ow)], we = cols.end[static_cast<size_t>(ow)];
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
