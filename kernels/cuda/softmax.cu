// CUDA softmax, log_softmax and cross-entropy (kernels/softmax.h), along the middle axis
// of [outer, dim, inner]; cross-entropy over logits [N, K] (one row per sample):
//   softmax:     y = exp(x - m) / s,  m = max x, s = sum exp(x - m)
//   log_softmax: y = (x - m) - log s
//   backward:    gx = y * (gy - sum(gy * y))      (softmax)
//                gx = gy - exp(y) * sum(gy)       (log_softmax)
//   cross_entropy: loss = mean_n (log s_n + m_n - z_n[t_n]); gz = g * (prob - onehot(t)) / N
// Memory-bound.
// The CPU's formulas: max-subtracted, sums in double, the exponential in the tensor's
// type (expf for float, within 2 ulp like the CPU's float rows; exp for double). Float
// rows apply 1 / s, log s and the backward's sums in float, each double split into two
// floats (RowScalar): the double formula's float, but for rare last-bit differences.
// inner == 1: rows up to 1024 long get a warp each at a time and live in its registers
// between passes (lane l holds elements l, l + 32, ..., loaded all at once), so each
// element is read from memory once and written once; the grid holds no more warps than
// the device runs at once, and each warp loads its next row while it computes the
// current one (warp_rows). Longer rows get a block each and reread the row from cache.
// Reductions are warp shuffles. inner > 1: one thread per (o, i) column, strided by
// inner, which keeps neighbouring threads on neighbouring addresses.
// Deterministic: no atomics, the batch mean of cross-entropy is a fixed-order block
// reduction of per-row losses.
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/host_threads.h"
#include "kernels/cuda/warp.cuh"
#include "kernels/cuda_runtime.h"
#include "kernels/softmax.h"

