// Row-major GEMM through CBLAS (OpenBLAS), or oneDNN's matmul for float32 (see gemm.h). A
// product with a single row or column is a matrix-vector product and goes to GEMV: GEMM
// would first pack (copy) the whole other matrix, which at batch 1 costs as much as the
// product itself — AlexNet's fc6 weights alone are 151 MB.
#include "kernels/gemm.h"

#include <cblas.h>

#include <type_traits>

namespace kernels {
namespace {

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
