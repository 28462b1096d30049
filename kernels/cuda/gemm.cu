// CUDA GEMM (kernels/gemm.h): row-major C[M,N] = alpha * op(A) * op(B) + beta * C.
// 2*M*N*K flops against (M*K + K*N + 2*M*N) elements of traffic, so compute-bound for
// all but thin products.
//
// gemm_cuda calls cuBLAS, which is column-major. A row-major matrix X[r, c] with row
// stride ld is, byte for byte, the column-major matrix X^T[c, r] with leading dimension
// ld. So the row-major C[M,N] is the column-major C^T[N,M], and
//   C^T = alpha * op(B)^T * op(A)^T + beta * C^T
// is a column-major GEMM with the operands swapped: m = N, n = M, first operand the
// storage of B (transposed iff trans_b: B stored [K,N] is already column-major op(B)^T;
// B stored [N,K] is column-major op(B), which must be transposed), second operand the
// storage of A likewise:
//   cublas<t>gemm(h, trans_b ? T : N, trans_a ? T : N, N, M, K, alpha, B, ldb, A, lda,
//                 beta, C, ldc).
// The leading dimensions are the row strides unchanged. FP32 math (CUBLAS_DEFAULT_MATH,
// no TF32) unless set_cuda_allow_tf32(true).
//
// gemm_tiled_cuda is the handwritten fallback (ENGINE_CUDA_GEMM=tiled routes gemm_cuda
// to it): 256 threads compute a (32V x 32V) tile of C, V = 16 bytes / sizeof(T) (128x128
// for float, 64x64 for double), each thread a 2V x 2V register block, over K in steps of
// 8 through double-buffered shared memory; see gemm_tiled_kernel. Products with fewer
// tiles than the GPU has multiprocessors (the FC layers' M = batch) split K as well: each
// split writes its partial product to a workspace and a second kernel adds them in a
// fixed order (deterministic), then beta * C. With at most 8 rows of A and B transposed
// (linear's forward at batch <= 8), a warp per output column instead: gemm_small_m_nt_kernel.
//
// The kernels' per-thread code is __host__ __device__, written against the block or warp
// it runs in (DeviceBlock and DeviceWarp here; cuda::HostBlock and cuda::HostWarp on host
// threads), so gemm_tiled_cuda_on_host runs the same code, launch plan included, on the
// CPU: the tests check it in builds on machines without a GPU.
#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/host_threads.h"
#include "kernels/cuda_runtime.h"
#include "kernels/gemm.h"