namespace kernels {
namespace {

using cuda::max_of;
using cuda::warp_max;
using cuda::warp_sum;
using cuda::WarpGroup;

constexpr int kThreads = 256;          // 1-D blocks: a multiple of 32, at most 1024
constexpr int kMeanThreads = 1024;     // the single block that averages per-row losses
constexpr int64_t kWarpRowMax = 1024;  // rows up to this long get one warp each

// The threads that share one row, and how they combine their values. Every member gets
// the combined value.
struct ThreadGroup {  // a single thread
  __host__ __device__ __forceinline__ int64_t rank() const { return 0; }
  __host__ __device__ __forceinline__ int64_t size() const { return 1; }
  template <typename A> __host__ __device__ __forceinline__ A sum(A v) const { return v; }
  template <typename A> __host__ __device__ __forceinline__ A max(A v) const { return v; }
};

struct BlockGroup {  // a whole 1-D block; smem holds 32 doubles (float and double fit)
  double* smem;
  __device__ __forceinline__ int64_t rank() const { return threadIdx.x; }
  __device__ __forceinline__ int64_t size() const { return blockDim.x; }
  template <typename A> __device__ __forceinline__ A sum(A v) const {
    v = warp_sum(v);
    v = gather(v, A(0));
    return warp_sum(v);
  }
  template <typename A> __device__ __forceinline__ A max(A v) const {
    v = warp_max(v);
    v = gather(v, -std::numeric_limits<A>::infinity());
    return warp_max(v);
  }
  // Each warp's value to smem; lane l of every warp then reads warp l's value. The
  // leading barrier keeps a previous reduction's readers ahead of these writes.
  template <typename A> __device__ __forceinline__ A gather(A v, A identity) const {
    const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
    __syncthreads();
    if (lane == 0) smem[warp] = static_cast<double>(v);
    __syncthreads();
    return lane < static_cast<int>(blockDim.x >> 5) ? static_cast<A>(smem[lane]) : identity;
  }
};

// A double that a whole row shares (1 / s, log s, a gradient's sum d), applied to each
// element in T. On the GPU a conversion to or from double runs at an eighth of the FP32
// rate (16 a clock on a multiprocessor), and the formulas in double took three an element
// forward and four or five backward. A float row carries d as two floats as well, hi =
// float(d) and lo = float(d - hi): a product e * (hi + lo) is one fused multiply-add; a
// difference g - hi (or g - e * hi) is split into its float and its exact remainder
// (two_sum), which then takes lo. Each result is the double formula's rounded to float,
// unless that formula's result lies within about 2^-48 of its terms' magnitude of a
// point halfway between two floats, where the two may round apart by an ulp
// (CudaKernelsOnHost.SoftmaxFloatRowsWithinAnUlpOfDouble). Log-softmax's forward, a -
// log s, takes some ten instructions an element this way against 3 in double (two of them
// conversions), yet it ran faster on an H100: 65536 x 1000 in 213-214 us against 217-218
// (Nsight Compute: DRAM at 79.8% of its peak against 78.4%). A double row uses d.
template <typename T> struct RowScalar;

// a + b = sum + err exactly, sum the float nearest (Knuth's TwoSum: no order of magnitude
// assumed, no multiplication to fuse).
__host__ __device__ __forceinline__ float two_sum(float a, float b, float& err) {
  const float sum = a + b, bb = sum - a;
  err = (a - (sum - bb)) + (b - bb);
  return sum;
}

// a * b rounded, never fused into an addition that uses it (p in minus_times must be the
// product that its remainder completes).
__host__ __device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

template <> struct RowScalar<float> {
  float hi, lo;
  // lo = 0 where hi is infinite or NaN (d beyond float's range, or not finite), so that
  // a result overflows as the double formula's does rather than turn to NaN.
  __host__ __device__ explicit RowScalar(double v)
      : hi(static_cast<float>(v)), lo(finite(hi) ? static_cast<float>(v - static_cast<double>(hi)) : 0.0f) {}
  __host__ __device__ float times(float a) const { return fmaf(a, hi, a * lo); }  // a * d
  // An infinite or NaN difference t (a log-probability of -inf, a gradient of inf) is the
  // result as it stands: its remainder would be NaN. Measured and left out: Fast2Sum in
  // place of two_sum where a <= 0 <= hi (log-softmax's forward), two operations fewer an
  // element; 208-210 us against 210 on 65536 x 1000 on an H100, within the noise.
  __host__ __device__ float from(float a) const {  // a - d
    float err;
    const float t = two_sum(a, -hi, err);
    return finite(t) ? t + (err - lo) : t;
  }
  __host__ __device__ float times_from(float w, float a) const {  // w * (a - d)
    float err;
    const float t = two_sum(a, -hi, err);
    return finite(t) ? fmaf(w, t, w * (err - lo)) : w * t;
  }
  __host__ __device__ float minus_times(float g, float e) const {  // g - e * d
    const float p = mul_rn(e, hi), p_err = fmaf(e, hi, -p);     // e * hi = p + p_err exactly
    float err;
    const float t = two_sum(g, -p, err);
    return finite(t) ? t + ((err - p_err) - e * lo) : t;
  }
  static __host__ __device__ bool finite(float v) { return fabsf(v) <= std::numeric_limits<float>::max(); }
};
template <> struct RowScalar<double> {
  double d;
  __host__ __device__ explicit RowScalar(double v) : d(v) {}
  __host__ __device__ double times(double a) const { return a * d; }
  __host__ __device__ double from(double a) const { return a - d; }
  __host__ __device__ double times_from(double w, double a) const { return w * (a - d); }
  __host__ __device__ double minus_times(double g, double e) const { return g - e * d; }
};

// e^v in T: expf for float (within 2 ulp, as the CPU's float rows), exp for double.
__host__ __device__ __forceinline__ float exp_t(float v) { return expf(v); }
__host__ __device__ __forceinline__ double exp_t(double v) { return exp(v); }
// The same, widened to double for the row's sum.
template <typename T> __host__ __device__ __forceinline__ double exp_wide(T v) { return static_cast<double>(exp_t(v)); }

struct RowStats {
  double m;  // the row's maximum (in T, widened)
  double s;  // sum of exp(x - m)
};

// softmax (log = false) or log_softmax of the row x[d * stride], d < dim, into y.
#pragma nv_exec_check_disable
template <typename T, typename G>
__host__ __device__ RowStats softmax_row(const T* x, T* y, int64_t dim, int64_t stride, bool log, const G& g) {
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t d = g.rank(); d < dim; d += g.size()) m = max_of(m, x[d * stride]);
  m = g.max(m);
  // softmax keeps e^(x - m) in y from the sum pass, and the last pass scales it: one
  // exponential per element. Each thread rereads only what it wrote itself.
  double s = 0;
  for (int64_t d = g.rank(); d < dim; d += g.size()) {
    const double e = exp_wide(x[d * stride] - m);
    s += e;
    if (!log) y[d * stride] = static_cast<T>(e);
  }
  s = g.sum(s);
  if (log) {
    const RowScalar<T> lse(::log(s));
    for (int64_t d = g.rank(); d < dim; d += g.size()) y[d * stride] = lse.from(x[d * stride] - m);
  } else {
    const RowScalar<T> inv(1.0 / s);
    for (int64_t d = g.rank(); d < dim; d += g.size()) y[d * stride] = inv.times(y[d * stride]);
  }
  return {static_cast<double>(m), s};
}

#pragma nv_exec_check_disable
template <typename T, typename G>
__host__ __device__ void softmax_backward_row(const T* gy, const T* y, T* gx, int64_t dim, int64_t stride,
                                              bool log, const G& g) {
  double s = 0;
  if (log) {
    for (int64_t d = g.rank(); d < dim; d += g.size()) s += static_cast<double>(gy[d * stride]);
    const RowScalar<T> sum(g.sum(s));
    for (int64_t d = g.rank(); d < dim; d += g.size()) {
      const int64_t k = d * stride;
      gx[k] = sum.minus_times(gy[k], exp_t(y[k]));
    }
  } else {
    for (int64_t d = g.rank(); d < dim; d += g.size())
      s += static_cast<double>(gy[d * stride]) * static_cast<double>(y[d * stride]);
    const RowScalar<T> sum(g.sum(s));
    for (int64_t d = g.rank(); d < dim; d += g.size()) {
      const int64_t k = d * stride;
      gx[k] = sum.times_from(y[k], gy[k]);
    }
  }
}

// The same rows held in registers: a warp per row of up to 32 * P elements, lane l
// holding elements l, l + 32, ... (the assignment of the loops above, so the same sums
// in the same order). A row is loaded into a lane's registers (RowRegs, or RowPairRegs
// for the backward's two inputs) by load_*, all its loads issued before the first is
// used, and finished from them by *_in_regs: so a warp can issue its next row's loads
// before it computes the current one (warp_rows). G is WarpGroup on the device,
// HostWarp (below) when the code runs on the host.
template <int P, typename T> struct RowRegs {
  T v[P];
};
template <int P, typename T> struct RowPairRegs {
  T g[P], w[P];
};

template <int P, typename T>
__host__ __device__ __forceinline__ void load_row(const T* p, int dim, int lane, T fill, T (&v)[P]) {
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int d = lane + 32 * j;
    v[j] = d < dim ? p[d] : fill;
  }
}

