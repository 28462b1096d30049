// The row-major GEMM wrapper against a naive triple loop, for every transpose
// combination, with padded leading dimensions, including the single-row and
// single-column shapes that go to GEMV (the engine's own for float32, OpenBLAS's for
// float64). float32 products of more than one row and column go to oneDNN's matmul in
// builds with oneDNN, float64 to OpenBLAS: all are checked here.
#include <cmath>
#include <limits>

#include "kernels/gemm.h"
#include "tests/test_util.h"

namespace {

template <typename T> void check(bool ta, bool tb, int64_t M, int64_t N, int64_t K, bool beta_zero = false) {
  const int64_t pad = 3;
  const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  const auto A = testing_util::randn({(ta ? K : M) * lda}, 1).template to_vector<double>();
  const auto B = testing_util::randn({(tb ? N : K) * ldb}, 2).template to_vector<double>();
  const auto C0 = testing_util::randn({M * ldc}, 3).template to_vector<double>();
  std::vector<T> a(A.begin(), A.end()), b(B.begin(), B.end()), c(C0.begin(), C0.end());
  const T alpha = T(0.7), beta = beta_zero ? T(0) : T(-0.3);
  // beta = 0: C is written, never read (BLAS): NaN there must not reach the result.
  if (beta_zero)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c[i * ldc + j] = std::numeric_limits<T>::quiet_NaN();
  kernels::gemm_cpu<T>(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += static_cast<double>(ta ? a[k * lda + i] : a[i * lda + k]) * (tb ? b[j * ldb + k] : b[k * ldb + j]);
      const double want = alpha * acc + (beta_zero ? 0.0 : beta * static_cast<double>(static_cast<T>(C0[i * ldc + j])));
      // float32: rounding grows with the length of the sums (K up to a few hundred here).
      const double tol = (sizeof(T) == 4 ? 1e-5 * std::sqrt(static_cast<double>(K)) : 1e-12) * (1 + std::fabs(want));
      EXPECT_NEAR(c[i * ldc + j], want, tol)
          << "ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K << " at " << i << "," << j;
    }
  // Padding columns of C are untouched.
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = N; j < ldc; ++j) EXPECT_EQ(c[i * ldc + j], static_cast<T>(C0[i * ldc + j]));
}

// f(ta, tb, beta_zero) for every transpose combination, with and without beta.
template <typename F> void for_every_layout(F f) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool beta_zero : {false, true}) f(ta, tb, beta_zero);
}

}  // namespace

TEST(Gemm, MatchesNaiveProductForEveryLayout) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int64_t M : {1, 3})
        for (int64_t N : {1, 4})
          for (int64_t K : {1, 5}) {
            check<float>(ta, tb, M, N, K);
            check<double>(ta, tb, M, N, K);
          }
}

// Shapes large enough for the blocked kernels' main loops and their tails (sizes that are
// no multiple of 16 or 64), for every transpose, with and without beta.
TEST(Gemm, LargerShapesMatchNaiveProductForEveryLayout) {
  for_every_layout([](bool ta, bool tb, bool beta_zero) {
    check<float>(ta, tb, 67, 130, 257, beta_zero);
    check<float>(ta, tb, 2, 1000, 96, beta_zero);
    check<double>(ta, tb, 67, 130, 257, beta_zero);
  });
}

// The float32 GEMV kernels (a single row or column): rows in blocks of 4 and a remainder,
// 16-column steps with a masked tail; transposed, rows in chunks (up to the cap on their
// number) four at a time with a remainder; large enough to run on several threads, and
// small ones on one.
TEST(Gemm, SingleRowAndColumnProductsMatchNaiveProduct) {
  for_every_layout([](bool ta, bool tb, bool beta_zero) {
    check<float>(ta, tb, 1, 1030, 777, beta_zero);
    check<float>(ta, tb, 1030, 1, 777, beta_zero);
    check<float>(ta, tb, 1, 7, 23, beta_zero);
    check<float>(ta, tb, 13, 1, 9, beta_zero);
    check<float>(ta, tb, 1, 1, 300, beta_zero);
    check<float>(ta, tb, 1, 5, 40000, beta_zero);  // transposed: 64 chunks of 625 rows (the cap)
    check<float>(ta, tb, 5, 1, 40000, beta_zero);
  });
}

// Empty products on shapes that take oneDNN's blocked kernels: C untouched where it has no
// element to write, beta * C where the sum over k is empty (K = 0).
TEST(Gemm, EmptyProductsOnLargeShapes) {
  std::vector<float> a(64 * 1024, 1.0f), b(1024 * 512, 1.0f), c(64 * 512, 7.0f);
  kernels::gemm_cpu<float>(false, true, 0, 512, 1024, 1.0f, a.data(), 1024, b.data(), 1024, 0.0f, c.data(), 512);
  kernels::gemm_cpu<float>(false, true, 64, 0, 1024, 1.0f, a.data(), 1024, b.data(), 1024, 0.0f, c.data(), 512);
  for (float v : c) ASSERT_EQ(v, 7.0f);
  kernels::gemm_cpu<float>(false, true, 64, 512, 0, 1.0f, a.data(), 1024, b.data(), 1024, 0.5f, c.data(), 512);
  for (float v : c) ASSERT_EQ(v, 3.5f);
}