namespace kernels {
namespace {

std::atomic<bool> g_allow_tf32{false};

// ENGINE_CUDA_GEMM=tiled: gemm_cuda runs the handwritten kernel instead of cuBLAS.
bool use_tiled_gemm() {
  static const bool tiled = [] {
    const char* v = std::getenv("ENGINE_CUDA_GEMM");
    return v != nullptr && std::strcmp(v, "tiled") == 0;
  }();
  return tiled;
}

// cuBLAS (and the tiled kernel's index math) take int sizes and strides.
void check_int_args(const char* fn, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                    int64_t ldc) {
  const struct {
    const char* name;
    int64_t value;
  } args[] = {{"M", M}, {"N", N}, {"K", K}, {"lda", lda}, {"ldb", ldb}, {"ldc", ldc}};
  for (const auto& a : args)
    if (a.value < 0 || a.value > INT_MAX)
      throw std::runtime_error(std::string(fn) + ": " + a.name + " = " + std::to_string(a.value) +
                               " is outside the int range cuBLAS takes (M=" + std::to_string(M) +
                               ", N=" + std::to_string(N) + ", K=" + std::to_string(K) + ", lda=" +
                               std::to_string(lda) + ", ldb=" + std::to_string(ldb) +
                               ", ldc=" + std::to_string(ldc) + ")");
}

// f(idx) for idx in [0, n): a grid-stride launch, or a loop on the host.
template <bool kHost, typename F> void for_each_index(int64_t n, F f) {
  if constexpr (kHost) {
    for (int64_t i = 0; i < n; ++i) f(i);
  } else {
    cuda::parallel_for(n, f);
  }
}

// C = beta * C (the K == 0 or alpha == 0 product); beta == 0 writes zeros without reading C.
template <bool kHost, typename T> void scale_c(int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  if (beta == T(1)) return;
  for_each_index<kHost>(M * N, [=] __host__ __device__(int64_t idx) {
    T& c = C[(idx / N) * ldc + idx % N];
    c = beta == T(0) ? T(0) : beta * c;
  });
}

// The block or warp that runs the kernels' code on the device; cuda::HostBlock and
// cuda::HostWarp stand in for them on host threads.
struct DeviceBlock {
  __device__ __forceinline__ int tid() const { return static_cast<int>(threadIdx.x); }
  __device__ __forceinline__ unsigned block_x() const { return blockIdx.x; }
  __device__ __forceinline__ unsigned block_y() const { return blockIdx.y; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
};

struct DeviceWarp {
  int lane;
  __device__ __forceinline__ int64_t rank() const { return lane; }
  // Every lane gets the sum, combined in butterfly order (lane l takes lane l ^ 16 first).
  template <typename A> __device__ __forceinline__ A sum(A v) const {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
  }
};

// A read through the read-only data cache (__ldg) on the device; a plain load on the host.
// T: float, double or a 16-byte vector of them.
template <typename T> __host__ __device__ __forceinline__ T load_ro(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldg(p);
#else
  return *p;
#endif
}

// ---- the tiled kernel ---------------------------------------------------------------------

constexpr int kThreads = 256;
constexpr int kBK = 8;      // K depth of one shared-memory stage
constexpr int kGroupM = 8;  // block swizzle: 8 tile rows share each sweep over B

template <typename T> struct VecOf;
template <> struct VecOf<float> { using type = float4; };
template <> struct VecOf<double> { using type = double2; };

template <typename T> struct TileShape {
  static constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte vector
  static constexpr int BM = 32 * V;  // 16 thread rows x 2 halves x V rows
  static constexpr int BN = 32 * V;
  static constexpr int LD = BM + V;  // padded smem row: transposed stores are conflict-free
  static_assert(BM * kBK / V == kThreads, "one vector per thread per operand per stage");
};

// The first `avail` of p[0..V) are in range (avail may be <= 0 or >= V); the rest read as 0.
// vec: p is 16-byte aligned whenever it is a tile-aligned address of its matrix.
template <typename T, int V>
__host__ __device__ __forceinline__ void load_global(const T* __restrict__ p, int avail, bool vec, T (&r)[V]) {
  using Vec = typename VecOf<T>::type;
  if (vec && avail >= V) {
    const Vec v = load_ro(reinterpret_cast<const Vec*>(p));
    if constexpr (V == 4) {
      r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
    } else {
      r[0] = v.x; r[1] = v.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) r[i] = i < avail ? load_ro(p + i) : T(0);
  }
}

template <typename T, int V> __host__ __device__ __forceinline__ void store_shared_vec(T* dst, const T (&r)[V]) {
  using Vec = typename VecOf<T>::type;
  if constexpr (V == 4)
    *reinterpret_cast<Vec*>(dst) = make_float4(r[0], r[1], r[2], r[3]);
  else
    *reinterpret_cast<Vec*>(dst) = make_double2(r[0], r[1]);
}

// A 16-byte load from shared or global memory; src must be 16-byte aligned.
template <typename T, int V> __host__ __device__ __forceinline__ void load_vec16(const T* src, T* r) {
  using Vec = typename VecOf<T>::type;
  const Vec v = *reinterpret_cast<const Vec*>(src);
  if constexpr (V == 4) {
    r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
  } else {
    r[0] = v.x; r[1] = v.y;
  }
}

// One block computes C[bm : bm+BM, bn : bn+BN]. Shared memory holds both operands k-major
// (As[k][m], Bs[k][n]), two stages each: while the block multiplies stage `cur`, every
// thread has the next stage's vector of A and of B in registers, and stores them into the
// other stage afterwards; one __syncthreads per K step separates the two.
//   Global -> registers: one 16-byte vector per operand per thread. An operand whose rows
//     run along K (A not transposed, B transposed) is read as BM rows x (kBK/V) vectors
//     and stored transposed, element by element, into the padded rows (row stride
//     BM + V words keeps those stores conflict-free); the other orientation is read as
//     kBK rows x (BM/V) vectors and stored as vectors. Tiles at the matrix edges, and
//     matrices whose base or leading dimension is not 16-byte aligned, go element by
//     element with zero fill, so any M, N, K, lda, ldb, ldc work.
//   Registers: thread (tm, tn), tm, tn in [0,16), owns rows {tm*V + i, BM/2 + tm*V + i}
//     and columns {tn*V + j, BN/2 + tn*V + j}, i, j < V: per k it reads two vectors of A
//     and two of B from shared memory and does (2V)^2 FMAs. A warp spans 4 values of tm
//     and 8 of tn, so its shared-memory reads are broadcasts of contiguous vectors.
//   Split (kSplit, gemm_tiled_split_kernel): block row y of the grid takes K's range
//     [y * k_chunk, (y + 1) * k_chunk) (k_chunk a multiple of kBK, so 16-byte alignment
//     is kept) and writes C + y * c_split_stride. Its registers are held at 128, two
//     blocks per multiprocessor, which the bookkeeping would otherwise push past;
//     gemm_tiled_kernel is the block without it.
// Assumes kThreads threads per block and a grid of ceil(M/BM) * ceil(N/BN) (x splits)
// blocks, with M, N, K < 2^31; offsets into A, B, C are 64-bit. G: the block
// (DeviceBlock, cuda::HostBlock); As and Bs its shared memory, 16-byte aligned.
template <typename T> using StageTiles = T[2][kBK][TileShape<T>::LD];

#pragma nv_exec_check_disable
template <typename T, bool TA, bool TB, bool kSplit, typename G>
__host__ __device__ __forceinline__ void gemm_tiled_block(int M, int N, int K, T alpha, const T* __restrict__ A,
                                                          int64_t lda, const T* __restrict__ B, int64_t ldb, T beta,
                                                          T* __restrict__ C, int64_t ldc, bool vec_a, bool vec_b,
                                                          bool vec_c, int k_chunk, int64_t c_split_stride,
                                                          StageTiles<T>& As, StageTiles<T>& Bs, const G& g) {
  using S = TileShape<T>;
  if constexpr (kSplit) {
    const int k_begin = static_cast<int>(g.block_y()) * k_chunk;  // < K
    K = cuda::min_int(k_chunk, K - k_begin);
    A += TA ? static_cast<int64_t>(k_begin) * lda : k_begin;
    B += TB ? k_begin : static_cast<int64_t>(k_begin) * ldb;
    C += static_cast<int64_t>(g.block_y()) * c_split_stride;
  }
  constexpr int V = S::V, BM = S::BM, BN = S::BN;

  // Swizzled tile order: consecutive blocks walk down kGroupM tile rows before moving right,
  // so the blocks resident at one time share their A and B tiles in L2.
  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
  const int pid = static_cast<int>(g.block_x());
  const int group_size = kGroupM * tiles_n;
  const int first_m = (pid / group_size) * kGroupM;
  const int group_rows = cuda::min_int(tiles_m - first_m, kGroupM);
  const int bm = (first_m + (pid % group_size) % group_rows) * BM;
  const int bn = ((pid % group_size) / group_rows) * BN;
  const int rows_left = M - bm;  // > 0; written as differences so nothing overflows int
  const int cols_left = N - bn;

  const int tid = g.tid();
  const int warp = tid >> 5, lane = tid & 31;
  const int tm = (warp >> 1) * 4 + (lane >> 3);  // 0..15
  const int tn = (warp & 1) * 8 + (lane & 7);    // 0..15

  // This thread's global -> shared assignment (see above).
  constexpr int kRowVecs = kBK / V;  // vectors per K-contiguous row of a stage
  constexpr int kColVecs = BM / V;   // vectors per M- or N-contiguous row of a stage
  // A
  const int a_row = TA ? tid / kColVecs : tid / kRowVecs;        // TA: k in stage; else m
  const int a_col = TA ? (tid % kColVecs) * V : (tid % kRowVecs) * V;  // TA: m; else k
  // B
  const int b_row = TB ? tid / kRowVecs : tid / kColVecs;        // TB: n; else k in stage
  const int b_col = TB ? (tid % kRowVecs) * V : (tid % kColVecs) * V;  // TB: k; else n

  T ra[V], rb[V];
  auto load_tile = [&](int k0) {
    if constexpr (TA) {  // A stored [K, M]: element (m, k) at A[k*lda + m]
      const int k = k0 + a_row;
      const bool ok = k < K;
      load_global<T, V>(A + (ok ? static_cast<int64_t>(k) * lda + bm + a_col : 0),
                        ok ? rows_left - a_col : 0, vec_a, ra);
    } else {  // A stored [M, K]: element (m, k) at A[m*lda + k]
      const bool ok = a_row < rows_left;
      load_global<T, V>(A + (ok ? static_cast<int64_t>(bm + a_row) * lda + k0 + a_col : 0),
                        ok ? K - k0 - a_col : 0, vec_a, ra);
    }
    if constexpr (TB) {  // B stored [N, K]: element (k, n) at B[n*ldb + k]
      const bool ok = b_row < cols_left;
      load_global<T, V>(B + (ok ? static_cast<int64_t>(bn + b_row) * ldb + k0 + b_col : 0),
                        ok ? K - k0 - b_col : 0, vec_b, rb);
    } else {  // B stored [K, N]: element (k, n) at B[k*ldb + n]
      const int k = k0 + b_row;
      const bool ok = k < K;
      load_global<T, V>(B + (ok ? static_cast<int64_t>(k) * ldb + bn + b_col : 0),
                        ok ? cols_left - b_col : 0, vec_b, rb);
    }
  };
  auto store_tile = [&](int buf) {
    if constexpr (TA) {
      store_shared_vec<T, V>(&As[buf][a_row][a_col], ra);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) As[buf][a_col + i][a_row] = ra[i];
    }
    if constexpr (TB) {
#pragma unroll
      for (int i = 0; i < V; ++i) Bs[buf][b_col + i][b_row] = rb[i];
    } else {
      store_shared_vec<T, V>(&Bs[buf][b_row][b_col], rb);
    }
  };

