// CPU pooling kernels (math in kernels/pool.h), parallel over (n, c) planes.
#include "kernels/pool.h"

#include <limits>

#include "kernels/common.h"

namespace kernels {

template <typename T>
void max_pool2d_forward_cpu(const T* x, T* y, int64_t* argmax, const Pool2dShape& s) {
  const int64_t planes = s.N * s.C;
#pragma omp parallel for if (planes * s.Ho * s.Wo > (1 << 14))
  for (int64_t pl = 0; pl < planes; ++pl) {
    const T* xp = x + pl * s.H * s.W;
    T* yp = y + pl * s.Ho * s.Wo;
    int64_t* ap = argmax + pl * s.Ho * s.Wo;
    for (int64_t oh = 0; oh < s.Ho; ++oh) {
      const int64_t h0 = oh * s.sh - s.ph;
      const int64_t hs = h0 < 0 ? 0 : h0, he = h0 + s.kh < s.H ? h0 + s.kh : s.H;
      for (int64_t ow = 0; ow < s.Wo; ++ow) {
        const int64_t w0 = ow * s.sw - s.pw;
        const int64_t ws = w0 < 0 ? 0 : w0, we = w0 + s.kw < s.W ? w0 + s.kw : s.W;
        T best = -std::numeric_limits<T>::infinity();
        int64_t where = hs * s.W + ws;
        for (int64_t ih = hs; ih < he; ++ih)
          for (int64_t iw = ws; iw < we; ++iw) {
            const T v = xp[ih * s.W + iw];
            // NaN propagates, as in PyTorch.
            if (v > best || v != v) {
              best = v;
              where = ih * s.W + iw;
            }
          }
        yp[oh * s.Wo + ow] = best;
        ap[oh * s.Wo + ow] = where;
      }
    }
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
