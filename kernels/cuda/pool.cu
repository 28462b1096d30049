// CUDA pooling kernels (kernels/pool.h), NCHW:
//   max_pool2d:          y = max over each window, padding counting as -inf; argmax (when
//                        not null) keeps the flat index ih * W + iw of the maximum within
//                        its (n, c) plane, the first in row-major order on ties.
//                        Backward: gx[e] = sum of gy over the windows whose argmax is e.
//   adaptive_avg_pool2d: window oh covers [floor(oh*H/Ho), ceil((oh+1)*H/Ho)) (same for
//                        w); y = mean over it. Backward: gx = sum of gy / window size
//                        over the windows that contain the element.
// Memory-bound. Forward: one thread per output element, but for a global average pool
// (a warp per plane, summing in another order than the CPU's) and windows of one element
// (a copy as the sum 0 + x). Backward: a thread per input element (or per four, two
// row pairs of a column) gathers from the few windows that can contain it, in the CPU's
// order of accumulation (oh, then ow ascending), so there are no atomics, results are
// deterministic and agree with the CPU's scatter bit for bit.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/common.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/host_threads.h"
#include "kernels/cuda/warp.cuh"
#include "kernels/pool.h"

namespace kernels {

using cuda::parallel_for;

namespace {

// Output indices o in [0, out) whose window [o * s - p, o * s - p + k) contains i.
struct WindowRange {
  int64_t lo, hi;  // inclusive; empty when lo > hi
};
__host__ __device__ __forceinline__ WindowRange windows_containing(int64_t i, int64_t k, int64_t s,
                                                          int64_t p, int64_t out) {
  const int64_t first = i + p - k + 1;  // o * s >= first
  WindowRange r;
  r.lo = first <= 0 ? 0 : (first + s - 1) / s;
  r.hi = (i + p) / s;  // o * s <= i + p, and i + p >= 0
  if (r.hi > out - 1) r.hi = out - 1;
  return r;
}

}  // namespace

// Max-pool, two kernels per direction. The packed ones, where every index fits in int
// (all of AlexNet's and SqueezeNet's shapes): a thread per element of all the planes, its
// plane, row and column taken from the element's index by two FastDivs, so each warp
// covers 32 consecutive elements across rows and planes and no lane idles at the edge of
// a narrow plane (AlexNet's pooled planes are 27, 13 and 6 wide). With a 3x3 window at
// stride 2 (every pooling layer of AlexNet and SqueezeNet) they take a special form. The
// forward loops have a fixed trip count and every load is issued before the first
// comparison, so the latencies overlap instead of adding up. The backward takes a strip
// of input rows of one column a thread, whose windows neighbouring rows share
// (max_pool_backward_strip_at).
// Otherwise they use the shape's own window and stride. The flat ones, a thread per
// element with int64_t indices, take anything larger. The per-thread code of both kinds,
// and the packed kernels' index arithmetic, also run on the host, thread by thread
// (max_pool2d_*_cuda_on_host), so tests without a GPU check them.
struct PoolGeom {
  int H, W, Ho, Wo, kh, kw, sh, sw, ph, pw;
};

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 by a multiply-high, an add and a shift
// instead of a division (some twenty instructions): the round-up method of Granlund and
// Montgomery, the magic number m made on the host.
struct FastDiv {
  unsigned d, m, s;
  explicit FastDiv(unsigned divisor) : d(divisor), m(0), s(0) {
    while ((1ull << s) < d) ++s;  // s = ceil(log2 d)
    m = static_cast<unsigned>(((1ull << 32) * ((1ull << s) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ unsigned div(unsigned n) const {
#ifdef __CUDA_ARCH__
    const unsigned t = __umulhi(n, m);
#else
    const unsigned t = static_cast<unsigned>((static_cast<unsigned long long>(n) * m) >> 32);
#endif
    return (t + n) >> s;  // t <= n < 2^31: no overflow
  }
};

// Output (oh, ow) of plane pl: y = the window's maximum, argmax (if not null) its flat
// index in the plane, the first in row-major order on ties; NaN propagates, as in
// PyTorch (and the CPU loop).
template <typename T, int K, int S>
__host__ __device__ __forceinline__ void max_pool_forward_at(const T* x, T* y, int64_t* argmax, int pl, int oh,
                                                             int ow, const PoolGeom& g) {
  const int sh = S > 0 ? S : g.sh, sw = S > 0 ? S : g.sw;
  const int h0 = oh * sh - g.ph, w0 = ow * sw - g.pw;
  const int hs = h0 < 0 ? 0 : h0, ws = w0 < 0 ? 0 : w0;
  const T* xp = x + pl * g.H * g.W;
  T best = -std::numeric_limits<T>::infinity();
  int where = hs * g.W + ws;
  if constexpr (K > 0) {
    // A window wholly inside the input (every window of AlexNet's pools) loads without
    // bounds tests. Otherwise, outside the input reads as -inf, which never beats best (>
    // is strict) and is not NaN: the same result as skipping it.
    T v[K][K];
    if (h0 >= 0 && w0 >= 0 && h0 + K <= g.H && w0 + K <= g.W) {
      const T* xw = xp + h0 * g.W + w0;
#pragma unroll
      for (int a = 0; a < K; ++a)
#pragma unroll
        for (int b = 0; b < K; ++b) v[a][b] = xw[a * g.W + b];
    } else {
#pragma unroll
      for (int a = 0; a < K; ++a)
#pragma unroll
        for (int b = 0; b < K; ++b) {
          const int ih = h0 + a, iw = w0 + b;
          v[a][b] = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W ? xp[ih * g.W + iw] : -std::numeric_limits<T>::infinity();
        }
    }
    // The winner's place in the window, a * K + b (a constant per comparison), becomes a
    // flat index once at the end.
    int won = -1;
#pragma unroll
    for (int a = 0; a < K; ++a)
#pragma unroll
      for (int b = 0; b < K; ++b)
        if (v[a][b] > best || v[a][b] != v[a][b]) {
          best = v[a][b];
          won = a * K + b;
        }
    if (won >= 0) where = (h0 + won / K) * g.W + (w0 + won % K);
  } else {
    const int he = cuda::min_int(h0 + g.kh, g.H), we = cuda::min_int(w0 + g.kw, g.W);
    for (int ih = hs; ih < he; ++ih)
      for (int iw = ws; iw < we; ++iw) {
        const T v = xp[ih * g.W + iw];
        if (v > best || v != v) {
          best = v;
          where = ih * g.W + iw;
        }
      }
  }
  const int k = (pl * g.Ho + oh) * g.Wo + ow;
  y[k] = best;
  if (argmax != nullptr) argmax[k] = where;
}

// Input (ih, iw) of plane pl: gx = the sum of gy over the windows whose argmax it is, in
// the CPU's order (oh, then ow ascending). Any window and stride.
template <typename T>
__host__ __device__ __forceinline__ void max_pool_backward_at(const T* gy, const int64_t* argmax, T* gx, int pl,
                                                              int ih, int iw, const PoolGeom& g) {
  // Windows o with o * s - p <= i < o * s - p + k; i + p >= 0.
  const int fh = ih + g.ph - g.kh + 1, fw = iw + g.pw - g.kw + 1;
  const int oh_lo = fh <= 0 ? 0 : (fh + g.sh - 1) / g.sh, ow_lo = fw <= 0 ? 0 : (fw + g.sw - 1) / g.sw;
  const int oh_hi = cuda::min_int((ih + g.ph) / g.sh, g.Ho - 1), ow_hi = cuda::min_int((iw + g.pw) / g.sw, g.Wo - 1);
  const int here = ih * g.W + iw;
  const int64_t* ap = argmax + pl * g.Ho * g.Wo;
  const T* gp = gy + pl * g.Ho * g.Wo;
  T acc = T(0);
  for (int oh = oh_lo; oh <= oh_hi; ++oh)
    for (int ow = ow_lo; ow <= ow_hi; ++ow) {
      const int o = oh * g.Wo + ow;
      if (ap[o] == here) acc += gp[o];
    }
  gx[(pl * g.H + ih) * g.W + iw] = acc;
}

// A 3x3 window at stride 2 (every pooling layer of AlexNet and SqueezeNet): pair q of
// input rows, 2q - ph and 2q - ph + 1, lies in window rows q - 1 and q (the first row in
// both, the second in q alone), and column iw in windows k - 1 and k, k = (iw + pw) / 2
// (in both when iw + pw is even, else in k alone); so those four windows hold every window
// of the pair's two inputs. A thread takes a strip of kStripPairs pairs of one column,
// pairs q0 .. q0 + kStripPairs - 1, q0 = strip * kStripPairs: their windows are rows
// q0 - 1 .. q0 + kStripPairs - 1, each shared by two neighbouring pairs, and the thread
// loads their argmax and gradient once, all before the first comparison. Each input sums
// the gradients of the windows whose argmax it is, in ascending (oh, ow) order, the CPU's;
// a window that does not contain the input cannot have it as its argmax, so testing all
// four changes nothing. Neighbouring threads take neighbouring columns, so each of a
// warp's stores is a contiguous row of 32 floats (a 2x2 block a thread left every other
// float of a store's sectors to the next store: Nsight Compute counted 47% of pool1's
// sectors as excess; a pair a thread took pool1's backward at batch 64 on an H100 from
// 48.9 to 41.1 us). Strips of two pairs load 3 window rows for 4 inputs where single
// pairs loaded 4 for 2: on an H200 at batch 64, pool1 39.1-40.3 -> 32.8-33.0 us, pool2
// 31.0-31.6 -> 26.8-26.9 us, pool3 14.0-15.1 -> 13.7-13.8 us; strips of four were no
// faster (33.0-33.9, 27.2-27.8, 13.8-14.0 us).
constexpr int kStripPairs = 2;

template <typename T>
__host__ __device__ __forceinline__ void max_pool_backward_strip_at(const T* gy, const int64_t* argmax, T* gx, int pl,
                                                                    int strip, int iw, const PoolGeom& g) {
  const int64_t* ap = argmax + pl * g.Ho * g.Wo;
  const T* gp = gy + pl * g.Ho * g.Wo;
  const int k = (iw + g.pw) >> 1, q0 = strip * kStripPairs;
  int am[kStripPairs + 1][2];  // an argmax is a flat index within a plane, which fits in int here
  T gv[kStripPairs + 1][2];
#pragma unroll
  for (int a = 0; a <= kStripPairs; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const int oh = q0 - 1 + a, ow = k - 1 + b;
      const bool in = oh >= 0 && oh < g.Ho && ow >= 0 && ow < g.Wo;
      am[a][b] = in ? static_cast<int>(ap[oh * g.Wo + ow]) : -1;
      gv[a][b] = in ? gp[oh * g.Wo + ow] : T(0);
    }
  T* gxp = gx + pl * g.H * g.W;
#pragma unroll
  for (int j = 0; j < kStripPairs; ++j)  // pair q0 + j: window rows j and j + 1 of the strip's
#pragma unroll
    for (int dr = 0; dr < 2; ++dr) {
      const int ih = 2 * (q0 + j) - g.ph + dr;
      if (ih < 0 || ih >= g.H) continue;
      const int here = ih * g.W + iw;
      T acc = T(0);
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 2; ++b)
          if (am[j + a][b] == here) acc += gv[j + a][b];
      gxp[here] = acc;
    }
}

// The strips of max_pool_backward_strip_at along a plane of n rows, padding pad: pair q
// covers rows 2q - pad and 2q - pad + 1, and the (n + pad + 1) / 2 pairs cover them all.
__host__ __device__ __forceinline__ int row_strips(int n, int pad) {
  return ((n + pad + 1) / 2 + kStripPairs - 1) / kStripPairs;
}

// Element k of all planes of rows x cols each: its plane, row and column.
struct PackedIndex {
  FastDiv cols, rows;
  __host__ __device__ __forceinline__ void split(unsigned k, int& plane, int& row, int& col) const {
    const unsigned t = cols.div(k), pl = rows.div(t);
    plane = static_cast<int>(pl);
    row = static_cast<int>(t - pl * rows.d);
    col = static_cast<int>(k - t * cols.d);
  }
};

template <typename T, int K, int S>
__global__ void max_pool2d_forward_packed(const T* x, T* y, int64_t* argmax, unsigned total, PackedIndex ix,
                                          PoolGeom g) {
  // total < 2^31 and the grid's stride < 2^28: k stays within unsigned.
  for (unsigned k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += blockDim.x * gridDim.x) {
    int pl, oh, ow;
    ix.split(k, pl, oh, ow);
    max_pool_forward_at<T, K, S>(x, y, argmax, pl, oh, ow, g);
  }
}

// Backward: a thread per input (Strips false) or per strip of a column (Strips true, a
// 3x3 window at stride 2).
template <typename T, bool Strips>
__global__ void max_pool2d_backward_packed(const T* gy, const int64_t* argmax, T* gx, unsigned total, PackedIndex ix,
                                           PoolGeom g) {
  for (unsigned k = blockIdx.x * blockDim.x + threadIdx.x; k < total; k += blockDim.x * gridDim.x) {
    int pl, r, c;
    ix.split(k, pl, r, c);
    if constexpr (Strips) max_pool_backward_strip_at<T>(gy, argmax, gx, pl, r, c, g);
    else max_pool_backward_at<T>(gy, argmax, gx, pl, r, c, g);
  }
}

// The flat kernels' per-thread code: output (forward) or input (backward) element k of
// all planes, int64_t indices throughout.
template <typename T>
__host__ __device__ __forceinline__ void max_pool_forward_flat_at(const T* x, T* y, int64_t* argmax,
                                                                  const Pool2dShape& sp, int64_t k) {
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
      if (v > best || v != v) {
        best = v;
        where = ih * sp.W + iw;
      }
    }
  y[k] = best;
  if (argmax != nullptr) argmax[k] = where;
}

template <typename T>
__host__ __device__ __forceinline__ void max_pool_backward_flat_at(const T* gy, const int64_t* argmax, T* gx,
                                                                   const Pool2dShape& sp, int64_t k) {
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
}

template <typename T>
__global__ void max_pool2d_forward_flat(const T* x, T* y, int64_t* argmax, Pool2dShape sp, int64_t total) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x)
    max_pool_forward_flat_at(x, y, argmax, sp, k);
}

template <typename T>
__global__ void max_pool2d_backward_flat(const T* gy, const int64_t* argmax, T* gx, Pool2dShape sp, int64_t total) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x)
    max_pool_backward_flat_at(gy, argmax, gx, sp, k);
}

