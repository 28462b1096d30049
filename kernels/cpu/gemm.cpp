// Row-major GEMM through CBLAS (OpenBLAS), or oneDNN's matmul for float32 (see gemm.h). A
// product with a single row or column is a matrix-vector product and goes to GEMV: GEMM
// would first pack (copy) the whole other matrix, which at batch 1 costs as much as the
// product itself — AlexNet's fc6 weights alone are 151 MB. float32 GEMV is the engine's
// own (AVX2, OpenMP), bound by reading the matrix once: OpenBLAS picks its GEMV kernel by
// CPU model, and on models newer than its release (Xeon model 207, for one) it falls back
// to its SSE3 kernels, at about half the speed.
#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/cpu/avx2.h"

namespace kernels {
namespace {

// Matrices smaller than this (elements) take one thread.
constexpr int64_t kGemvParallelMin = int64_t(1) << 16;

// y[i * inc_y] = alpha * s[i] + beta * y[i * inc_y], y not read where beta is 0 (BLAS's rule:
// NaN there must not reach the result).
void scale_into(const float* s, int64_t n, float alpha, float beta, float* y, int64_t inc_y) {
  for (int64_t i = 0; i < n; ++i) {
    float& yi = y[i * inc_y];
    yi = beta == 0.0f ? alpha * s[i] : alpha * s[i] + beta * yi;
  }
}

#if defined(__AVX2__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// out[r] = W[r, :] . x for the R rows at W (row stride ldw), cols long: one pass over the
// rows, 16 columns a step with two accumulators a row (the FMA latency), the last
// columns masked.
template <int R> void dot_rows(const float* W, int64_t ldw, const float* x, int64_t cols, float* out) {
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= cols; k += 16) {
    const __m256 xa = _mm256_loadu_ps(x + k), xb = _mm256_loadu_ps(x + k + 8);
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(W + r * ldw + k), xa, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(W + r * ldw + k + 8), xb, acc[r][1]);
    }
  }
  for (; k < cols; k += 8) {
    const __m256i m = first_lanes(cols - k);
    const __m256 xa = _mm256_maskload_ps(x + k, m);
    for (int r = 0; r < R; ++r) acc[r][0] = _mm256_fmadd_ps(_mm256_maskload_ps(W + r * ldw + k, m), xa, acc[r][0]);
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
}

// s[j] += sum_r xr[r] w[r][j] for j < cols over R rows w[r]: a chain of R FMAs per 8
// columns, in the order given, the last columns masked.
template <int R> void add_rows(const float* const* w, const float* xr, int64_t cols, float* s) {
  __m256 xv[R];
  for (int r = 0; r < R; ++r) xv[r] = _mm256_set1_ps(xr[r]);
  int64_t j = 0;
  for (; j + 8 <= cols; j += 8) {
    __m256 v = _mm256_loadu_ps(s + j);
    for (int r = 0; r < R; ++r) v = _mm256_fmadd_ps(_mm256_loadu_ps(w[r] + j), xv[r], v);
    _mm256_storeu_ps(s + j, v);
  }
  if (j < cols) {
    const __m256i m = first_lanes(cols - j);
    __m256 v = _mm256_maskload_ps(s + j, m);
    for (int r = 0; r < R; ++r) v = _mm256_fmadd_ps(_mm256_maskload_ps(w[r] + j, m), xv[r], v);
    _mm256_maskstore_ps(s + j, m, v);
  }
}

