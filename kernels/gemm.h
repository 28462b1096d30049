// Row-major GEMM: C[M,N] = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T.
// lda/ldb/ldc are row strides of the row-major arrays as stored (before op).
// The CPU version calls CBLAS with CblasRowMajor, so no layout swap happens here.
#pragma once

#include <cstdint>

namespace kernels {

// float32 products with more than one row and one column go to oneDNN's matmul where the
// build has oneDNN (faster than OpenBLAS on AlexNet's fully connected layers); a single
// row or column goes to GEMV; the rest, float64 included, to OpenBLAS's GEMM.
template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);
// How the linked OpenBLAS runs its threads: "OpenMP" (the engine's pool, as it should),
// "pthreads" (a second pool competing with OpenMP's for the cores) or "sequential".
const char* blas_threading();
// float32 through oneDNN's matmul primitive, same contract (kernels/cpu/gemm_dnnl.cpp).
// Available only in builds with oneDNN (gemm_dnnl_available()); otherwise it throws.
bool gemm_dnnl_available();
void gemm_dnnl(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

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
// The tiled kernels' own code (gemm_tiled_cuda's launch plan, blocks and warps) run on
// host threads, on host pointers, as on a GPU with `multiprocessors` multiprocessors
// (which decides where K is split): for tests on machines without a GPU. Slow; builds
// without CUDA throw.
template <typename T>
void gemm_tiled_cuda_on_host(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                             int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, int multiprocessors);
void set_cuda_allow_tf32(bool allow);
bool cuda_allow_tf32();

}  // namespace kernels