// Float rows whose length is a multiple of 4, 16-byte aligned, in registers a float4 at a
// time (Vec4): register j of lane l holds element 128 (j / 4) + 4 l + j % 4, instead of
// l + 32 j. A quarter of the load and store instructions; the sums take the elements in
// another order. Only where P is a multiple of 4 (rows longer than 64). On an H100,
// 65536 x 1000 (three passes alternating with scalar loads): softmax 211-213 -> 201-202 us
// (0.85 -> 0.89-0.90 of the copy bandwidth), log-softmax 215-217 -> 210 us (0.83-0.84 ->
// 0.86-0.87), at 127 registers against 93, still two blocks a multiprocessor.
template <bool Vec4, int P> constexpr bool vec4_rows() { return Vec4 && P % 4 == 0; }
template <bool Vec4, int P> __host__ __device__ __forceinline__ int row_index(int lane, int j) {
  return vec4_rows<Vec4, P>() ? 128 * (j / 4) + 4 * lane + (j & 3) : lane + 32 * j;
}
template <bool Vec4, int P, typename T>
__host__ __device__ __forceinline__ void load_row_as(const T* p, int dim, int lane, T fill, T (&v)[P]) {
  if constexpr (vec4_rows<Vec4, P>()) {  // T is float (SoftmaxForwardRow)
#pragma unroll
    for (int k = 0; k < P / 4; ++k) {
      const int d = 128 * k + 4 * lane;  // d < dim: all four (dim a multiple of 4)
      const float4 q = d < dim ? *reinterpret_cast<const float4*>(p + d) : make_float4(fill, fill, fill, fill);
      v[4 * k] = q.x;
      v[4 * k + 1] = q.y;
      v[4 * k + 2] = q.z;
      v[4 * k + 3] = q.w;
    }
  } else {
    load_row<P>(p, dim, lane, fill, v);
  }
}

