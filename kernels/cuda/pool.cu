// CUDA pooling kernels (kernels/pool.h), NCHW:
//   max_pool2d:          y = max over each window, padding counting as -inf; argmax (when
//                        not null) keeps the flat index ih * W + iw of the maximum within
//                        its (n, c) plane, the first in row-major order on ties.
//                        Backward: gx[e] = sum of gy over the windows whose argmax is e.
//   adaptive_avg_pool2d: window oh covers [floor(oh*H/Ho), ceil((oh+1)*H/Ho)) (same for
//                        w); y = mean over it. Backward: gx = sum of gy / window size
//                        over the windows that contain the element.
// Memory-bound. Forward: one thread per output element. Backward: one thread per input
// element gathers from the few windows that can contain it, in the CPU's order of
// accumulation (oh, then ow ascending), so there are no atomics, results are
// deterministic and agree with the CPU's scatter bit for bit.
#include <limits>

#include "kernels/common.h"
#include "kernels/cuda/check.cuh"
#include "kernels/pool.h"

namespace kernels {

using cuda::parallel_for;

namespace {

// Output indices o in [0, out) whose window [o * s - p, o * s - p + k) contains i.
struct WindowRange {
  int64_t lo, hi;  // inclusive; empty when lo > hi
};
__device__ __forceinline__ WindowRange windows_containing(int64_t i, int64_t k, int64_t s,
                                                          int64_t p, int64_t out) {
  const int64_t first = i + p - k + 1;  // o * s >= first
  WindowRange r;
  r.lo = first <= 0 ? 0 : (first + s - 1) / s;
  r.hi = (i + p) / s;  // o * s <= i + p, and i + p >= 0
  if (r.hi > out - 1) r.hi = out - 1;
  return r;
}

}  // namespace

template <typename T>
void max_pool2d_forward_cuda(const T* x, T* y, int64_t* argmax, const Pool2dShape& s) {
  const Pool2dShape sp = s;
  parallel_for(s.N * s.C * s.Ho * s.Wo, [=] __device__(int64_t k) {
    const int64_t ow = k % sp.Wo, t = k / sp.Wo;
    const int64_t oh = t % sp.Ho, pl = t / sp.Ho;
    const T* xp = x + pl * sp.H * sp.W;
    const int64_t h0 = oh * sp.sh - sp.ph;
    const int64_t hs = h0 < 0 ? 0 : h0, he = h0 + sp.kh < sp.H ? h0 + sp.kh : sp.H;
    const int64_t w0 = ow * sp.sw - sp.pw;
    const int64_t ws = w0 < 0 ? 0 : w0, we = w0 + sp.kw < sp.W ? w0 + sp.kw : sp.W;
    T best = -std::numeric_limits<T>::infinity();
    int64_t where = hs * sp.W + ws;
    for (int64_t ih = hs; ih < he; ++ih)
      for (int64_t iw = ws; iw < we; ++iw) {
        const T v = xp[ih * sp.W + iw];
        // NaN propagates, as in PyTorch (and the CPU loop).
        if (v > best || v != v) {
          best = v;
          where = ih * sp.W + iw;
        }
      }
    y[k] = best;
    if (argmax != nullptr) argmax[k] = where;
  });
}

template <typename T>
void max_pool2d_backward_cuda(const T* gy, const int64_t* argmax, T* gx, const Pool2dShape& s) {
  const Pool2dShape sp = s;
  parallel_for(s.N * s.C * s.H * s.W, [=] __device__(int64_t k) {
    const int64_t iw = k % sp.W, t = k / sp.W;
    const int64_t ih = t % sp.H, pl = t / sp.H;
    const int64_t here = ih * sp.W + iw;
    const WindowRange rh = windows_containing(ih, sp.kh, sp.sh, sp.ph, sp.Ho);
    const WindowRange rw = windows_containing(iw, sp.kw, sp.sw, sp.pw, sp.Wo);
    const int64_t plane = pl * sp.Ho * sp.Wo;
    T acc = T(0);
    for (int64_t oh = rh.lo; oh <= rh.hi; ++oh)
      for (int64_t ow = rw.lo; ow <= rw.hi; ++ow) {
        const int64_t o = plane + oh * sp.Wo + ow;
        if (argmax[o] == here) acc += gy[o];
      }
    gx[k] = acc;
  });
}

template <typename T>
void adaptive_avg_pool2d_forward_cuda(const T* x, T* y, int64_t NC, int64_t H, int64_t W,
                                      int64_t Ho, int64_t Wo) {
  parallel_for(NC * Ho * Wo, [=] __device__(int64_t k) {
    const int64_t ow = k % Wo, t = k / Wo;
    const int64_t oh = t % Ho, pl = t / Ho;
    const T* xp = x + pl * H * W;
    const int64_t hs = adaptive_start(oh, Ho, H), he = adaptive_end(oh, Ho, H);
    const int64_t ws = adaptive_start(ow, Wo, W), we = adaptive_end(ow, Wo, W);
    T acc = 0;  // in T, as on the CPU
    for (int64_t ih = hs; ih < he; ++ih)
      for (int64_t iw = ws; iw < we; ++iw) acc += xp[ih * W + iw];
    y[k] = acc / static_cast<T>((he - hs) * (we - ws));
  });
}

template <typename T>
void adaptive_avg_pool2d_backward_cuda(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W,
                                       int64_t Ho, int64_t Wo) {
  parallel_for(NC * H * W, [=] __device__(int64_t k) {
    const int64_t iw = k % W, t = k / W;
    const int64_t ih = t % H, pl = t / H;
    // Windows containing ih are exactly oh in [floor(ih*Ho/H), ceil((ih+1)*Ho/H) - 1];
    // one more on each side is tested against the window itself, to be safe.
    const int64_t oh_lo = max((ih * Ho) / H - 1, int64_t(0));
    const int64_t oh_hi = min(((ih + 1) * Ho + H - 1) / H, Ho - 1);
    const int64_t ow_lo = max((iw * Wo) / W - 1, int64_t(0));
    const int64_t ow_hi = min(((iw + 1) * Wo + W - 1) / W, Wo - 1);
    const T* gp = gy + pl * Ho * Wo;
    T acc = T(0);
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh) {
      const int64_t hs = adaptive_start(oh, Ho, H), he = adaptive_end(oh, Ho, H);
      if (ih < hs || ih >= he) continue;
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        const int64_t ws = adaptive_start(ow, Wo, W), we = adaptive_end(ow, Wo, W);
        if (iw < ws || iw >= we) continue;
        acc += gp[oh * Wo + ow] / static_cast<T>((he - hs) * (we - ws));
      }
    }
    gx[k] = acc;
  });
}

#define INSTANTIATE(T)                                                                        \
  template void max_pool2d_forward_cuda<T>(const T*, T*, int64_t*, const Pool2dShape&);       \
  template void max_pool2d_backward_cuda<T>(const T*, const int64_t*, T*, const Pool2dShape&); \
  template void adaptive_avg_pool2d_forward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t,  \
                                                    int64_t, int64_t);                        \
  template void adaptive_avg_pool2d_backward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t, \
                                                     int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