// s[j] = sum_i x[i] W[i, j] for j < cols over the rows at W, streamed four at a time in
// row order. Rows whose x[i] is zero are not read: their terms would add zeros, which
// change nothing but the sign of a zero sum, short of an inf or NaN in a skipped row,
// whose product with 0 would have made the column NaN, as it does in PyTorch (the
// reference BLAS skipped such terms too until LAPACK 3.5 dropped the check for NaN's
// sake). The README lists this with the engine's other departures from PyTorch.
// A batch-1 backward through ReLUs hands linear's data gradient vectors that are zero
// wherever the ReLU above was inactive (about half of AlexNet's fc6 and fc7 at random
// weights), and each skipped row is a row of weights not read from memory.
void sum_rows(const float* W, int64_t ldw, const float* x, int64_t rows, int64_t cols, float* s) {
  std::fill(s, s + cols, 0.0f);
  const float* w[4];
  float xr[4];
  int n = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (x[i] == 0.0f) continue;
    w[n] = W + i * ldw;
    xr[n] = x[i];
    if (++n == 4) {
      add_rows<4>(w, xr, cols, s);
      n = 0;
    }
  }
  switch (n) {
    case 3: add_rows<3>(w, xr, cols, s); break;
    case 2: add_rows<2>(w, xr, cols, s); break;
    case 1: add_rows<1>(w, xr, cols, s); break;
    default: break;
  }
}
#endif

// y[i * inc_y] = alpha * (W[i, :] . x) + beta * y[i * inc_y], i < rows: W row-major
// [rows, cols] (row stride ldw), x contiguous. Rows four at a time, split between threads.
void gemv_rows_f32(int64_t rows, int64_t cols, float alpha, const float* W, int64_t ldw, const float* x, float beta,
                   float* y, int64_t inc_y) {
  const int64_t blocks = (rows + 3) / 4;
#pragma omp parallel for schedule(static) if (rows * cols >= kGemvParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * 4, nr = std::min<int64_t>(4, rows - r0);
    float dot[4];
#if defined(__AVX2__)
    const float* w = W + r0 * ldw;
    switch (nr) {
      case 4: dot_rows<4>(w, ldw, x, cols, dot); break;
      case 3: dot_rows<3>(w, ldw, x, cols, dot); break;
      case 2: dot_rows<2>(w, ldw, x, cols, dot); break;
      default: dot_rows<1>(w, ldw, x, cols, dot); break;
    }
#else
    for (int64_t r = 0; r < nr; ++r) {
      float acc = 0.0f;
      for (int64_t k = 0; k < cols; ++k) acc += W[(r0 + r) * ldw + k] * x[k];
      dot[r] = acc;
    }
#endif
    scale_into(dot, nr, alpha, beta, y + r0 * inc_y, inc_y);
  }
}

// y[j * inc_y] = alpha * sum_i x[i] W[i, j] + beta * y[j * inc_y], j < cols: W row-major
// [rows, cols] (row stride ldw), x contiguous. The rows go in chunks, at least
// kGemvChunkRows long and at most kGemvMaxChunks of them (which bounds the partial sums'
// memory), shared out between threads: each chunk streams its rows whole, into its own
// partial sum, and the partials are added in chunk order at the end. The chunks depend
// on the shape alone, so the result does not depend on the number of threads.
constexpr int64_t kGemvChunkRows = 512, kGemvMaxChunks = 64;
void gemv_cols_f32(int64_t rows, int64_t cols, float alpha, const float* W, int64_t ldw, const float* x, float beta,
                   float* y, int64_t inc_y) {
  const int64_t chunk_rows = std::max(kGemvChunkRows, (rows + kGemvMaxChunks - 1) / kGemvMaxChunks);
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<float> part(static_cast<size_t>(chunks * cols));
#pragma omp parallel for schedule(static) if (rows * cols >= kGemvParallelMin)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * chunk_rows, i1 = std::min(rows, i0 + chunk_rows);
    float* s = part.data() + c * cols;
#if defined(__AVX2__)
    sum_rows(W + i0 * ldw, ldw, x + i0, i1 - i0, cols, s);
#else
    for (int64_t j = 0; j < cols; ++j) s[j] = 0.0f;
    for (int64_t i = i0; i < i1; ++i)
      if (x[i] != 0.0f)  // as sum_rows: a zero term is not read
        for (int64_t j = 0; j < cols; ++j) s[j] += W[i * ldw + j] * x[i];
#endif
  }
  for (int64_t c = 1; c < chunks; ++c)
    for (int64_t j = 0; j < cols; ++j) part[static_cast<size_t>(j)] += part[static_cast<size_t>(c * cols + j)];
  scale_into(part.data(), cols, alpha, beta, y, inc_y);
}

