// Row-major GEMM: C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
// lda/ldb/ldc are row strides of the row-major arrays as stored (before op).
// The CPU version calls CBLAS with CblasRowMajor, so no layout swap happens here.
#pragma once

#include <cstdint>

namespace kernels {

template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace kernels