  T acc[2 * V][2 * V];
#pragma unroll
  for (int i = 0; i < 2 * V; ++i)
#pragma unroll
    for (int j = 0; j < 2 * V; ++j) acc[i][j] = T(0);

  const int k_tiles = (K + kBK - 1) / kBK;
  load_tile(0);
  store_tile(0);
  g.sync();
  for (int kt = 0; kt < k_tiles; ++kt) {
    const int cur = kt & 1;
    const bool more = kt + 1 < k_tiles;
    if (more) load_tile((kt + 1) * kBK);  // in flight while this stage is multiplied
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      T a[2 * V], b[2 * V];
      load_vec16<T, V>(&As[cur][kk][tm * V], a);
      load_vec16<T, V>(&As[cur][kk][BM / 2 + tm * V], a + V);
      load_vec16<T, V>(&Bs[cur][kk][tn * V], b);
      load_vec16<T, V>(&Bs[cur][kk][BN / 2 + tn * V], b + V);
#pragma unroll
      for (int i = 0; i < 2 * V; ++i)
#pragma unroll
        for (int j = 0; j < 2 * V; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    // Stage cur^1 was last read before the previous iteration's barrier: safe to refill.
    if (more) store_tile(cur ^ 1);
    g.sync();
  }

  // Epilogue: C = alpha * acc + beta * C; beta == 0 never reads C (BLAS: NaN there is ignored).
  using Vec = typename VecOf<T>::type;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int r = h * (BM / 2) + tm * V + i;
      if (r >= rows_left) continue;
      T* crow = C + static_cast<int64_t>(bm + r) * ldc + bn;
#pragma unroll
      for (int g = 0; g < 2; ++g) {
        const int c0 = g * (BN / 2) + tn * V;
        T out[V];
#pragma unroll
        for (int j = 0; j < V; ++j) out[j] = alpha * acc[h * V + i][g * V + j];
        if (vec_c && c0 + V <= cols_left) {
          Vec* dst = reinterpret_cast<Vec*>(crow + c0);
          if (beta != T(0)) {
            T old[V];
            load_vec16<T, V>(crow + c0, old);
#pragma unroll
            for (int j = 0; j < V; ++j) out[j] = fma(beta, old[j], out[j]);
          }
          if constexpr (V == 4)
            *dst = make_float4(out[0], out[1], out[2], out[3]);
          else
            *dst = make_double2(out[0], out[1]);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            if (c0 + j >= cols_left) break;
            crow[c0 + j] = beta != T(0) ? fma(beta, crow[c0 + j], out[j]) : out[j];
          }
        }
      }
    }
}

template <typename T, bool TA, bool TB>
__global__ void __launch_bounds__(kThreads)
    gemm_tiled_kernel(int M, int N, int K, T alpha, const T* __restrict__ A, int64_t lda, const T* __restrict__ B,
                      int64_t ldb, T beta, T* __restrict__ C, int64_t ldc, bool vec_a, bool vec_b, bool vec_c) {
  __shared__ __align__(16) StageTiles<T> As;
  __shared__ __align__(16) StageTiles<T> Bs;
  gemm_tiled_block<T, TA, TB, false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, vec_a, vec_b, vec_c, 0, 0, As, Bs,
                                     DeviceBlock{});
}