// x as a contiguous array: itself where inc is 1, else gathered into `buf`.
const float* contiguous(const float* x, int64_t n, int64_t inc, std::vector<float>& buf) {
  if (inc == 1) return x;
  buf.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) buf[static_cast<size_t>(i)] = x[i * inc];
  return buf.data();
}

// C = alpha * op(A) op(B) + beta * C where one of M and N is 1 (K > 0), in float32.
void gemv_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
              const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  std::vector<float> buf;
  if (M == 1) {  // C[0, :] = alpha * a op(B) + beta * C[0, :], a the single row of op(A)
    const float* a = contiguous(A, K, ta ? lda : 1, buf);
    if (tb) gemv_rows_f32(N, K, alpha, B, ldb, a, beta, C, 1);  // B stored [N, K]: C = B a
    else gemv_cols_f32(K, N, alpha, B, ldb, a, beta, C, 1);     // B stored [K, N]: C = B^T a
  } else {  // N == 1: C[:, 0] = alpha * op(A) b + beta * C[:, 0], b the single column of op(B)
    const float* b = contiguous(B, K, tb ? 1 : ldb, buf);
    if (ta) gemv_cols_f32(K, M, alpha, A, lda, b, beta, C, ldc);  // A stored [K, M]
    else gemv_rows_f32(M, K, alpha, A, lda, b, beta, C, ldc);     // A stored [M, K]
  }
}

template <typename T> struct Blas;
template <> struct Blas<float> {
  static constexpr auto gemm = cblas_sgemm;
  static constexpr auto gemv = cblas_sgemv;
};
template <> struct Blas<double> {
  static constexpr auto gemm = cblas_dgemm;
  static constexpr auto gemv = cblas_dgemv;
};

int i32(int64_t v) { return static_cast<int>(v); }

}  // namespace

const char* blas_threading() {
  switch (openblas_get_parallel()) {
    case 0: return "sequential";
    case 1: return "pthreads";
    default: return "OpenMP";
  }
}

template <typename T>
void gemm_cpu(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda, const T* B,
              int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;  // nothing to write (BLAS returns at once; oneDNN's matmul would not)
  if constexpr (std::is_same_v<T, float>) {
    if ((M == 1 || N == 1) && K > 0) return gemv_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  if (M == 1 && K > 0) {
    // C[0, :] = alpha * a * op(B) + beta * C[0, :], a the single row of op(A).
    const int64_t inc_a = ta ? lda : 1;
    if (tb)  // op(B) = B^T with B stored [N, K]: C = B a
      Blas<T>::gemv(CblasRowMajor, CblasNoTrans, i32(N), i32(K), alpha, B, i32(ldb), A, i32(inc_a), beta, C, 1);
    else  // B stored [K, N]: C = B^T a
      Blas<T>::gemv(CblasRowMajor, CblasTrans, i32(K), i32(N), alpha, B, i32(ldb), A, i32(inc_a), beta, C, 1);
    return;
  }
  if (N == 1 && K > 0) {
    // C[:, 0] = alpha * op(A) b + beta * C[:, 0], b the single column of op(B).
    const int64_t inc_b = tb ? 1 : ldb;
    if (ta)  // A stored [K, M]
      Blas<T>::gemv(CblasRowMajor, CblasTrans, i32(K), i32(M), alpha, A, i32(lda), B, i32(inc_b), beta, C, i32(ldc));
    else  // A stored [M, K]
      Blas<T>::gemv(CblasRowMajor, CblasNoTrans, i32(M), i32(K), alpha, A, i32(lda), B, i32(inc_b), beta, C, i32(ldc));
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (K > 0 && gemm_dnnl_available())
      return gemm_dnnl(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  Blas<T>::gemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, i32(M), i32(N), i32(K),
                alpha, A, i32(lda), B, i32(ldb), beta, C, i32(ldc));
}

template void gemm_cpu<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                              int64_t, float, float*, int64_t);
template void gemm_cpu<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t, const double*,
                               int64_t, double, double*, int64_t);

}  // namespace kernels
