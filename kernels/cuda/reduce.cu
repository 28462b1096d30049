// CUDA reductions (kernels/reduce.h) over a tensor viewed as [outer, dim, inner]:
//   sum_all:       y[0] = scale * sum_k x[k]
//   sum_dim:       y[o, i] = sum_d x[o, d, i]        abs_max_dim: y[o, i] = max_d |x[o, d, i]|
//   broadcast_dim: x[o, d, i] = scale * y[o, i]      add_bias:    y[o, c, i] += b[c]
//   bias_grad:     gb[c] = sum over o, i of gy[o, c, i]
// Memory-bound: every input element is read once. Sums accumulate in double (float
// inputs included, as on the CPU) and are deterministic: each block reduces a fixed
// slice with warp shuffles, and where one reduction is cut into pieces to fill the GPU
// the pieces are written to a scratch array and combined in a fixed order by a second
// kernel. The cut depends on the shape only, never on timing, and no atomics are used.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/common.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/warp.cuh"
#include "kernels/cuda_runtime.h"
#include "kernels/reduce.h"

namespace kernels {
namespace {

using cuda::kFullMask;
constexpr int kThreads = 256;             // 1-D blocks: a multiple of 32, at most 1024
constexpr int kFinishThreads = 1024;      // the single block that finishes sum_all
constexpr int64_t kWarpRowMax = 1024;     // rows up to this long get one warp each
constexpr int64_t kSumAllOneBlock = 8192; // sum_all of at most this many: one block
constexpr int64_t kTargetBlocks = 1024;   // enough blocks to fill an A100/H100
constexpr int kColLanes = 32, kColRows = 8;  // column tile: 32 consecutive i x 8 d-slices

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// How many pieces to cut reductions of `len` items into when only `base` blocks would
// run otherwise: enough to reach about kTargetBlocks, each piece at least `min_piece`
// long. A function of the shape only, so results do not vary from run to run.
int64_t pieces_for(int64_t base, int64_t len, int64_t min_piece) {
  if (base >= kTargetBlocks || len <= 0) return 1;
  return std::max<int64_t>(1, std::min(ceil_div(kTargetBlocks, base), len / min_piece));
}

// A piece length for `len` items in about `pieces` pieces, and the resulting count.
struct Cut {
  int64_t pieces, chunk;
};
Cut cut(int64_t len, int64_t pieces) {
  if (len <= 0 || pieces <= 1) return {1, len > 0 ? len : 0};
  const int64_t chunk = ceil_div(len, pieces);
  return {ceil_div(len, chunk), chunk};
}

// Device scratch from the engine's caching allocator. Freed as soon as the kernels that
// use it are queued: the allocator reuses blocks in stream order.
class Scratch {
 public:
  explicit Scratch(std::size_t bytes) : p_(bytes > 0 ? cuda::malloc_device(bytes) : nullptr) {}
  ~Scratch() { cuda::free_device(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename A> A* as() const { return static_cast<A*>(p_); }

 private:
  void* p_;
};

// ---- reduction operators: identity, per-element load, combine, result -------------

template <typename T> struct SumOp {
  using Acc = double;
  static __device__ __forceinline__ Acc init() { return 0.0; }
  static __device__ __forceinline__ Acc load(T v) { return static_cast<Acc>(v); }
  static __device__ __forceinline__ Acc combine(Acc a, Acc b) { return a + b; }
  static __device__ __forceinline__ T result(Acc a) { return static_cast<T>(a); }
};

// The CPU's m = v > m ? v : m from m = 0: NaN never wins, so the order of combination
// does not change the result.
template <typename T> struct AbsMaxOp {
  using Acc = T;
  static __device__ __forceinline__ Acc init() { return T(0); }
  static __device__ __forceinline__ Acc load(T v) { return fabs(v); }
  static __device__ __forceinline__ Acc combine(Acc m, Acc v) { return v > m ? v : m; }
  static __device__ __forceinline__ T result(Acc a) { return a; }
};

// Butterfly over the 32 lanes: every lane ends with the same total.
template <typename Op, typename A> __device__ __forceinline__ A warp_reduce(A v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = Op::combine(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Whole-block reduction of a 1-D block (blockDim.x a multiple of 32); every thread gets
// the total. smem holds 32 values; the leading barrier lets a caller reuse it in a loop.
template <typename Op, typename A> __device__ __forceinline__ A block_reduce(A v, A* smem) {
  const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
  const int warps = static_cast<int>(blockDim.x >> 5);
  v = warp_reduce<Op>(v);
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < warps ? smem[lane] : Op::init();
  return warp_reduce<Op>(v);
}

// ---- sum_all ----------------------------------------------------------------------

// Blocks of sum_all's first kernel, for n > kSumAllOneBlock: about 16 elements a thread.
int64_t sum_all_blocks(int64_t n) { return std::min<int64_t>(ceil_div(n, kThreads * 16), kTargetBlocks); }

// Thread `first` of `stride` threads: the double sum of x[first], x[first + stride], ....
// vec (float only, x 16-byte aligned): four elements at a time (the float4s first,
// first + stride, ..., four of them loaded before the first is added), then its share of
// the last n % 4 one at a time.
template <typename T>
ENGINE_HD double thread_sum(const T* x, int64_t n, bool vec, int64_t first, int64_t stride) {
  double acc = 0;
  int64_t done = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (vec) {
      const float4* x4 = reinterpret_cast<const float4*>(x);
      cuda::strided_unrolled<4>(
          first, stride, n >> 2, [&](int64_t i) { return x4[i]; },
          [&](int64_t, const float4& v) {
            acc += static_cast<double>(v.x);
            acc += static_cast<double>(v.y);
            acc += static_cast<double>(v.z);
            acc += static_cast<double>(v.w);
          });
      done = (n >> 2) << 2;
    }
  }
  for (int64_t i = done + first; i < n; i += stride) acc += static_cast<double>(x[i]);
  return acc;
}

// Block b writes the double sum of its grid-stride share of x to partial[b].
template <typename T>
__global__ void sum_partials_kernel(const T* x, int64_t n, double* partial, bool vec) {
  __shared__ double smem[32];
  double acc = thread_sum(x, n, vec, blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x,
                          static_cast<int64_t>(blockDim.x) * gridDim.x);
  acc = block_reduce<SumOp<T>>(acc, smem);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block: y[0] = scale * sum(v), with the CPU path's rounding (the sum is rounded to T
// before scaling, in double).
template <typename In, typename T>
__global__ void sum_finish_kernel(const In* v, int64_t n, T* y, T scale) {
  __shared__ double smem[32];
  double acc = thread_sum(v, n, false, threadIdx.x, blockDim.x);
  acc = block_reduce<SumOp<T>>(acc, smem);
  if (threadIdx.x == 0)
    y[0] = static_cast<T>(static_cast<double>(scale) * static_cast<double>(static_cast<T>(acc)));
}

// ---- reductions over the middle axis ------------------------------------------------

// inner == 1, short rows: one warp per row.
template <typename Op, typename T>
__global__ void reduce_rows_warp_kernel(const T* x, T* y, int64_t rows, int64_t dim) {
  using Acc = typename Op::Acc;
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t warps = blockDim.x >> 5;
  for (int64_t r = blockIdx.x * warps + (threadIdx.x >> 5); r < rows; r += gridDim.x * warps) {
    const T* xr = x + r * dim;
    Acc acc = Op::init();
    for (int64_t d = lane; d < dim; d += 32) acc = Op::combine(acc, Op::load(xr[d]));
    acc = warp_reduce<Op>(acc);
    if (lane == 0) y[r] = Op::result(acc);
  }
}

// inner == 1, long rows: one block per (row, piece of the row); blockIdx.y is the piece.
// With several pieces (partial != nullptr) each writes partial[row * pieces + piece].
template <typename Op, typename T>
__global__ void reduce_rows_block_kernel(const T* x, T* y, typename Op::Acc* partial,
                                         int64_t rows, int64_t dim, int64_t chunk) {
  using Acc = typename Op::Acc;
  __shared__ Acc smem[32];
  const int64_t d0 = blockIdx.y * chunk, d1 = min(d0 + chunk, dim);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * dim;
    Acc acc = Op::init();
    for (int64_t d = d0 + threadIdx.x; d < d1; d += blockDim.x) acc = Op::combine(acc, Op::load(xr[d]));
    acc = block_reduce<Op>(acc, smem);
    if (threadIdx.x == 0) {
      if (partial != nullptr) partial[r * gridDim.y + blockIdx.y] = acc;
      else y[r] = Op::result(acc);
    }
  }
}

// inner > 1: a (32, 8) block takes 32 consecutive columns i of one o (coalesced loads);
// row ty of the block reduces d = d0 + ty, d0 + ty + 8, ... of the block's piece
// [d0, d1), then row 0 combines the 8 partial results in order. blockIdx.y is the piece.
template <typename Op, typename T>
__global__ void reduce_cols_kernel(const T* x, T* y, typename Op::Acc* partial, int64_t outer,
                                   int64_t dim, int64_t inner, int64_t chunk) {
  using Acc = typename Op::Acc;
  __shared__ Acc part[kColRows][kColLanes + 1];
  const int64_t tiles = (inner + kColLanes - 1) / kColLanes;
  const int64_t d0 = blockIdx.y * chunk, d1 = min(d0 + chunk, dim);
  for (int64_t b = blockIdx.x; b < outer * tiles; b += gridDim.x) {
    const int64_t o = b / tiles;
    const int64_t i = (b - o * tiles) * kColLanes + threadIdx.x;
    Acc acc = Op::init();
    if (i < inner) {
      const T* xp = x + o * dim * inner + i;
      for (int64_t d = d0 + threadIdx.y; d < d1; d += kColRows)
        acc = Op::combine(acc, Op::load(xp[d * inner]));
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && i < inner) {
      for (int k = 1; k < kColRows; ++k) acc = Op::combine(acc, part[k][threadIdx.x]);
      const int64_t p = o * inner + i;
      if (partial != nullptr) partial[p * gridDim.y + blockIdx.y] = acc;
      else y[p] = Op::result(acc);
    }
    __syncthreads();  // part is rewritten by the next tile
  }
}

// y[p] = combination of partial[p * pieces + 0 .. pieces): one warp per output.
template <typename Op, typename T>
__global__ void reduce_pieces_kernel(const typename Op::Acc* partial, T* y, int64_t outputs,
                                     int64_t pieces) {
  using Acc = typename Op::Acc;
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int64_t warps = blockDim.x >> 5;
  for (int64_t p = blockIdx.x * warps + (threadIdx.x >> 5); p < outputs; p += gridDim.x * warps) {
    Acc acc = Op::init();
    for (int64_t s = lane; s < pieces; s += 32) acc = Op::combine(acc, partial[p * pieces + s]);
    acc = warp_reduce<Op>(acc);
    if (lane == 0) y[p] = Op::result(acc);
  }
}

template <typename Op, typename T>
void finish_pieces(const typename Op::Acc* partial, T* y, int64_t outputs, int64_t pieces) {
  reduce_pieces_kernel<Op, T><<<cuda::grid_for(outputs * 32, kThreads), kThreads, 0, cuda::stream()>>>(
      partial, y, outputs, pieces);
  CUDA_CHECK_LAUNCH();
}

template <typename Op, typename T>
void reduce_middle(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner) {
  using Acc = typename Op::Acc;
  const int64_t outputs = outer * inner;
  if (outputs <= 0) return;
  if (inner == 1 && dim <= kWarpRowMax) {
    reduce_rows_warp_kernel<Op, T><<<cuda::grid_for(outer * 32, kThreads), kThreads, 0, cuda::stream()>>>(
        x, y, outer, dim);
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (inner == 1) {
    const Cut c = cut(dim, pieces_for(outer, dim, kThreads * 16));
    Scratch partial(c.pieces > 1 ? static_cast<std::size_t>(outer * c.pieces) * sizeof(Acc) : 0);
    const dim3 grid(cuda::grid_for(outer, 1), static_cast<unsigned>(c.pieces));
    reduce_rows_block_kernel<Op, T><<<grid, kThreads, 0, cuda::stream()>>>(x, y, partial.as<Acc>(), outer,
                                                                          dim, c.chunk);
    CUDA_CHECK_LAUNCH();
    if (c.pieces > 1) finish_pieces<Op, T>(partial.as<Acc>(), y, outputs, c.pieces);
    return;
  }
  const int64_t tiles = outer * ceil_div(inner, kColLanes);
  const Cut c = cut(dim, pieces_for(tiles, dim, kColRows * 32));
  Scratch partial(c.pieces > 1 ? static_cast<std::size_t>(outputs * c.pieces) * sizeof(Acc) : 0);
  const dim3 grid(cuda::grid_for(tiles, 1), static_cast<unsigned>(c.pieces));
  reduce_cols_kernel<Op, T><<<grid, dim3(kColLanes, kColRows), 0, cuda::stream()>>>(
      x, y, partial.as<Acc>(), outer, dim, inner, c.chunk);
  CUDA_CHECK_LAUNCH();
  if (c.pieces > 1) finish_pieces<Op, T>(partial.as<Acc>(), y, outputs, c.pieces);
}

// ---- bias_grad with inner > 1 -------------------------------------------------------

// One block per (channel c, piece [o0, o1) of outer); blockIdx.y is the piece. The block
// walks the piece's (o, i) pairs as one flat range j = (o - o0) * inner + i, stepping
// (o, i) by blockDim.x without a division per element.
template <typename T>
__global__ void bias_grad_kernel(const T* gy, T* gb, double* partial, int64_t outer, int64_t C,
                                 int64_t inner, int64_t chunk) {
  __shared__ double smem[32];
  const int64_t o0 = blockIdx.y * chunk, o1 = min(o0 + chunk, outer);
  const int64_t step_o = blockDim.x / inner, step_i = blockDim.x % inner;
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    double acc = 0;
    int64_t o = o0 + threadIdx.x / inner, i = threadIdx.x % inner;
    while (o < o1) {
      acc += static_cast<double>(gy[(o * C + c) * inner + i]);
      o += step_o;
      i += step_i;
      if (i >= inner) {
        i -= inner;
        ++o;
      }
    }
    acc = block_reduce<SumOp<T>>(acc, smem);
    if (threadIdx.x == 0) {
      if (partial != nullptr) partial[c * gridDim.y + blockIdx.y] = acc;
      else gb[c] = static_cast<T>(acc);
    }
  }
}

}  // namespace

template <typename T> void sum_all_cuda(const T* x, T* y, T scale, int64_t n) {
  if (n <= kSumAllOneBlock) {
    sum_finish_kernel<T, T><<<1, kFinishThreads, 0, cuda::stream()>>>(x, n > 0 ? n : 0, y, scale);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t blocks = sum_all_blocks(n);
  Scratch partial(static_cast<std::size_t>(blocks) * sizeof(double));
  sum_partials_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, cuda::stream()>>>(
      x, n, partial.as<double>(), cuda::aligned16(x));
  CUDA_CHECK_LAUNCH();
  sum_finish_kernel<double, T><<<1, kFinishThreads, 0, cuda::stream()>>>(partial.as<double>(), blocks,
                                                                         y, scale);
  CUDA_CHECK_LAUNCH();
}

template <typename T> std::vector<double> sum_all_thread_sums_cuda_on_host(const T* x, int64_t n) {
  const bool one_block = n <= kSumAllOneBlock;
  const int64_t threads = one_block ? kFinishThreads : sum_all_blocks(n) * kThreads;
  std::vector<double> sums(static_cast<std::size_t>(threads));
  for (int64_t t = 0; t < threads; ++t)
    sums[static_cast<std::size_t>(t)] = thread_sum(x, n > 0 ? n : 0, !one_block && cuda::aligned16(x), t, threads);
  return sums;
}

template <typename T>
void sum_dim_cuda(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner) {
  reduce_middle<SumOp<T>, T>(x, y, outer, dim, inner);
}

template <typename T>
void abs_max_dim_cuda(const T* x, T* y, int64_t outer, int64_t dim, int64_t inner) {
  reduce_middle<AbsMaxOp<T>, T>(x, y, outer, dim, inner);
}

template <typename T>
void broadcast_dim_cuda(const T* y, T* x, T scale, int64_t outer, int64_t dim, int64_t inner) {
  const int64_t n = outer * dim * inner;
  if (n <= 0) return;
  if (inner == 1) {
    cuda::parallel_for(n, [=] __device__(int64_t k) { x[k] = scale * y[k / dim]; });
  } else {
    const int64_t di = dim * inner;
    cuda::parallel_for(n, [=] __device__(int64_t k) { x[k] = scale * y[(k / di) * inner + k % inner]; });
  }
}

template <typename T> void add_bias_cuda(T* y, const T* b, int64_t outer, int64_t C, int64_t inner) {
  const int64_t n = outer * C * inner;
  if (n <= 0) return;
  if (inner == 1) cuda::parallel_for(n, [=] __device__(int64_t k) { y[k] += b[k % C]; });
  else cuda::parallel_for(n, [=] __device__(int64_t k) { y[k] += b[(k / inner) % C]; });
}

template <typename T>
void bias_grad_cuda(const T* gy, T* gb, int64_t outer, int64_t C, int64_t inner) {
  if (C <= 0) return;
  if (inner == 1) {  // [outer, C]: a column sum over outer
    reduce_middle<SumOp<T>, T>(gy, gb, 1, outer, C);
    return;
  }
  if (outer <= 0 || inner <= 0) {  // no elements: gb = 0
    cuda::parallel_for(C, [=] __device__(int64_t k) { gb[k] = T(0); });
    return;
  }
  const Cut c = cut(outer, std::min(pieces_for(C, outer * inner, kThreads * 16), outer));
  Scratch partial(c.pieces > 1 ? static_cast<std::size_t>(C * c.pieces) * sizeof(double) : 0);
  const dim3 grid(cuda::grid_for(C, 1), static_cast<unsigned>(c.pieces));
  bias_grad_kernel<T><<<grid, kThreads, 0, cuda::stream()>>>(gy, gb, partial.as<double>(), outer, C,
                                                             inner, c.chunk);
  CUDA_CHECK_LAUNCH();
  if (c.pieces > 1) finish_pieces<SumOp<T>, T>(partial.as<double>(), gb, C, c.pieces);
}

#define INSTANTIATE(T)                                                         \
  template void sum_all_cuda<T>(const T*, T*, T, int64_t);                     \
  template std::vector<double> sum_all_thread_sums_cuda_on_host<T>(const T*, int64_t); \
  template void sum_dim_cuda<T>(const T*, T*, int64_t, int64_t, int64_t);      \
  template void abs_max_dim_cuda<T>(const T*, T*, int64_t, int64_t, int64_t);  \
  template void broadcast_dim_cuda<T>(const T*, T*, T, int64_t, int64_t, int64_t); \
  template void add_bias_cuda<T>(T*, const T*, int64_t, int64_t, int64_t);     \
  template void bias_grad_cuda<T>(const T*, T*, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
