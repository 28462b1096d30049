// CUDA softmax, log_softmax and cross-entropy (kernels/softmax.h), along the middle axis
// of [outer, dim, inner]; cross-entropy over logits [N, K] (one row per sample):
//   softmax:     y = exp(x - m) / s,  m = max x, s = sum exp(x - m)
//   log_softmax: y = (x - m) - log s
//   backward:    gx = y * (gy - sum(gy * y))      (softmax)
//                gx = gy - exp(y) * sum(gy)       (log_softmax)
//   cross_entropy: loss = mean_n (log s_n + m_n - z_n[t_n]); gz = g * (prob - onehot(t)) / N
// Memory-bound.
// The CPU's formulas: max-subtracted, sums in double, the exponential in the tensor's
// type (expf for float, within 2 ulp like the CPU's float rows; exp for double).
// inner == 1: rows up to 1024 long get one warp each and live in its registers between
// passes (lane l holds elements l, l + 32, ..., loaded all at once), so each element is
// read from memory once and written once; longer rows get a block each and reread the
// row from cache. Reductions are warp shuffles. inner > 1: one thread per (o, i) column,
// strided by inner, which keeps neighbouring threads on neighbouring addresses.
// Deterministic: no atomics, the batch mean of cross-entropy is a fixed-order block
// reduction of per-row losses.
#include <limits>
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
  __device__ __forceinline__ int64_t rank() const { return 0; }
  __device__ __forceinline__ int64_t size() const { return 1; }
  template <typename A> __device__ __forceinline__ A sum(A v) const { return v; }
  template <typename A> __device__ __forceinline__ A max(A v) const { return v; }
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

// e^v, widened to double: expf for float (within 2 ulp, as the CPU's float rows), exp
// for double.
__host__ __device__ __forceinline__ double exp_wide(float v) { return static_cast<double>(expf(v)); }
__host__ __device__ __forceinline__ double exp_wide(double v) { return exp(v); }

struct RowStats {
  double m;  // the row's maximum (in T, widened)
  double s;  // sum of exp(x - m)
};

// softmax (log = false) or log_softmax of the row x[d * stride], d < dim, into y.
template <typename T, typename G>
__device__ RowStats softmax_row(const T* x, T* y, int64_t dim, int64_t stride, bool log,
                                const G& g) {
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
    const double lse = ::log(s);
    for (int64_t d = g.rank(); d < dim; d += g.size())
      y[d * stride] = static_cast<T>(static_cast<double>(x[d * stride] - m) - lse);
  } else {
    const double inv = 1.0 / s;
    for (int64_t d = g.rank(); d < dim; d += g.size())
      y[d * stride] = static_cast<T>(static_cast<double>(y[d * stride]) * inv);
  }
  return {static_cast<double>(m), s};
}

template <typename T, typename G>
__device__ void softmax_backward_row(const T* gy, const T* y, T* gx, int64_t dim, int64_t stride,
                                     bool log, const G& g) {
  double s = 0;
  if (log) {
    for (int64_t d = g.rank(); d < dim; d += g.size()) s += static_cast<double>(gy[d * stride]);
    s = g.sum(s);
    for (int64_t d = g.rank(); d < dim; d += g.size()) {
      const int64_t k = d * stride;
      gx[k] = static_cast<T>(static_cast<double>(gy[k]) - exp_wide(y[k]) * s);
    }
  } else {
    for (int64_t d = g.rank(); d < dim; d += g.size())
      s += static_cast<double>(gy[d * stride]) * static_cast<double>(y[d * stride]);
    s = g.sum(s);
    for (int64_t d = g.rank(); d < dim; d += g.size()) {
      const int64_t k = d * stride;
      gx[k] = static_cast<T>(static_cast<double>(y[k]) * (static_cast<double>(gy[k]) - s));
    }
  }
}

// The same rows held in registers: a warp per row of up to 32 * P elements, lane l
// holding elements l, l + 32, ... (the assignment of the loops above, so the same sums
// in the same order and the same results bit for bit). Every load of a pass is issued
// before the first is used. G is WarpGroup on the device, HostWarp (below) when the code
// runs on the host.
template <int P, typename T>
__host__ __device__ __forceinline__ void load_row(const T* p, int dim, int lane, T fill, T (&v)[P]) {
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int d = lane + 32 * j;
    v[j] = d < dim ? p[d] : fill;
  }
}