// softmax or log_softmax of a loaded row (-inf past its end) into y.
#pragma nv_exec_check_disable
template <int P, bool Vec4 = false, typename T, typename G>
__host__ __device__ RowStats softmax_row_in_regs(RowRegs<P, T>& row, T* y, int dim, bool log, const G& g) {
  const int lane = static_cast<int>(g.rank());
  T (&v)[P] = row.v;
  T m = -std::numeric_limits<T>::infinity();  // the fill never wins max_of
#pragma unroll
  for (int j = 0; j < P; ++j) m = max_of(m, v[j]);
  m = g.max(m);
  // The sum is in double, a conversion an element. Summing a float row's share in float
  // with each addition's error gathered in a second float (two_sum) instead ran slower
  // on an H100: 65536 x 1000 softmax in 215-216 us against 211-213, log-softmax 218
  // against 215.
  // v keeps v - m for log-softmax, e for softmax.
  double s = 0;
#pragma unroll
  for (int j = 0; j < P; ++j)
    if (row_index<Vec4, P>(lane, j) < dim) {
      const T a = v[j] - m;
      const double e = exp_wide(a);
      s += e;
      v[j] = log ? a : static_cast<T>(e);  // exact: e is a T widened
    }
  s = g.sum(s);
  const RowScalar<T> k(log ? ::log(s) : 1.0 / s);  // log s, or 1 / s
#pragma unroll
  for (int j = 0; j < P; ++j) v[j] = log ? k.from(v[j]) : k.times(v[j]);
  if constexpr (vec4_rows<Vec4, P>()) {
#pragma unroll
    for (int q = 0; q < P / 4; ++q) {
      const int d = 128 * q + 4 * lane;
      if (d < dim) *reinterpret_cast<float4*>(y + d) = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int d = row_index<Vec4, P>(lane, j);
      if (d < dim) y[d] = v[j];
    }
  }
  return {static_cast<double>(m), s};
}

// The backward of a loaded row: g the output gradient, w the output (0 past its end).
#pragma nv_exec_check_disable
template <int P, typename T, typename G>
__host__ __device__ void softmax_backward_row_in_regs(const RowPairRegs<P, T>& row, T* gx, int dim, bool log,
                                                      const G& group) {
  const int lane = static_cast<int>(group.rank());
  const T (&g)[P] = row.g;
  const T (&w)[P] = row.w;
  double s = 0;
#pragma unroll
  for (int j = 0; j < P; ++j)
    if (lane + 32 * j < dim)
      s += log ? static_cast<double>(g[j]) : static_cast<double>(g[j]) * static_cast<double>(w[j]);
  const RowScalar<T> sum(group.sum(s));
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int d = lane + 32 * j;
    if (d < dim) gx[d] = log ? sum.minus_times(g[j], exp_t(w[j])) : sum.times_from(w[j], g[j]);
  }
}

// Row functors for the row kernels: f(row, group) for a block per row; for a warp per
// row in registers, f.load<P>(row, lane, regs) and f.finish<P>(row, regs, group), and
// f.prefetch<P>(), whether a warp holds two rows at once (its next one's loads in flight
// while it computes the current one) or one.
template <typename T, bool Vec4 = false> struct SoftmaxForwardRow {
  static_assert(!Vec4 || std::is_same_v<T, float>, "float4 rows are float rows");
  static constexpr int kMinBlocks32 = sizeof(T) == 4 ? 2 : 1;
  template <int P> using Regs = RowRegs<P, T>;
  template <int P> static constexpr bool prefetch() { return true; }
  const T* x;
  T* y;
  int64_t dim;
  bool log;
#pragma nv_exec_check_disable
  template <typename G> __host__ __device__ void operator()(int64_t r, const G& g) const {
    softmax_row(x + r * dim, y + r * dim, dim, 1, log, g);
  }
  template <int P> __host__ __device__ void load(int64_t r, int lane, Regs<P>& v) const {
    load_row_as<Vec4, P>(x + r * dim, static_cast<int>(dim), lane, -std::numeric_limits<T>::infinity(), v.v);
  }
#pragma nv_exec_check_disable
  template <int P, typename G> __host__ __device__ void finish(int64_t r, Regs<P>& v, const G& g) const {
    softmax_row_in_regs<P, Vec4>(v, y + r * dim, static_cast<int>(dim), log, g);
  }
};

