// The row-major GEMM wrapper against a naive triple loop, for every transpose
// combination, with padded leading dimensions, including the single-row and
// single-column shapes that go to GEMV.
#include <cmath>

#include "kernels/gemm.h"
#include "tests/test_util.h"

namespace {

template <typename T> void check(bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  const int64_t pad = 3;
  const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  const auto A = testing_util::randn({(ta ? K : M) * lda}, 1).template to_vector<double>();
  const auto B = testing_util::randn({(tb ? N : K) * ldb}, 2).template to_vector<double>();
  const auto C0 = testing_util::randn({M * ldc}, 3).template to_vector<double>();
  std::vector<T> a(A.begin(), A.end()), b(B.begin(), B.end()), c(C0.begin(), C0.end());
  const T alpha = T(0.7), beta = T(-0.3);
  kernels::gemm_cpu<T>(ta, tb, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k)
        acc += static_cast<double>(ta ? a[k * lda + i] : a[i * lda + k]) * (tb ? b[j * ldb + k] : b[k * ldb + j]);
      const double want = alpha * acc + beta * static_cast<double>(static_cast<T>(C0[i * ldc + j]));
      EXPECT_NEAR(c[i * ldc + j], want, (sizeof(T) == 4 ? 1e-5 : 1e-12) * (1 + std::fabs(want)))
          << "ta " << ta << " tb " << tb << " M " << M << " N " << N << " K " << K << " at " << i << "," << j;
    }
  // Padding columns of C are untouched.
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = N; j < ldc; ++j) EXPECT_EQ(c[i * ldc + j], static_cast<T>(C0[i * ldc + j]));
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