namespace {

constexpr int kThreads = 256;

// Whether the packed kernels apply: every element index, and the window arithmetic,
// within int.
bool packed_pool(const Pool2dShape& s) {
  const int64_t lim = std::numeric_limits<int>::max();
  return s.N * s.C * s.H * s.W <= lim && s.N * s.C * s.Ho * s.Wo <= lim &&
         s.H + s.ph + s.kh + s.sh * s.Ho <= lim && s.W + s.pw + s.kw + s.sw * s.Wo <= lim;
}

PoolGeom geom(const Pool2dShape& s) {
  return {int(s.H), int(s.W), int(s.Ho), int(s.Wo), int(s.kh), int(s.kw), int(s.sh), int(s.sw), int(s.ph), int(s.pw)};
}

PackedIndex packed_index(int64_t rows, int64_t cols) {
  return {FastDiv(static_cast<unsigned>(cols)), FastDiv(static_cast<unsigned>(rows))};
}

// Whether the 3x3, stride-2 kernels apply.
bool window3_stride2(const Pool2dShape& s) { return s.kh == 3 && s.kw == 3 && s.sh == 2 && s.sw == 2; }

// The packed kernels' threads along a plane: rows x cols of them.
struct PlaneThreads {
  int64_t rows, cols;
};
PlaneThreads forward_threads(const Pool2dShape& s) { return {s.Ho, s.Wo}; }  // an output each
PlaneThreads backward_threads(const Pool2dShape& s) {  // an input each, or a strip of a column
  if (window3_stride2(s)) return {row_strips(int(s.H), int(s.ph)), s.W};
  return {s.H, s.W};
}

}  // namespace