template <typename T> struct SoftmaxBackwardRow {
  static constexpr int kMinBlocks32 = sizeof(T) == 4 ? 2 : 1;
  template <int P> using Regs = RowPairRegs<P, T>;
  // Two rows of gradient and output at 32 a lane take 220 registers, one block a
  // multiprocessor: on an H200 the log-softmax backward of 8192 x 1000 went from 35.0
  // to 39.7 us. Those rows load one at a time, two blocks resident.
  template <int P> static constexpr bool prefetch() { return P <= 16; }
  const T* gy;
  const T* y;
  T* gx;
  int64_t dim;
  bool log;
#pragma nv_exec_check_disable
  template <typename G> __host__ __device__ void operator()(int64_t r, const G& g) const {
    softmax_backward_row(gy + r * dim, y + r * dim, gx + r * dim, dim, 1, log, g);
  }
  template <int P> __host__ __device__ void load(int64_t r, int lane, Regs<P>& v) const {
    load_row<P>(gy + r * dim, static_cast<int>(dim), lane, T(0), v.g);
    load_row<P>(y + r * dim, static_cast<int>(dim), lane, T(0), v.w);
  }
#pragma nv_exec_check_disable
  template <int P, typename G> __host__ __device__ void finish(int64_t r, Regs<P>& v, const G& g) const {
    softmax_backward_row_in_regs<P>(v, gx + r * dim, static_cast<int>(dim), log, g);
  }
};

// prob = softmax of row r; row_loss[r] = log s + m - z[t]. A target outside [0, K) (the
// engine op rejects those on the host) is clamped rather than read out of bounds.
template <typename T> struct CrossEntropyRow {
  static constexpr int kMinBlocks32 = sizeof(T) == 4 ? 2 : 1;
  template <int P> using Regs = RowRegs<P, T>;
  template <int P> static constexpr bool prefetch() { return true; }
  const T* z;
  const int64_t* target;
  T* prob;
  double* row_loss;
  int64_t K;
  template <typename G> __device__ void operator()(int64_t r, const G& g) const {
    const RowStats st = softmax_row(z + r * K, prob + r * K, K, 1, false, g);
    if (g.rank() == 0) finish_loss(r, st);
  }
  template <int P> __device__ void load(int64_t r, int lane, Regs<P>& v) const {
    load_row<P>(z + r * K, static_cast<int>(K), lane, -std::numeric_limits<T>::infinity(), v.v);
  }
  template <int P, typename G> __device__ void finish(int64_t r, Regs<P>& v, const G& g) const {
    const RowStats st = softmax_row_in_regs<P>(v, prob + r * K, static_cast<int>(K), false, g);
    if (g.rank() == 0) finish_loss(r, st);
  }
  __device__ void finish_loss(int64_t r, const RowStats& st) const {
    int64_t t = target[r];
    t = t < 0 ? 0 : (t >= K ? K - 1 : t);
    row_loss[r] = ::log(st.s) + st.m - static_cast<double>(z[r * K + t]);
  }
};

// One warp's rows: first, first + step, ... below rows. With f.prefetch<P>(), the loads
// of each row are issued before the previous row is computed and stored, so the warp
// always has a row's loads in flight; without, a row is loaded, computed and stored in
// turn. A warp that took one row for the whole kernel loaded, reduced, then stored, with
// no loads in flight while it computed (Nsight Compute, H100, softmax of 8192 x 1000:
// no eligible warp in 75% of scheduler cycles). With the grid held to the blocks the
// device holds at once (warp_kernel_blocks), each warp takes several rows: on an H200,
// softmax of 8192 x 1000 went from 41.4 to 25.9 us (0.39 to 0.63 of the copy bandwidth).
#pragma nv_exec_check_disable
template <int P, typename F, typename G>
__host__ __device__ __forceinline__ void warp_rows(const F& f, int64_t first, int64_t step, int64_t rows,
                                                   const G& g) {
  const int lane = static_cast<int>(g.rank());
  using Regs = typename F::template Regs<P>;
  if constexpr (F::template prefetch<P>()) {
    if (first >= rows) return;
    Regs cur, next;
    f.template load<P>(first, lane, cur);
    for (int64_t r = first;; r += step) {
      const bool more = r + step < rows;
      if (more) f.template load<P>(r + step, lane, next);
      f.template finish<P>(r, cur, g);
      if (!more) break;
      cur = next;
    }
  } else {
    for (int64_t r = first; r < rows; r += step) {
      Regs cur;
      f.template load<P>(r, lane, cur);
      f.template finish<P>(r, cur, g);
    }
  }
}

