// The row-major GEMM wrapper against a naive triple loop, for every transpose
// combination, with padded leading dimensions, including the single-row and
// single-column shapes that go to GEMV (the engine's own for float32, OpenBLAS's for
// float64). float32 products of more than one row and column go to oneDNN's matmul in
// builds with oneDNN, float64 to OpenBLAS: all are checked here.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

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

// The transposed single-row product (linear's data gradient at batch 1) does not read the
// rows of B whose coefficient is zero: with half the coefficients zero (runs of them, and
// negative zeros), the result is the same bits as the product over the other rows alone
// (one chunk of rows, so the same sums in the same order), and agrees with the naive
// product over many chunks.
TEST(Gemm, TransposedSingleRowProductSkipsZeroCoefficientsExactly) {
  for (int64_t K : {int64_t(500), int64_t(40000)}) {
    SCOPED_TRACE("K " + std::to_string(K));
    const int64_t N = 777, ldb = N + 3;
    const auto A = testing_util::randn({K}, 11).to_vector<float>();
    const auto B = testing_util::randn({K * ldb}, 12).to_vector<float>();
    std::vector<float> a(A.begin(), A.end());
    for (int64_t k = 0; k < K; ++k)
      if (k % 3 == 1 || (k / 7) % 4 == 2) a[k] = (k % 2 == 0) ? 0.0f : -0.0f;
    std::vector<float> c(N, 0.0f);
    kernels::gemm_cpu<float>(false, false, 1, N, K, 0.7f, a.data(), K, B.data(), ldb, 0.0f, c.data(), N);
    std::vector<float> a2, b2;
    for (int64_t k = 0; k < K; ++k)
      if (a[k] != 0.0f) {
        a2.push_back(a[k]);
        b2.insert(b2.end(), B.begin() + k * ldb, B.begin() + (k + 1) * ldb);
      }
    ASSERT_GT(a2.size(), 0u);
    ASSERT_LT(a2.size(), static_cast<size_t>(K / 2 + K / 8));
    if (K <= 512) {
      std::vector<float> c2(N, 0.0f);
      const int64_t K2 = static_cast<int64_t>(a2.size());
      kernels::gemm_cpu<float>(false, false, 1, N, K2, 0.7f, a2.data(), K2, b2.data(), ldb, 0.0f, c2.data(), N);
      EXPECT_EQ(std::memcmp(c.data(), c2.data(), c.size() * sizeof(float)), 0);
    }
    for (int64_t j = 0; j < N; ++j) {
      double want = 0;
      for (int64_t k = 0; k < K; ++k) want += static_cast<double>(a[k]) * B[k * ldb + j];
      want *= 0.7;
      EXPECT_NEAR(c[j], want, 1e-5 * std::sqrt(static_cast<double>(K)) * (1 + std::fabs(want))) << "column " << j;
    }
  }
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
