// CPU pooling kernels (math in kernels/pool.h), parallel over (n, c) planes.
#include "kernels/pool.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/common.h"

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
  const T* first = xp + hs * s.W;
  for (int64_t iw = 0; iw < s.W; ++iw) colmax[iw] = first[iw];
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
  if (arow == nullptr) {
    // Without the argmax: the windows that lie inside the row (all of them, without
    // padding) in a branch-free loop that vectorises, with the window fixed at 3 wide and
    // stride 2 (every max-pool of AlexNet and SqueezeNet); the edges in the general loop.
    const int64_t first = (s.pw + s.sw - 1) / s.sw;  // first ow whose window starts at >= 0
    int64_t last = s.W - s.kw + s.pw >= 0 ? (s.W - s.kw + s.pw) / s.sw + 1 : 0;  // windows ending <= W
    last = std::max(first, std::min(last, s.Wo));
    if (s.kw == 3 && s.sw == 2)
      max_row_inner<T, 3, 2>(colmax, yrow, first, last, s);
    else
      max_row_inner<T, 0, 0>(colmax, yrow, first, last, s);
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
  for (int64_t ow = 0; ow < s.Wo; ++ow) {
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
    std::vector<T> colmax(static_cast<size_t>(s.W));
    std::vector<int32_t> colarg(static_cast<size_t>(s.W));
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
