// CPU conv2d: im2col + GEMM per image (kernels/conv.h gives the math). im2col is
// parallel over the rows of the column matrix; the GEMM is threaded by the BLAS.
// A 1x1 convolution with stride 1 and no padding needs no im2col: col(x[n]) is x[n].
#include "kernels/conv.h"

#include <cstddef>
#include <vector>

#include "kernels/gemm.h"

namespace kernels {
namespace {

bool is_pointwise(const Conv2dShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
}

}  // namespace

template <typename T> void im2col_cpu(const T* x, T* col, const Conv2dShape& s) {
  const int64_t rows = s.C * s.kh * s.kw, cols = s.Ho * s.Wo;
#pragma omp parallel for if (rows * cols > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r / (s.kh * s.kw), i = (r / s.kw) % s.kh, j = r % s.kw;
    const T* xc = x + c * s.H * s.W;
    T* out = col + r * cols;
    for (int64_t oh = 0; oh < s.Ho; ++oh) {
      const int64_t ih = oh * s.sh - s.ph + i;
      T* o = out + oh * s.Wo;
      if (ih < 0 || ih >= s.H) {
        for (int64_t ow = 0; ow < s.Wo; ++ow) o[ow] = T(0);
        continue;
      }
      const T* xr = xc + ih * s.W;
      for (int64_t ow = 0; ow < s.Wo; ++ow) {
        const int64_t iw = ow * s.sw - s.pw + j;
        o[ow] = (iw >= 0 && iw < s.W) ? xr[iw] : T(0);
      }
    }
  }
}

template <typename T> void col2im_cpu(const T* col, T* x, const Conv2dShape& s) {
  const int64_t cols = s.Ho * s.Wo;
  // Parallel over channels: rows of one channel scatter only into that channel's plane.
#pragma omp parallel for if (s.C * s.kh * s.kw * cols > (1 << 15))
  for (int64_t c = 0; c < s.C; ++c) {
    T* xc = x + c * s.H * s.W;
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < s.kw; ++j) {
        const T* in = col + ((c * s.kh + i) * s.kw + j) * cols;
        for (int64_t oh = 0; oh < s.Ho; ++oh) {
          const int64_t ih = oh * s.sh - s.ph + i;
          if (ih < 0 || ih >= s.H) continue;
          T* xr = xc + ih * s.W;
          const T* r = in + oh * s.Wo;
          for (int64_t ow = 0; ow < s.Wo; ++ow) {
            const int64_t iw = ow * s.sw - s.pw + j;
            if (iw >= 0 && iw < s.W) xr[iw] += r[ow];
          }
        }
      }
  }
}

template <typename T>
void conv2d_forward_cpu(const T* x, const T* w, const T* b, T* y, const Conv2dShape& s) {
  const int64_t K = s.C * s.kh * s.kw, P = s.Ho * s.Wo;
  const bool pointwise = is_pointwise(s);
  std::vector<T> col(pointwise ? 0 : static_cast<std::size_t>(K * P));
  for (int64_t n = 0; n < s.N; ++n) {
    const T* xn = x + n * s.C * s.H * s.W;
    T* yn = y + n * s.Co * P;
    const T* cn = xn;
    if (!pointwise) {
      im2col_cpu(xn, col.data(), s);
      cn = col.data();
    }
    if (b != nullptr) {
      for (int64_t o = 0; o < s.Co; ++o)
        for (int64_t p = 0; p < P; ++p) yn[o * P + p] = b[o];
    }
    gemm_cpu<T>(false, false, s.Co, P, K, T(1), w, K, cn, P, b != nullptr ? T(1) : T(0), yn, P);
  }
}

template <typename T>
void conv2d_backward_cpu(const T* x, const T* w, const T* gy, T* gx, T* gw, T* gb,
                         const Conv2dShape& s) {
  const int64_t K = s.C * s.kh * s.kw, P = s.Ho * s.Wo;
  const bool pointwise = is_pointwise(s);
  std::vector<T> col(pointwise ? 0 : static_cast<std::size_t>(K * P));
  if (gw != nullptr && s.N == 0)  // an empty batch: the loop below never writes gw
    for (int64_t i = 0; i < s.Co * K; ++i) gw[i] = T(0);
  if (gb != nullptr) {
    for (int64_t o = 0; o < s.Co; ++o) gb[o] = T(0);
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t o = 0; o < s.Co; ++o) {
        const T* g = gy + (n * s.Co + o) * P;
        double acc = 0;
        for (int64_t p = 0; p < P; ++p) acc += g[p];
        gb[o] += static_cast<T>(acc);
      }
  }
  for (int64_t n = 0; n < s.N; ++n) {
    const T* xn = x + n * s.C * s.H * s.W;
    const T* gyn = gy + n * s.Co * P;
    if (gw != nullptr) {
      const T* cn = xn;
      if (!pointwise) {
        im2col_cpu(xn, col.data(), s);
        cn = col.data();
      }
      gemm_cpu<T>(false, true, s.Co, K, P, T(1), gyn, P, cn, P, n == 0 ? T(0) : T(1), gw, K);
    }
    if (gx != nullptr) {
      T* gxn = gx + n * s.C * s.H * s.W;
      if (pointwise) {
        gemm_cpu<T>(true, false, K, P, s.Co, T(1), w, K, gyn, P, T(0), gxn, P);
      } else {
        gemm_cpu<T>(true, false, K, P, s.Co, T(1), w, K, gyn, P, T(0), col.data(), P);
        for (int64_t i = 0; i < s.C * s.H * s.W; ++i) gxn[i] = T(0);
        col2im_cpu(col.data(), gxn, s);
      }
    }
  }
}

#define INSTANTIATE(T)                                                                   \
  template void im2col_cpu<T>(const T*, T*, const Conv2dShape&);                         \
  template void col2im_cpu<T>(const T*, T*, const Conv2dShape&);                         \
  template void conv2d_forward_cpu<T>(const T*, const T*, const T*, T*, const Conv2dShape&); \
  template void conv2d_backward_cpu<T>(const T*, const T*, const T*, T*, T*, T*,          \
                                       const Conv2dShape&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