template <typename T, bool TA, bool TB>
__global__ void __launch_bounds__(kThreads, 2)
    gemm_tiled_split_kernel(int M, int N, int K, T alpha, const T* __restrict__ A, int64_t lda,
                            const T* __restrict__ B, int64_t ldb, T* __restrict__ W, bool vec_a, bool vec_b,
                            bool vec_w, int k_chunk) {
  __shared__ __align__(16) StageTiles<T> As;
  __shared__ __align__(16) StageTiles<T> Bs;
  gemm_tiled_block<T, TA, TB, true>(M, N, K, alpha, A, lda, B, ldb, T(0), W, N, vec_a, vec_b, vec_w, k_chunk,
                                    static_cast<int64_t>(M) * N, As, Bs, DeviceBlock{});
}

// The GPU's multiprocessor count (the current device's, read once).
int multiprocessors() {
  static const int n = [] {
    int dev = 0, v = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v > 0 ? v : 1;
  }();
  return n;
}

constexpr int64_t kMinSplitK = 256;  // K per split at least: 32 stages of the main loop
constexpr int64_t kMaxSplits = 16;

// How many ways to split K: enough that the tiles times the splits fill about two
// blocks per multiprocessor, when the tiles alone leave some idle.
int64_t k_splits(int64_t tiles, int64_t K, int64_t sms) {
  if (tiles >= sms) return 1;
  return std::max<int64_t>(1, std::min({2 * sms / tiles, K / kMinSplitK, kMaxSplits}));
}