// At P = 32 (rows of 513 to 1024: a classifier's 1000 classes) a float row takes 32
// registers a lane, and one prefetched beside it 32 more. Each row functor's
// kMinBlocks32 asks for two blocks of kThreads resident per multiprocessor (at most 128
// registers), which the float rows fit without spills (ptxas -v for sm_90: forward 108,
// backward 118, cross-entropy 120; the compiler left alone gives cross-entropy 144, one
// block; the backward with its next row prefetched would spill 284 bytes). Asking for
// 3 spilled 220 bytes a thread in the forward: on an H200, 8192 x 1000 in 34.2 us
// against 25.5. Double keeps its count.
template <int P, typename F>
__global__ void __launch_bounds__(kThreads, P >= 32 ? F::kMinBlocks32 : 1) rows_warp_kernel(int64_t rows, F f) {
  const int64_t warps = blockDim.x >> 5;
  // The row is the same for all lanes of a warp, so every lane takes part in the shuffles.
  warp_rows<P>(f, blockIdx.x * warps + (threadIdx.x >> 5), gridDim.x * warps, rows,
               WarpGroup{static_cast<int>(threadIdx.x & 31)});
}

template <typename F> __global__ void rows_block_kernel(int64_t rows, F f) {
  __shared__ double smem[32];
  const BlockGroup g{smem};
  // r is the same for the whole block, so every thread reaches the barriers.
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) f(r, g);
}

// f(std::integral_constant<int, P>) for the register width of rows of length dim (at
// most kWarpRowMax): P the least power of two with 32 * P >= dim, a whole row in
// registers with no more than twice the registers it needs.
template <typename F> void with_row_width(int64_t dim, F f) {
  static_assert(kWarpRowMax == 32 * 32, "the largest register row is 32 per lane");
  if (dim <= 32) f(std::integral_constant<int, 1>{});
  else if (dim <= 64) f(std::integral_constant<int, 2>{});
  else if (dim <= 128) f(std::integral_constant<int, 4>{});
  else if (dim <= 256) f(std::integral_constant<int, 8>{});
  else if (dim <= 512) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

// Blocks of kThreads for the warp kernel over `rows` rows: a warp a row, but no more
// blocks than the device holds at once, so that each warp takes several rows and its
// prefetch has a next row to load.
// The count is asked of the runtime once per kernel (P, F), thread and device.
template <int P, typename F> unsigned warp_kernel_blocks(int64_t rows) {
  const unsigned want = cuda::grid_for(rows * 32, kThreads);
  thread_local int known_device = -1;
  thread_local int64_t resident = 0;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  if (device != known_device) {
    int sms = 0, per_sm = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, rows_warp_kernel<P, F>, kThreads, 0));
    resident = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
    known_device = device;
  }
  // Measured and left out (H100, 65536 x 1000 rows, 264 resident blocks): as many blocks
  // as give every warp the same number of rows (256 here), so that no warp is left
  // computing a last row alone. Slower, softmax 201-204 -> 207 us and log-softmax
  // 208-210 -> 213-215; 256 blocks leave 8 of the 132 multiprocessors one block, not two.
  return resident < want ? static_cast<unsigned>(resident) : want;
}

// Every row r of length dim: warp_rows with a warp per row when rows are short; f(r,
// block group) with a block per row otherwise.
template <typename F> void for_each_row(int64_t rows, int64_t dim, const F& f) {
  if (rows <= 0) return;
  if (dim <= kWarpRowMax)
    with_row_width(dim, [&](auto width) {
      constexpr int P = decltype(width)::value;
      const unsigned blocks = warp_kernel_blocks<P, F>(rows);
      rows_warp_kernel<P, F><<<blocks, kThreads, 0, cuda::stream()>>>(rows, f);
    });
  else
    rows_block_kernel<F><<<cuda::grid_for(rows, 1), kThreads, 0, cuda::stream()>>>(rows, f);
  CUDA_CHECK_LAUNCH();
}

// ---- the kernels' code on the host -------------------------------------------------------

// Rows on 32 host threads (cuda::HostWarp) get what the device computes, up to expf,
// whose host and device versions may differ in the last bit; so do rows on kThreads host
// threads (HostBlockGroup) and columns on one (ThreadGroup).
using cuda::HostBarrier;
using cuda::HostWarp;
using cuda::on_host_threads;
using cuda::on_host_warp;

