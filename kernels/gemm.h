// Row-major GEMM: C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
// lda/ldb/ldc are row strides of the row-major arrays as stored (before op).
// The CPU version calls CBLAS with CblasRowMajor, so no layout swap happens here.
#pragma once

#include <cstdint>

namespace kernels {

template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// CUDA, same row-major contract, device pointers (kernels/cuda/gemm.cu).
// gemm_cuda calls cuBLAS: a row-major C[M,N] is the column-major C^T[N,M], so it computes
// C^T = op(B)^T * op(A)^T by passing B before A with M and N swapped (see the .cu file).
// FP32 math by default; TF32 tensor cores only after set_cuda_allow_tf32(true), as
// torch.backends.cuda.matmul.allow_tf32.
template <typename T>
void gemm_cuda(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
// The handwritten tiled GEMM (shared-memory tiles, register blocking): the fallback
// when ENGINE_CUDA_GEMM=tiled, and the subject of the benchmark against cuBLAS.
template <typename T>
void gemm_tiled_cuda(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                     const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
void set_cuda_allow_tf32(bool allow);
bool cuda_allow_tf32();

}  // namespace kernels