// C[m, n] = sum over s of W[s][m, n] (W: splits x M x N, in that order) + beta * C[m, n];
// beta == 0 does not read C.
template <bool kHost, typename T>
void add_splits(const T* W, int64_t splits, int64_t M, int64_t N, T beta, T* C, int64_t ldc) {
  for_each_index<kHost>(M * N, [=] __host__ __device__(int64_t idx) {
    T acc = W[idx];
    for (int64_t s = 1; s < splits; ++s) acc += W[s * M * N + idx];
    T& c = C[(idx / N) * ldc + idx % N];
    c = beta != T(0) ? fma(beta, c, acc) : acc;
  });
}

// The split products' workspace: device memory, or host memory for kHost.
template <bool kHost, typename T> class Workspace {
 public:
  explicit Workspace(int64_t n) {
    if constexpr (kHost) {
      host_.resize(static_cast<std::size_t>(n));
      p_ = host_.data();
    } else {
      p_ = static_cast<T*>(cuda::malloc_device(static_cast<std::size_t>(n) * sizeof(T)));
    }
  }
  // Freed while the kernels may still run: the caching allocator hands the block out
  // again only to work queued after them on the same stream.
  ~Workspace() {
    if constexpr (!kHost) cuda::free_device(p_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  std::vector<T> host_;
};

// The tiled kernels over the grid: launched on the engine's stream, or (kHost) run
// block after block on kThreads host threads.
// The arguments are gemm_tiled_block's; with kSplit, C is the workspace (beta 0, ldc N,
// c_split_stride M * N, as gemm_tiled_split_kernel sets them).
template <bool kHost, typename T, bool TA, bool TB, bool kSplit>
void run_tiled(dim3 grid, int M, int N, int K, T alpha, const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C,
               int64_t ldc, bool vec_a, bool vec_b, bool vec_c, int k_chunk, int64_t c_split_stride) {
  if constexpr (kHost) {
    alignas(16) StageTiles<T> As, Bs;
    cuda::on_host_grid(grid.x, grid.y, kThreads, [&](const cuda::HostBlock& b) {
      gemm_tiled_block<T, TA, TB, kSplit>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, vec_a, vec_b, vec_c, k_chunk,
                                          c_split_stride, As, Bs, b);
    });
  } else {
    if constexpr (kSplit)
      gemm_tiled_split_kernel<T, TA, TB>
          <<<grid, kThreads, 0, cuda::stream()>>>(M, N, K, alpha, A, lda, B, ldb, C, vec_a, vec_b, vec_c, k_chunk);
    else
      gemm_tiled_kernel<T, TA, TB>
          <<<grid, kThreads, 0, cuda::stream()>>>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, vec_a, vec_b, vec_c);
    CUDA_CHECK_LAUNCH();
  }
}

