// The autograd engine: accumulation, fan-out, no-grad scope, detach, graph freeing,
// explicit upstream gradients, and computing only the gradients that are needed.
#include "tests/test_util.h"

using namespace engine;
using testing_util::randn;

TEST(Autograd, ScalarBackwardAndAccumulationAcrossCalls) {
  Tensor x = randn({3, 4}, 10).requires_grad_();
  sum(mul(x, x)).backward();  // d/dx sum(x^2) = 2x
  EXPECT_ALL_CLOSE(x.grad(), mul(x.detach(), 2.0), 1e-15, 0);
  sum(x).backward();  // gradients accumulate: 2x + 1
  EXPECT_ALL_CLOSE(x.grad(), add(mul(x.detach(), 2.0), 1.0), 1e-15, 0);
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Autograd, FanOutAccumulates) {
  Tensor x = randn({5}, 11).requires_grad_();
  Tensor a = relu(x), b = mul(x, 3.0);
  Tensor y = add(mul(x, a), b);  // x used three times
  sum(y).backward();
  // d/dx (x*relu(x) + 3x) = 2*relu(x) for x>0, 0 otherwise, + 3
  const auto xs = x.to_vector<double>();
  const auto g = x.grad().to_vector<double>();
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_NEAR(g[i], (xs[i] > 0 ? 2 * xs[i] : 0.0) + 3.0, 1e-12);
}

TEST(Autograd, ExplicitUpstreamGradient) {
  Tensor x = randn({2, 3}, 12).requires_grad_();
  Tensor y = mul(x, 4.0);
  Tensor gy = randn({2, 3}, 13);
  y.backward(gy);
  EXPECT_ALL_CLOSE(x.grad(), mul(gy, 4.0), 1e-15, 0);
  Tensor z = mul(x, 2.0);
  EXPECT_THROW(z.backward(), Error);                     // not a scalar
  EXPECT_THROW(z.backward(randn({3, 2}, 14)), Error);    // wrong shape
}

TEST(Autograd, NoGradGuardRecordsNothing) {
  Tensor x = randn({4}, 15).requires_grad_();
  {
    NoGradGuard guard;
    Tensor y = mul(x, x);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_EQ(y.grad_fn(), nullptr);
    EXPECT_FALSE(GradMode::enabled());
  }
  EXPECT_TRUE(GradMode::enabled());
  EXPECT_TRUE(mul(x, x).requires_grad());
}

TEST(Autograd, DetachCutsTheGraph) {
  Tensor x = randn({4}, 16).requires_grad_();
  Tensor d = mul(x, 2.0).detach();
  EXPECT_FALSE(d.requires_grad());
  Tensor y = add(mul(x, d), x);
  sum(y).backward();
  EXPECT_ALL_CLOSE(x.grad(), add(d, 1.0), 1e-15, 0);  // d is a constant
}

TEST(Autograd, GraphIsFreedAfterBackward) {
  Tensor x = randn({3}, 17).requires_grad_();
  Tensor y = sum(mul(x, x));
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();  // allowed once more
  EXPECT_ALL_CLOSE(x.grad(), mul(x.detach(), 4.0), 1e-14, 0);
  try {
    y.backward();
    FAIL() << "a third backward through a freed graph must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("second time"), std::string::npos) << e.what();
  }
}

TEST(Autograd, SavedTensorsReleasedAfterBackward) {
  Tensor x = randn({64, 64}, 18).requires_grad_();
  Tensor h = relu(x);
  std::weak_ptr<TensorImpl> saved_input;
  {
    Tensor w = randn({32, 64}, 19).requires_grad_();
    Tensor y = linear(h, w);
    saved_input = h.impl_ptr();
    sum(y).backward();
  }
  h = Tensor();
  // Nothing in the freed graph keeps relu's output alive any more.
  EXPECT_TRUE(saved_input.expired());
}

TEST(Autograd, OnlyNeededGradientsAreComputed) {
  // The saliency case: parameters frozen, only the input requires a gradient.
  Tensor x = randn({2, 3, 9, 7}, 20).requires_grad_();
  Tensor w = randn({4, 3, 3, 3}, 21), b = randn({4}, 22);
  Tensor w2 = randn({5, 4 * 7 * 5}, 23), b2 = randn({5}, 24);
  Tensor y = linear(flatten(relu(conv2d(x, w, b)), 1), w2, b2);
  sum(y).backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  EXPECT_FALSE(w2.grad().defined());
  // And the reverse: a frozen input gets no gradient while the weights do.
  Tensor x2 = randn({2, 3, 9, 7}, 25);
  Tensor w3 = randn({4, 3, 3, 3}, 26).requires_grad_();
  sum(conv2d(x2, w3)).backward();
  EXPECT_TRUE(w3.grad().defined());
  EXPECT_FALSE(x2.grad().defined());
  EXPECT_FALSE(x2.requires_grad());
}

TEST(Autograd, BackwardWithoutGradThrows) {
  Tensor x = randn({3}, 27);
  EXPECT_THROW(sum(x).backward(), Error);
  Tensor y = randn({3}, 28).requires_grad_();
  EXPECT_THROW(mul(y, 2.0).requires_grad_(), Error);  // non-leaf
}