#pragma nv_exec_check_disable
template <int P, typename T, typename G>
__host__ __device__ RowStats softmax_row_regs(const T* x, T* y, int dim, bool log, const G& g) {
  const int lane = static_cast<int>(g.rank());
  T v[P];
  load_row<P>(x, dim, lane, -std::numeric_limits<T>::infinity(), v);
  T m = -std::numeric_limits<T>::infinity();  // the fill never wins max_of
#pragma unroll
  for (int j = 0; j < P; ++j) m = max_of(m, v[j]);
  m = g.max(m);
  double s = 0;
#pragma unroll
  for (int j = 0; j < P; ++j)
    if (lane + 32 * j < dim) {
      const double e = exp_wide(v[j] - m);
      s += e;
      if (!log) v[j] = static_cast<T>(e);  // exact: e is a T widened
    }
  s = g.sum(s);
  const double lse = log ? ::log(s) : 0.0, inv = log ? 0.0 : 1.0 / s;
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int d = lane + 32 * j;
    if (d < dim)
      y[d] = static_cast<T>(log ? static_cast<double>(v[j] - m) - lse : static_cast<double>(v[j]) * inv);
  }
  return {static_cast<double>(m), s};
}

#pragma nv_exec_check_disable
template <int P, typename T, typename G>
__host__ __device__ void softmax_backward_row_regs(const T* gy, const T* y, T* gx, int dim, bool log,
                                                   const G& group) {
  const int lane = static_cast<int>(group.rank());
  T g[P], w[P];
  load_row<P>(gy, dim, lane, T(0), g);
  load_row<P>(y, dim, lane, T(0), w);
  double s = 0;
#pragma unroll
  for (int j = 0; j < P; ++j)
    if (lane + 32 * j < dim)
      s += log ? static_cast<double>(g[j]) : static_cast<double>(g[j]) * static_cast<double>(w[j]);
  s = group.sum(s);
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const int d = lane + 32 * j;
    if (d < dim)
      gx[d] = static_cast<T>(log ? static_cast<double>(g[j]) - exp_wide(w[j]) * s
                                 : static_cast<double>(w[j]) * (static_cast<double>(g[j]) - s));
  }
}

// Row functors for the row kernels: f(row, group) for a block per row, f.regs<P>(row,
// lane) for a warp per row in registers.
template <typename T> struct SoftmaxForwardRow {
  static constexpr int kMinBlocks32 = sizeof(T) == 4 ? 4 : 1;
  const T* x;
  T* y;
  int64_t dim;
  bool log;
  template <typename G> __device__ void operator()(int64_t r, const G& g) const {
    softmax_row(x + r * dim, y + r * dim, dim, 1, log, g);
  }
  template <int P> __device__ void regs(int64_t r, int lane) const {
    softmax_row_regs<P>(x + r * dim, y + r * dim, static_cast<int>(dim), log, WarpGroup{lane});
  }
};

template <typename T> struct SoftmaxBackwardRow {
  static constexpr int kMinBlocks32 = sizeof(T) == 4 ? 2 : 1;
  const T* gy;
  const T* y;
  T* gx;
  int64_t dim;
  bool log;
  template <typename G> __device__ void operator()(int64_t r, const G& g) const {
    softmax_backward_row(gy + r * dim, y + r * dim, gx + r * dim, dim, 1, log, g);
  }
  template <int P> __device__ void regs(int64_t r, int lane) const {
    softmax_backward_row_regs<P>(gy + r * dim, y + r * dim, gx + r * dim, static_cast<int>(dim), log, WarpGroup{lane});
  }
};

// prob = softmax of row r; row_loss[r] = log s + m - z[t]. A target outside [0, K) (the
// engine op rejects those on the host) is clamped rather than read out of bounds.
template <typename T> struct CrossEntropyRow {
  static constexpr int kMinBlocks32 = sizeof(T) == 4 ? 4 : 1;
  const T* z;
  const int64_t* target;
  T* prob;
  double* row_loss;
  int64_t K;
  template <typename G> __device__ void operator()(int64_t r, const G& g) const {
    const RowStats st = softmax_row(z + r * K, prob + r * K, K, 1, false, g);
    if (g.rank() == 0) finish(r, st);
  }
  template <int P> __device__ void regs(int64_t r, int lane) const {
    const RowStats st = softmax_row_regs<P>(z + r * K, prob + r * K, static_cast<int>(K), false, WarpGroup{lane});
    if (lane == 0) finish(r, st);
  }
  __device__ void finish(int64_t r, const RowStats& st) const {
    int64_t t = target[r];
    t = t < 0 ? 0 : (t >= K ? K - 1 : t);
    row_loss[r] = ::log(st.s) + st.m - static_cast<double>(z[r * K + t]);
  }
};