template <bool kHost, typename T, bool TA, bool TB>
void launch_tiled(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
                  int64_t ldb, T beta, T* C, int64_t ldc, int64_t sms) {
  using S = TileShape<T>;
  const bool vec_a = cuda::aligned16(A) && lda % S::V == 0;
  const bool vec_b = cuda::aligned16(B) && ldb % S::V == 0;
  const bool vec_c = cuda::aligned16(C) && ldc % S::V == 0;
  const int64_t tiles_n = (N + S::BN - 1) / S::BN;
  const int64_t tiles_m = (M + S::BM - 1) / S::BM;
  int64_t splits = k_splits(tiles_m * tiles_n, K, sms);
  if (splits > 1) {
    // k_chunk: a multiple of kBK; every split gets some of K.
    const int64_t k_chunk = ((K + splits - 1) / splits + kBK - 1) / kBK * kBK;
    splits = (K + k_chunk - 1) / k_chunk;
    const Workspace<kHost, T> W(splits * M * N);
    const dim3 grid(static_cast<unsigned>(tiles_m * tiles_n), static_cast<unsigned>(splits));
    run_tiled<kHost, T, TA, TB, true>(grid, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
                                      lda, B, ldb, T(0), W.get(), N, vec_a, vec_b,
                                      cuda::aligned16(W.get()) && N % S::V == 0, static_cast<int>(k_chunk), M * N);
    add_splits<kHost>(W.get(), splits, M, N, beta, C, ldc);
    return;
  }
  // gridDim.x < 2^31: more tiles than that (M*N beyond 2^45) go in several launches by rows.
  const int64_t chunk_tiles_m = std::min<int64_t>(tiles_m, INT_MAX / tiles_n);
  for (int64_t t0 = 0; t0 < tiles_m; t0 += chunk_tiles_m) {
    const int64_t m0 = t0 * S::BM;
    const int64_t rows = std::min<int64_t>(M - m0, chunk_tiles_m * S::BM);
    const int64_t blocks = ((rows + S::BM - 1) / S::BM) * tiles_n;
    const T* a = TA ? A + m0 : A + m0 * lda;  // alignment is kept: m0 is a multiple of V
    run_tiled<kHost, T, TA, TB, false>(dim3(static_cast<unsigned>(blocks)), static_cast<int>(rows),
                                       static_cast<int>(N), static_cast<int>(K), alpha, a, lda, B, ldb, beta,
                                       C + m0 * ldc, ldc, vec_a, vec_b, vec_c, 0, int64_t(0));
  }
}