// Launches a max-pool direction: the packed kernel over `plane` threads of every plane
// (its 3x3, stride-2 form where the shape has that window) or, for shapes beyond int, the
// flat one over flat_total elements. `args` are the kernels' leading arguments.
template <typename Packed32, typename Packed0, typename Flat, typename... Args>
void launch_max_pool(const Pool2dShape& s, PlaneThreads plane, int64_t flat_total, Packed32 packed32, Packed0 packed0,
                     Flat flat, Args... args) {
  if (flat_total <= 0) return;
  if (packed_pool(s)) {
    const int64_t total = s.N * s.C * plane.rows * plane.cols;  // <= flat_total
    const unsigned blocks = cuda::grid_for(total, kThreads);
    const PackedIndex ix = packed_index(plane.rows, plane.cols);
    if (window3_stride2(s))
      packed32<<<blocks, kThreads, 0, cuda::stream()>>>(args..., unsigned(total), ix, geom(s));
    else
      packed0<<<blocks, kThreads, 0, cuda::stream()>>>(args..., unsigned(total), ix, geom(s));
  } else {
    flat<<<cuda::grid_for(flat_total, kThreads), kThreads, 0, cuda::stream()>>>(args..., s, flat_total);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void max_pool2d_forward_cuda(const T* x, T* y, int64_t* argmax, const Pool2dShape& s) {
  launch_max_pool(s, forward_threads(s), s.N * s.C * s.Ho * s.Wo, max_pool2d_forward_packed<T, 3, 2>,
                  max_pool2d_forward_packed<T, 0, 0>, max_pool2d_forward_flat<T>, x, y, argmax);
}

template <typename T>
void max_pool2d_backward_cuda(const T* gy, const int64_t* argmax, T* gx, const Pool2dShape& s) {
  launch_max_pool(s, backward_threads(s), s.N * s.C * s.H * s.W, max_pool2d_backward_packed<T, true>,
                  max_pool2d_backward_packed<T, false>, max_pool2d_backward_flat<T>, gy, argmax, gx);
}

// The kernels' per-thread code, run on the host for every thread that a launch would
// start: the flat kernels' flat_at(k) for each of flat_total elements, or the packed
// kernels' packed_at(plane, row, col, whether the 3x3 stride-2 form applies) over `plane`
// threads of every plane, with their index arithmetic.
template <typename FlatAt, typename PackedAt>
void threads_on_host(const Pool2dShape& s, const char* what, PlaneThreads plane, int64_t flat_total, bool flat,
                     FlatAt flat_at, PackedAt packed_at) {
  if (flat) {
    for (int64_t k = 0; k < flat_total; ++k) flat_at(k);
    return;
  }
  if (!packed_pool(s)) throw std::invalid_argument(std::string(what) + ": shape beyond the packed kernels");
  const bool k3s2 = window3_stride2(s);
  const PackedIndex ix = packed_index(plane.rows, plane.cols);
  const int64_t total = s.N * s.C * plane.rows * plane.cols;
  for (unsigned k = 0; k < static_cast<unsigned>(total); ++k) {
    int pl, r, c;
    ix.split(k, pl, r, c);
    packed_at(pl, r, c, k3s2);
  }
}

template <typename T>
void max_pool2d_forward_cuda_on_host(const T* x, T* y, int64_t* argmax, const Pool2dShape& s, bool flat) {
  const PoolGeom g = geom(s);
  threads_on_host(
      s, "max_pool2d_forward_cuda_on_host", forward_threads(s), s.N * s.C * s.Ho * s.Wo, flat,
      [&](int64_t k) { max_pool_forward_flat_at(x, y, argmax, s, k); },
      [&](int pl, int oh, int ow, bool k3s2) {
        if (k3s2) max_pool_forward_at<T, 3, 2>(x, y, argmax, pl, oh, ow, g);
        else max_pool_forward_at<T, 0, 0>(x, y, argmax, pl, oh, ow, g);
      });
}

template <typename T>
void max_pool2d_backward_cuda_on_host(const T* gy, const int64_t* argmax, T* gx, const Pool2dShape& s, bool flat) {
  const PoolGeom g = geom(s);
  threads_on_host(
      s, "max_pool2d_backward_cuda_on_host", backward_threads(s), s.N * s.C * s.H * s.W, flat,
      [&](int64_t k) { max_pool_backward_flat_at(gy, argmax, gx, s, k); },
      [&](int pl, int r, int c, bool k3s2) {
        if (k3s2) max_pool_backward_strip_at<T>(gy, argmax, gx, pl, r, c, g);
        else max_pool_backward_at<T>(gy, argmax, gx, pl, r, c, g);
      });
}

namespace {

// Global average pooling (Ho = Wo = 1: SqueezeNet's last pool) takes a warp per plane,
// whose lanes read neighbouring addresses, instead of one thread walking its whole
// plane: lane l sums elements l, l + 32, ... in order, the lanes' sums combine in the
// shuffles' butterfly order, and the mean is that sum over H * W. G is cuda::WarpGroup on
// the device, cuda::HostWarp in adaptive_avg_pool2d_forward_cuda_on_host.
#pragma nv_exec_check_disable
template <typename T, typename G>
__host__ __device__ __forceinline__ T plane_mean(const T* xp, int64_t hw, const G& g) {
  T acc = 0;
  for (int64_t i = g.rank(); i < hw; i += 32) acc += xp[i];
  return g.sum(acc) / static_cast<T>(hw);
}

template <typename T> __global__ void global_avg_pool_kernel(const T* x, T* y, int64_t planes, int64_t hw) {
  const int64_t warps = blockDim.x >> 5;
  const cuda::WarpGroup g{static_cast<int>(threadIdx.x & 31)};
  // p is the same for all lanes of a warp, so every lane takes part in the shuffles.
  for (int64_t p = blockIdx.x * warps + (threadIdx.x >> 5); p < planes; p += gridDim.x * warps) {
    const T m = plane_mean(x + p * hw, hw, g);
    if (g.rank() == 0) y[p] = m;
  }
}

constexpr int kGlobalPoolThreads = 256;

// A global pool's backward at input element i (all the planes' elements below 2^31):
// 0 + gy[plane] / (H * W), the general gather's one window, with the plane i / (H * W)
// from a FastDiv.
template <typename T>
__host__ __device__ __forceinline__ T global_avg_pool_grad(const T* gy, unsigned i, const FastDiv& plane) {
  return T(0) + gy[plane.div(i)] / static_cast<T>(plane.d);
}
template <typename T>
__host__ __device__ __forceinline__ void global_avg_pool_backward_at(const T* gy, T* gx, unsigned i,
                                                                     const FastDiv& plane) {
  gx[i] = global_avg_pool_grad(gy, i, plane);
}

// The float form of a global pool's backward: 4 elements a float4 store, each with its
// own plane and quotient (global_avg_pool_grad, as one element a thread), kGlobalBwdUnroll
// float4s a trip of thread `first` of `stride` (cuda::strided_unrolled), then the n % 4
// last elements one at a time. One element a thread left each thread a single 4-byte
// store: SqueezeNet's 10.8 M-element gradient at batch 64 ran at 0.45 of the bandwidth
// of a copy of its bytes on an H100 (46.5 us), and at 0.84 (25.9 us) this way. gx must
// be 16-byte aligned.
constexpr int kGlobalBwdUnroll = 4;
__host__ __device__ __forceinline__ void global_avg_pool_backward_float4_thread(const float* gy, float* gx, unsigned n,
                                                                                 const FastDiv& plane, int64_t first,
                                                                                 int64_t stride) {
  auto value = [&](unsigned i) { return global_avg_pool_grad(gy, i, plane); };
  float4* g4 = reinterpret_cast<float4*>(gx);
  cuda::strided_unrolled<kGlobalBwdUnroll>(
      first, stride, static_cast<int64_t>(n >> 2),
      [&](int64_t u) {
        const unsigned i = static_cast<unsigned>(u) << 2;
        return make_float4(value(i), value(i + 1), value(i + 2), value(i + 3));
      },
      [&](int64_t u, const float4& v) { g4[u] = v; });
  for (int64_t i = static_cast<int64_t>((n >> 2) << 2) + first; i < n; i += stride) gx[i] = value(unsigned(i));
}

__global__ void global_avg_pool_backward_float4_kernel(const float* gy, float* gx, unsigned n, FastDiv plane) {
  global_avg_pool_backward_float4_thread(gy, gx, n, plane, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                                         static_cast<int64_t>(blockDim.x) * gridDim.x);
}

unsigned global_avg_pool_backward_float4_blocks(unsigned n) {
  return cuda::grid_for((n / 4 + kGlobalBwdUnroll - 1) / kGlobalBwdUnroll, kGlobalPoolThreads);
}

// Windows of one element (AlexNet's 6 x 6), forward or backward: the general sum's 0 + x
// over a count of 1, the same bits.
template <typename T> void one_element_windows(const T* x, T* y, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { y[i] = T(0) + x[i]; });
}

}  // namespace

template <typename T>
void adaptive_avg_pool2d_forward_cuda(const T* x, T* y, int64_t NC, int64_t H, int64_t W,
                                      int64_t Ho, int64_t Wo) {
  if (Ho == 1 && Wo == 1) {
    if (NC <= 0) return;
    global_avg_pool_kernel<T><<<cuda::grid_for(NC * 32, kGlobalPoolThreads), kGlobalPoolThreads, 0,
                                cuda::stream()>>>(x, y, NC, H * W);
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (Ho == H && Wo == W) return one_element_windows(x, y, NC * H * W);
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
  if (Ho == H && Wo == W) return one_element_windows(gy, gx, NC * H * W);
  if (Ho == 1 && Wo == 1) {  // one window over the plane: the general gather's 0 + gy / (H * W)
    const int64_t hw = H * W, n = NC * hw;
    if (n <= std::numeric_limits<int>::max()) {  // the plane by a multiply-high, not a 64-bit division
      const FastDiv plane(static_cast<unsigned>(hw));
      if constexpr (std::is_same_v<T, float>) {
        if (cuda::aligned16(gx)) {
          const unsigned un = static_cast<unsigned>(n);
          global_avg_pool_backward_float4_kernel<<<global_avg_pool_backward_float4_blocks(un), kGlobalPoolThreads, 0,
                                                   cuda::stream()>>>(gy, gx, un, plane);
          CUDA_CHECK_LAUNCH();
          return;
        }
      }
      parallel_for(n, [=] __device__(int64_t i) { global_avg_pool_backward_at(gy, gx, static_cast<unsigned>(i), plane); });
    } else {
      parallel_for(n, [=] __device__(int64_t i) { gx[i] = T(0) + gy[i / hw] / static_cast<T>(hw); });
    }
    return;
  }
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

template <typename T>
void adaptive_avg_pool2d_forward_cuda_on_host(const T* x, T* y, int64_t NC, int64_t H, int64_t W) {
  for (int64_t p = 0; p < NC; ++p)
    cuda::on_host_warp([&](const cuda::HostWarp& g) {
      const T m = plane_mean(x + p * H * W, H * W, g);
      if (g.rank() == 0) y[p] = m;
    });
}

template <typename T>
void adaptive_avg_pool2d_backward_cuda_on_host(const T* gy, T* gx, int64_t NC, int64_t H, int64_t W) {
  const int64_t n = NC * H * W;
  if (n > std::numeric_limits<int>::max())
    throw std::invalid_argument("adaptive_avg_pool2d_backward_cuda_on_host: beyond the FastDiv kernel");
  if (n <= 0) return;
  const FastDiv plane(static_cast<unsigned>(H * W));
  if constexpr (std::is_same_v<T, float>) {
    if (cuda::aligned16(gx)) {  // the float4 kernel, thread by thread over its grid
      const unsigned un = static_cast<unsigned>(n);
      const int64_t threads = static_cast<int64_t>(global_avg_pool_backward_float4_blocks(un)) * kGlobalPoolThreads;
      for (int64_t t = 0; t < threads; ++t) global_avg_pool_backward_float4_thread(gy, gx, un, plane, t, threads);
      return;
    }
  }
  for (unsigned i = 0; i < static_cast<unsigned>(n); ++i) global_avg_pool_backward_at(gy, gx, i, plane);
}

#define INSTANTIATE(T)                                                                        \
  template void max_pool2d_forward_cuda<T>(const T*, T*, int64_t*, const Pool2dShape&);       \
  template void max_pool2d_backward_cuda<T>(const T*, const int64_t*, T*, const Pool2dShape&); \
  template void max_pool2d_forward_cuda_on_host<T>(const T*, T*, int64_t*, const Pool2dShape&, bool); \
  template void max_pool2d_backward_cuda_on_host<T>(const T*, const int64_t*, T*, const Pool2dShape&, bool); \
  template void adaptive_avg_pool2d_forward_cuda_on_host<T>(const T*, T*, int64_t, int64_t, int64_t); \
  template void adaptive_avg_pool2d_backward_cuda_on_host<T>(const T*, T*, int64_t, int64_t, int64_t); \
  template void adaptive_avg_pool2d_forward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t,  \
                                                    int64_t, int64_t);                        \
  template void adaptive_avg_pool2d_backward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t, \
                                                     int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