// BlockGroup on host threads: thread tid of `threads` (a multiple of 32). Each warp's
// shuffles are a HostWarp's (the same butterfly order); the gather through smem is
// BlockGroup's.
class HostBlockGroup {
 public:
  struct Shared {
    explicit Shared(int threads) : warps(new HostWarp::Shared[threads / 32]), barrier(threads) {}
    std::unique_ptr<HostWarp::Shared[]> warps;
    double smem[32];
    HostBarrier barrier;
  };
  HostBlockGroup(int tid, int threads, Shared* shared)
      : warp_(tid & 31, &shared->warps[tid >> 5]), tid_(tid), threads_(threads), sh_(shared) {}
  int64_t rank() const { return tid_; }
  int64_t size() const { return threads_; }
  template <typename A> A sum(A v) const { return warp_.sum(gather(warp_.sum(v), A(0))); }
  template <typename A> A max(A v) const {
    return warp_.max(gather(warp_.max(v), -std::numeric_limits<A>::infinity()));
  }

 private:
  template <typename A> A gather(A v, A identity) const {
    const int lane = tid_ & 31, warp = tid_ >> 5;
    sh_->barrier.wait();
    if (lane == 0) sh_->smem[warp] = static_cast<double>(v);
    sh_->barrier.wait();
    return lane < threads_ / 32 ? static_cast<A>(sh_->smem[lane]) : identity;
  }
  HostWarp warp_;
  int tid_, threads_;
  Shared* sh_;
};

void check_sizes(const char* what, int64_t outer, int64_t dim, int64_t inner, int64_t warps) {
  if (outer < 0 || dim < 0 || inner < 0)
    throw std::invalid_argument(std::string(what) + ": negative size [" + std::to_string(outer) + ", " +
                                std::to_string(dim) + ", " + std::to_string(inner) + "]");
  if (warps < 0) throw std::invalid_argument(std::string(what) + ": negative warp count");
}

// One block: out[0] = sum(v) / n, summed in a fixed order.
template <typename T> __global__ void mean_kernel(const double* v, int64_t n, T* out) {
  __shared__ double smem[32];
  const BlockGroup g{smem};
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += v[i];
  acc = g.sum(acc);
  if (threadIdx.x == 0) out[0] = static_cast<T>(acc / static_cast<double>(n));
}

// Whether the forward's rows go a float4 at a time: float rows longer than 64 (P a
// multiple of 4) and at most kWarpRowMax, of a multiple of 4, x and y 16-byte aligned.
bool vec4_forward(const float* x, const float* y, int64_t dim) {
  return dim > 64 && dim <= kWarpRowMax && dim % 4 == 0 &&
         reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && reinterpret_cast<std::uintptr_t>(y) % 16 == 0;
}

// f(the forward's row functor for x -> y): float4 rows where vec4_forward allows them.
template <typename T, typename F> void with_forward_rows(const T* x, T* y, int64_t dim, bool log, const F& f) {
  if constexpr (std::is_same_v<T, float>)
    if (vec4_forward(x, y, dim)) return f(SoftmaxForwardRow<T, true>{x, y, dim, log});
  f(SoftmaxForwardRow<T>{x, y, dim, log});
}

}  // namespace

template <typename T>
void softmax_forward_cuda(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log) {
  if (dim <= 0) return;  // nothing to write
  if (inner == 1) {
    with_forward_rows(x, y, dim, log, [&](const auto& row) { for_each_row(outer, dim, row); });
    return;
  }
  cuda::parallel_for(outer * inner, [=] __device__(int64_t k) {
    const int64_t o = k / inner, i = k - o * inner;
    const int64_t base = o * dim * inner + i;
    softmax_row(x + base, y + base, dim, inner, log, ThreadGroup{});
  });
}

template <typename T>
void softmax_backward_cuda(const T* gy, const T* y, T* gx, int64_t outer, int64_t dim,
                           int64_t inner, bool log) {
  if (dim <= 0) return;
  if (inner == 1) {
    for_each_row(outer, dim, SoftmaxBackwardRow<T>{gy, y, gx, dim, log});
    return;
  }
  cuda::parallel_for(outer * inner, [=] __device__(int64_t k) {
    const int64_t o = k / inner, i = k - o * inner;
    const int64_t base = o * dim * inner + i;
    softmax_backward_row(gy + base, y + base, gx + base, dim, inner, log, ThreadGroup{});
  });
}