// ---- few rows, B transposed: the FC layers at batch <= 8 ------------------------------------

constexpr int64_t kSmallM = 8;

// C[m, n] = alpha * sum_k A[m, k] * B[n, k] + beta * C[m, n] for M <= kSmallM (A stored
// [M, K], B stored [N, K]: linear's forward). Memory-bound on B, which a tile kernel
// would read for 128 rows of which M are real: one warp per output column n, its lanes
// striding over the row B[n, :] (16-byte loads where vec: A and B 16-byte aligned, lda
// and ldb multiples of V) with one accumulator per row of A; the warp then sums each
// accumulator in a fixed butterfly order. A's rows are read by every warp, from cache.
// G: the warp (DeviceWarp, cuda::HostWarp).
#pragma nv_exec_check_disable
template <typename T, typename G>
__host__ __device__ __forceinline__ void gemm_small_m_nt_column(int M, int K, T alpha, const T* __restrict__ A,
                                                                int64_t lda, const T* __restrict__ B, int64_t ldb,
                                                                T beta, T* __restrict__ C, int64_t ldc, bool vec,
                                                                int64_t n, const G& g) {
  constexpr int V = TileShape<T>::V;
  const int lane = static_cast<int>(g.rank());
  const T* b = B + n * ldb;
  T acc[kSmallM];
#pragma unroll
  for (int m = 0; m < kSmallM; ++m) acc[m] = T(0);
  int k_done = 0;
  if (vec) {
    const int kv = K / V;
#pragma unroll 4
    for (int j = lane; j < kv; j += 32) {
      T bv[V];
      load_vec16<T, V>(b + j * V, bv);
#pragma unroll
      for (int m = 0; m < kSmallM; ++m)
        if (m < M) {
          T av[V];
          load_vec16<T, V>(A + m * lda + j * V, av);
#pragma unroll
          for (int i = 0; i < V; ++i) acc[m] = fma(av[i], bv[i], acc[m]);
        }
    }
    k_done = kv * V;
  }
  for (int k = k_done + lane; k < K; k += 32) {
    const T bk = b[k];
#pragma unroll
    for (int m = 0; m < kSmallM; ++m)
      if (m < M) acc[m] = fma(A[m * lda + k], bk, acc[m]);
  }
#pragma unroll
  for (int m = 0; m < kSmallM; ++m) {
    if (m >= M) break;
    const T v = g.sum(acc[m]);
    if (lane == 0) {
      T& c = C[m * ldc + n];
      c = beta != T(0) ? fma(beta, c, alpha * v) : alpha * v;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gemm_small_m_nt_kernel(int M, int N, int K, T alpha, const T* __restrict__ A, int64_t lda,
                           const T* __restrict__ B, int64_t ldb, T beta, T* __restrict__ C, int64_t ldc, bool vec) {
  const DeviceWarp g{static_cast<int>(threadIdx.x & 31)};
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  // n is the same for all lanes of a warp, so every lane takes part in the shuffles.
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); n < N; n += warps)
    gemm_small_m_nt_column(M, K, alpha, A, lda, B, ldb, beta, C, ldc, vec, n, g);
}

template <bool kHost, typename T>
void launch_small_m_nt(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B, int64_t ldb,
                       T beta, T* C, int64_t ldc) {
  constexpr int V = TileShape<T>::V;
  const bool vec = cuda::aligned16(A) && cuda::aligned16(B) && lda % V == 0 && ldb % V == 0;
  if constexpr (kHost) {
    cuda::on_host_warp([&](const cuda::HostWarp& g) {
      for (int64_t n = 0; n < N; ++n)
        gemm_small_m_nt_column(static_cast<int>(M), static_cast<int>(K), alpha, A, lda, B, ldb, beta, C, ldc, vec, n,
                               g);
    });
  } else {
    const int64_t warps_per_block = kThreads / 32;
    const unsigned blocks =
        static_cast<unsigned>(std::min<int64_t>((N + warps_per_block - 1) / warps_per_block, 65535 * 16));
    gemm_small_m_nt_kernel<T><<<blocks, kThreads, 0, cuda::stream()>>>(static_cast<int>(M), static_cast<int>(N),
                                                                        static_cast<int>(K), alpha, A, lda, B, ldb,
                                                                        beta, C, ldc, vec);
    CUDA_CHECK_LAUNCH();
  }
}

// gemm_tiled_cuda on the device (kHost false) or its kernels' code on host threads, as
// on a GPU with `sms` multiprocessors.
template <bool kHost, typename T>
void gemm_tiled(const char* fn, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, int64_t sms) {
  check_int_args(fn, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) {  // as BLAS: A and B are not read
    scale_c<kHost>(M, N, beta, C, ldc);
    return;
  }
  if (trans_a) {
    if (trans_b)
      launch_tiled<kHost, T, true, true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, sms);
    else
      launch_tiled<kHost, T, true, false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, sms);
  } else {
    if (trans_b && M <= kSmallM)
      launch_small_m_nt<kHost, T>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else if (trans_b)
      launch_tiled<kHost, T, false, true>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, sms);
    else
      launch_tiled<kHost, T, false, false>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, sms);
  }
}

}  // namespace