// At P = 32 (rows of 513 to 1024: a classifier's 1000 classes) a float row takes 32
// registers a lane (64 backward, with its gradient), so without a bound the compiler's
// register count allows only 3 blocks of 256 per multiprocessor forward (80 registers)
// and 1 backward (148): 37.5% and 12.5% occupancy, the loads of too few rows in flight
// (Nsight Compute on an H100: 75% of issue slots with no eligible warp). Each row
// functor's kMinBlocks32 asks for more blocks where the registers still fit without
// spills (ptxas -v: float forward 64, backward 128 registers; double keeps its count).
// On the H100, 8192 x 1000: softmax forward 48.9 -> 44.6 us, log-softmax backward
// 55.7 -> 43.2 us.
template <int P, typename F>
__global__ void __launch_bounds__(kThreads, P >= 32 ? F::kMinBlocks32 : 1) rows_warp_kernel(int64_t rows, F f) {
  const int64_t warps = blockDim.x >> 5;
  const int lane = static_cast<int>(threadIdx.x & 31);
  // r is the same for all lanes of a warp, so every lane takes part in the shuffles.
  for (int64_t r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += gridDim.x * warps)
    f.template regs<P>(r, lane);
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

// Every row r of length dim: f.regs<P>(r, lane) with a warp per row when rows are short;
// f(r, block group) with a block per row otherwise.
template <typename F> void for_each_row(int64_t rows, int64_t dim, const F& f) {
  if (rows <= 0) return;
  if (dim <= kWarpRowMax)
    with_row_width(dim, [&](auto width) {
      constexpr int P = decltype(width)::value;
      rows_warp_kernel<P, F><<<cuda::grid_for(rows * 32, kThreads), kThreads, 0, cuda::stream()>>>(rows, f);
    });
  else
    rows_block_kernel<F><<<cuda::grid_for(rows, 1), kThreads, 0, cuda::stream()>>>(rows, f);
  CUDA_CHECK_LAUNCH();
}

// ---- the warp code on the host ------------------------------------------------------------

// Rows on 32 host threads (cuda::HostWarp) get what the device computes, up to expf,
// whose host and device versions may differ in the last bit.
using cuda::HostWarp;
using cuda::on_host_warp;

void check_warp_rows(const char* what, int64_t dim) {
  if (dim < 1 || dim > kWarpRowMax)
    throw std::invalid_argument(std::string(what) + ": rows of 1 to " + std::to_string(kWarpRowMax) +
                                " elements only, got " + std::to_string(dim));
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

}  // namespace

template <typename T>
void softmax_forward_cuda(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner, bool log) {
  if (dim <= 0) return;  // nothing to write
  if (inner == 1) {
    for_each_row(outer, dim, SoftmaxForwardRow<T>{x, y, dim, log});
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

template <typename T>
void softmax_forward_cuda_on_host(const T* x, T* y, int64_t rows, int64_t dim, bool log) {
  check_warp_rows("softmax_forward_cuda_on_host", dim);
  for (int64_t r = 0; r < rows; ++r)
    with_row_width(dim, [&](auto width) {
      constexpr int P = decltype(width)::value;
      on_host_warp([&](const HostWarp& g) { softmax_row_regs<P>(x + r * dim, y + r * dim, int(dim), log, g); });
    });
}

template <typename T>
void softmax_backward_cuda_on_host(const T* gy, const T* y, T* gx, int64_t rows, int64_t dim, bool log) {
  check_warp_rows("softmax_backward_cuda_on_host", dim);
  for (int64_t r = 0; r < rows; ++r)
    with_row_width(dim, [&](auto width) {
      constexpr int P = decltype(width)::value;
      on_host_warp([&](const HostWarp& g) {
        softmax_backward_row_regs<P>(gy + r * dim, y + r * dim, gx + r * dim, int(dim), log, g);
      });
    });
}

#define INSTANTIATE(T)                                                                           \
  template void softmax_forward_cuda_on_host<T>(const T*, T*, int64_t, int64_t, bool);            \
  template void softmax_backward_cuda_on_host<T>(const T*, const T*, T*, int64_t, int64_t, bool); \
  template void softmax_forward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t, bool);          \
  template void softmax_backward_cuda<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool); \
  template void cross_entropy_forward_cuda<T>(const T*, const int64_t*, T*, T*, int64_t, int64_t); \
  template void cross_entropy_backward_cuda<T>(const T*, const int64_t*, const T*, T*, int64_t,   \
                                               int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