template <typename T>
void cross_entropy_forward_cuda(const T* z, const int64_t* target, T* prob, T* loss, int64_t N,
                                int64_t K) {
  if (N <= 0 || K <= 0) return;  // the engine op rejects empty logits
  double* row_loss = static_cast<double*>(cuda::malloc_device(static_cast<std::size_t>(N) * sizeof(double)));
  try {
    for_each_row(N, K, CrossEntropyRow<T>{z, target, prob, row_loss, K});
    mean_kernel<T><<<1, kMeanThreads, 0, cuda::stream()>>>(row_loss, N, loss);
    CUDA_CHECK_LAUNCH();
  } catch (...) {
    cuda::free_device(row_loss);
    throw;
  }
  // Freed while the kernels may still run: the caching allocator hands the block out
  // again only to work queued after them on the same stream.
  cuda::free_device(row_loss);
}

template <typename T>
void cross_entropy_backward_cuda(const T* prob, const int64_t* target, const T* g, T* gz,
                                 int64_t N, int64_t K) {
  if (N <= 0 || K <= 0) return;
  cuda::parallel_for(N * K, [=] __device__(int64_t idx) {
    const int64_t n = idx / K, k = idx - n * K;
    const T scale = g[0] / static_cast<T>(N);
    gz[idx] = scale * (prob[idx] - (k == target[n] ? T(1) : T(0)));
  });
}

// for_each_row's rows on the host: rows of at most kWarpRowMax on `warps` warps (one a
// row when 0), warp w taking rows w, w + warps, ... as the warp kernel's grid-stride loop
// does, the warps one after another; longer rows on one block, a row after another.
template <typename F> void rows_on_host(const F& f, int64_t rows, int64_t dim, int64_t warps) {
  if (rows == 0 || dim == 0) return;
  if (dim <= kWarpRowMax) {
    const int64_t step = warps == 0 ? rows : warps;
    for (int64_t w = 0; w < step; ++w)
      with_row_width(dim, [&](auto width) {
        constexpr int P = decltype(width)::value;
        on_host_warp([&](const HostWarp& g) { warp_rows<P>(f, w, step, rows, g); });
      });
    return;
  }
  HostBlockGroup::Shared shared(kThreads);
  on_host_threads(kThreads, [&](int tid) {
    const HostBlockGroup g(tid, kThreads, &shared);
    for (int64_t r = 0; r < rows; ++r) f(r, g);
  });
}

template <typename T>
void softmax_forward_cuda_on_host(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log,
                                  int64_t warps) {
  check_sizes("softmax_forward_cuda_on_host", outer, dim, inner, warps);
  if (inner == 1)
    return with_forward_rows(x, y, dim, log, [&](const auto& row) { rows_on_host(row, outer, dim, warps); });
  if (dim == 0) return;
  for (int64_t k = 0; k < outer * inner; ++k) {  // softmax_forward_cuda's columns
    const int64_t o = k / inner, i = k - o * inner, base = o * dim * inner + i;
    softmax_row(x + base, y + base, dim, inner, log, ThreadGroup{});
  }
}

template <typename T>
void softmax_backward_cuda_on_host(const T* gy, const T* y, T* gx, int64_t outer, int64_t dim, int64_t inner,
                                   bool log, int64_t warps) {
  check_sizes("softmax_backward_cuda_on_host", outer, dim, inner, warps);
  if (inner == 1) return rows_on_host(SoftmaxBackwardRow<T>{gy, y, gx, dim, log}, outer, dim, warps);
  if (dim == 0) return;
  for (int64_t k = 0; k < outer * inner; ++k) {
    const int64_t o = k / inner, i = k - o * inner, base = o * dim * inner + i;
    softmax_backward_row(gy + base, y + base, gx + base, dim, inner, log, ThreadGroup{});
  }
}

#define INSTANTIATE(T)                                                                           \
  template void softmax_forward_cuda_on_host<T>(const T*, T*, int64_t, int64_t, int64_t, bool, int64_t); \
  template void softmax_backward_cuda_on_host<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool, \
                                                 int64_t);                                               \
  template void softmax_forward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t, bool);          \
  template void softmax_backward_cuda<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool); \
  template void cross_entropy_forward_cuda<T>(const T*, const int64_t*, T*, T*, int64_t, int64_t); \
  template void cross_entropy_backward_cuda<T>(const T*, const int64_t*, const T*, T*, int64_t,   \
                                               int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