void set_cuda_allow_tf32(bool allow) { g_allow_tf32.store(allow); }
bool cuda_allow_tf32() { return g_allow_tf32.load(); }

template <typename T>
void gemm_tiled_cuda(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                     const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  // The multiprocessor count is read only where K may be split (it needs a device).
  const bool may_split = M > 0 && N > 0 && K > 0 && alpha != T(0);
  gemm_tiled<false>("gemm_tiled_cuda", trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                    may_split ? multiprocessors() : 1);
}

template <typename T>
void gemm_tiled_cuda_on_host(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                             int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, int multiprocessors) {
  if (multiprocessors < 1)
    throw std::invalid_argument("gemm_tiled_cuda_on_host: multiprocessors = " + std::to_string(multiprocessors) +
                                ", expected at least 1");
  gemm_tiled<true>("gemm_tiled_cuda_on_host", trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                   multiprocessors);
}

template <typename T>
void gemm_cuda(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (use_tiled_gemm()) {
    gemm_tiled_cuda<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  check_int_args("gemm_cuda", M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // cuBLAS may return early here; BLAS semantics are C = beta * C
    scale_c<false>(M, N, beta, C, ldc);
    return;
  }
  const cublasHandle_t h = cuda::cublas_handle();
  // The math mode is handle state: set it on every call (a host-side field, no sync).
  const bool tf32 = std::is_same_v<T, float> && cuda_allow_tf32();
  CUBLAS_CHECK(cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  // Column-major C^T[N,M] = op(B)^T[N,K] * op(A)^T[K,M] (see the top of this file).
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  if constexpr (std::is_same_v<T, float>)
    CUBLAS_CHECK(cublasSgemm(h, op_b, op_a, m, n, k, &alpha, B, static_cast<int>(ldb), A,
                             static_cast<int>(lda), &beta, C, static_cast<int>(ldc)));
  else
    CUBLAS_CHECK(cublasDgemm(h, op_b, op_a, m, n, k, &alpha, B, static_cast<int>(ldb), A,
                             static_cast<int>(lda), &beta, C, static_cast<int>(ldc)));
}

#define INSTANTIATE(T)                                                                          \
  template void gemm_cuda<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t,       \
                             const T*, int64_t, T, T*, int64_t);                                \
  template void gemm_tiled_cuda<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, \
                                   const T*, int64_t, T, T*, int64_t);                          \
  template void gemm_tiled_cuda_on_host<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*,  \
                                           int64_t, const T*, int64_t, T, T*, int64_t, int);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
