// The two CPU convolution paths agree: oneDNN (float32, used by conv2d when the build
// has it) against im2col + GEMM (the reference, which the f64 gradient checks cover),
// forward and every gradient, on odd shapes, strides, paddings and batch sizes. (With at
// most 4 input channels oneDNN's entry point takes the data gradient from im2col + GEMM.)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "kernels/common.h"
#include "kernels/conv.h"
#include "tests/test_util.h"

using namespace engine;

namespace {

using Case = testing_util::ConvCase;
const auto shape_of = testing_util::conv_shape;

// Random inputs from `seed`; the reference results (im2col + GEMM) and oneDNN's, forward
// and all three gradients, compared.
struct Compared {
  Tensor x, w, b, gy, gx, gw, gb;  // inputs, and the reference gradients
  double tol_x = 0, tol_w = 0;
};
Compared compare_forward_and_backward(const kernels::Conv2dShape& s, uint64_t seed) {
  Compared c;
  c.x = testing_util::randn({s.N, s.C, s.H, s.W}, seed, DType::F32);
  c.w = testing_util::randn({s.Co, s.C, s.kh, s.kw}, seed + 1, DType::F32);
  c.b = testing_util::randn({s.Co}, seed + 2, DType::F32);
  c.gy = testing_util::randn({s.N, s.Co, s.Ho, s.Wo}, seed + 3, DType::F32);
  const float *x = c.x.data<float>(), *w = c.w.data<float>(), *gy = c.gy.data<float>();
  Tensor y1 = Tensor::empty(c.gy.shape()), y2 = Tensor::empty(c.gy.shape());
  kernels::conv2d_forward_cpu<float>(x, w, c.b.data<float>(), y1.data<float>(), s);
  kernels::conv2d_forward_dnnl(x, w, c.b.data<float>(), y2.data<float>(), s);
  EXPECT_ALL_CLOSE(y2, y1, 1e-4, 2e-5 * std::sqrt(static_cast<double>(s.C * s.kh * s.kw)));

  c.gx = Tensor::empty(c.x.shape()), c.gw = Tensor::empty(c.w.shape()), c.gb = Tensor::empty(c.b.shape());
  Tensor gx2 = Tensor::full(c.x.shape(), 7.0), gw2 = Tensor::full(c.w.shape(), 7.0);
  Tensor gb2 = Tensor::full(c.b.shape(), 7.0);
  kernels::conv2d_backward_cpu<float>(x, w, gy, c.gx.data<float>(), c.gw.data<float>(), c.gb.data<float>(), s);
  kernels::conv2d_backward_dnnl(x, w, gy, gx2.data<float>(), gw2.data<float>(), gb2.data<float>(), s);
  c.tol_x = 2e-5 * std::sqrt(static_cast<double>(s.Co * s.kh * s.kw));
  c.tol_w = 2e-5 * std::sqrt(static_cast<double>(s.N * s.Ho * s.Wo));
  EXPECT_ALL_CLOSE(gx2, c.gx, 1e-4, c.tol_x);
  EXPECT_ALL_CLOSE(gw2, c.gw, 1e-4, c.tol_w);
  EXPECT_ALL_CLOSE(gb2, c.gb, 1e-4, c.tol_w);
  return c;
}

class ConvBackends : public ::testing::TestWithParam<Case> {};

TEST_P(ConvBackends, OneDnnMatchesIm2col) {
  if (!kernels::conv2d_dnnl_available()) GTEST_SKIP() << "built without oneDNN";
  const kernels::Conv2dShape s = shape_of(GetParam());
  const Compared c = compare_forward_and_backward(s, 1);

  // Each gradient alone (the others not requested).
  Tensor only_gx = Tensor::full(c.x.shape(), 7.0), only_gw = Tensor::full(c.w.shape(), 7.0);
  Tensor only_gb = Tensor::full(c.b.shape(), 7.0);
  const float *x = c.x.data<float>(), *w = c.w.data<float>(), *gy = c.gy.data<float>();
  kernels::conv2d_backward_dnnl(nullptr, w, gy, only_gx.data<float>(), nullptr, nullptr, s);
  kernels::conv2d_backward_dnnl(x, nullptr, gy, nullptr, only_gw.data<float>(), nullptr, s);
  kernels::conv2d_backward_dnnl(nullptr, nullptr, gy, nullptr, nullptr, only_gb.data<float>(), s);
  EXPECT_ALL_CLOSE(only_gx, c.gx, 1e-4, c.tol_x);
  EXPECT_ALL_CLOSE(only_gw, c.gw, 1e-4, c.tol_w);
  EXPECT_ALL_CLOSE(only_gb, c.gb, 1e-4, c.tol_w);
}

// conv2d_relu against conv2d then relu, as ops: the ReLU is applied by oneDNN's
// convolution (a post-op), which must give the same bits, NaN included (the input has
// one: it spreads through every window that holds it); with a graph, one node against
// two, and every gradient agrees bit for bit too.
TEST_P(ConvBackends, ReluFusedEqualsConvThenRelu) {
  const kernels::Conv2dShape s = shape_of(GetParam());
  Tensor x = testing_util::randn({s.N, s.C, s.H, s.W}, 11, DType::F32);
  x.data<float>()[x.numel() / 2] = std::nanf("");
  const Tensor w = testing_util::randn({s.Co, s.C, s.kh, s.kw}, 12, DType::F32);
  const Tensor b = testing_util::randn({s.Co}, 13, DType::F32);
  const Size2 stride(s.sh, s.sw), pad(s.ph, s.pw);
  {
    NoGradGuard ng;
    const Tensor fused = conv2d_relu(x, w, b, stride, pad), apart = relu(conv2d(x, w, b, stride, pad));
    ASSERT_EQ(fused.shape(), apart.shape());
    const float *f = fused.data<float>(), *a = apart.data<float>();
    int64_t nans = 0, positive = 0, zero = 0;
    for (int64_t i = 0; i < fused.numel(); ++i) {
      nans += std::isnan(a[i]);
      positive += a[i] > 0;
      zero += a[i] == 0;
      ASSERT_TRUE(std::memcmp(&f[i], &a[i], sizeof(float)) == 0) << "at " << i << ": " << f[i] << " vs " << a[i];
    }
    EXPECT_GT(positive, 0);
    EXPECT_GT(zero, 0);
    RecordProperty("nans", static_cast<int>(nans));
  }
  const Tensor xs = testing_util::randn({s.N, s.C, s.H, s.W}, 14, DType::F32);
  const Tensor gy = testing_util::randn({s.N, s.Co, s.Ho, s.Wo}, 15, DType::F32);
  Tensor x1 = xs.detach().requires_grad_(), x2 = xs.detach().requires_grad_();
  Tensor w1 = w.detach().requires_grad_(), w2 = w.detach().requires_grad_();
  Tensor b1 = b.detach().requires_grad_(), b2 = b.detach().requires_grad_();
  const Tensor y1 = conv2d_relu(x1, w1, b1, stride, pad), y2 = relu(conv2d(x2, w2, b2, stride, pad));
  sum(y1 * gy).backward();
  sum(y2 * gy).backward();
  EXPECT_ALL_CLOSE(y1, y2, 0, 0);
  EXPECT_ALL_CLOSE(x1.grad(), x2.grad(), 0, 0);
  EXPECT_ALL_CLOSE(w1.grad(), w2.grad(), 0, 0);
  EXPECT_ALL_CLOSE(b1.grad(), b2.grad(), 0, 0);
}

// conv_relu_pool against conv2d_relu and max_pool2d one after the other (without a graph
// both run oneDNN's convolutions; the run keeps its results in the blocked layout between
// layers): the same bits. Layers with and without bias, pools with padding, ceil_mode and
// two in a row, an input with a NaN; run twice with new weights (the prepared run is kept).
TEST(ConvReluPool, RunEqualsTheOpsOneAfterAnother) {
  auto conv = [](int64_t ci, int64_t co, int64_t k, int64_t st, int64_t pad, bool bias, uint64_t seed) {
    return testing_util::conv_layer(
        testing_util::randn({co, ci, k, k}, seed, DType::F32) * (1.0 / std::sqrt(double(ci * k * k))),
        bias ? testing_util::randn({co}, seed + 1, DType::F32) : Tensor(), st, pad);
  };
  const auto pool = testing_util::pool_layer;
  const std::vector<std::vector<ConvReluPoolLayer>> runs = {
      // AlexNet's features, smaller
      {conv(3, 16, 11, 4, 2, true, 1), pool(3, 2, 0, false), conv(16, 24, 5, 1, 2, true, 3), pool(3, 2, 0, false),
       conv(24, 32, 3, 1, 1, true, 5), conv(32, 16, 3, 1, 1, true, 7), pool(3, 2, 0, false)},
      // no bias; padded, ceil_mode and back-to-back pools; odd channel counts
      {conv(5, 7, 3, 1, 1, false, 9), pool(3, 2, 1, true), pool(2, 1, 0, false), conv(7, 9, 3, 2, 0, true, 11),
       pool(2, 2, 0, true)},
      // a batch of 16 with 64 channels: Winograd convolutions (on a CPU with AVX-512)
      {conv(64, 64, 3, 1, 1, true, 13), conv(64, 96, 3, 1, 1, false, 15), pool(3, 2, 0, false)}};
  const std::vector<std::vector<int64_t>> inputs = {{2, 3, 131, 127}, {2, 5, 37, 41}, {16, 64, 13, 13}};
  uint64_t seed = 50;
  for (size_t r = 0; r < runs.size(); ++r)
    for (int round = 0; round < 2; ++round) {
      SCOPED_TRACE(::testing::Message() << "run " << r << " round " << round);
      std::vector<ConvReluPoolLayer> layers = runs[r];
      for (ConvReluPoolLayer& l : layers)
        if (!l.pool) l.weight = l.weight * (1.0 + 0.5 * round);  // new weights in round 1
      Tensor x = testing_util::randn(inputs[r], ++seed, DType::F32);
      x.data<float>()[17] = std::nanf("");
      NoGradGuard ng;
      const Tensor run = conv_relu_pool(x, layers);
      Tensor h = x;
      for (const ConvReluPoolLayer& l : layers)
        h = l.pool ? max_pool2d(h, l.kernel, l.stride, l.padding, l.ceil_mode)
                   : conv2d_relu(h, l.weight, l.bias, l.stride, l.padding);
      ASSERT_EQ(run.shape(), h.shape());
      const float *a = run.data<float>(), *b = h.data<float>();
      int64_t positive = 0;
      for (int64_t i = 0; i < run.numel(); ++i) {
        positive += b[i] > 0;
        ASSERT_TRUE(std::memcmp(&a[i], &b[i], sizeof(float)) == 0) << "at " << i << ": " << a[i] << " vs " << b[i];
      }
      EXPECT_GT(positive, run.numel() / 10);
    }
}

// A max-pool first has no ReLU before it to keep NaN out: refused.
TEST(ConvReluPool, MaxPoolFirstIsRefused) {
  const ConvReluPoolLayer p = testing_util::pool_layer(2, 1);
  const ConvReluPoolLayer c = testing_util::conv_layer(testing_util::randn({4, 3, 3, 3}, 1, DType::F32));
  EXPECT_THROW(conv_relu_pool(testing_util::randn({1, 3, 8, 8}, 2, DType::F32), {p, c}), std::exception);
}

// oneDNN's path keeps its primitives per shape and its blocked copies in buffers shared
// by all shapes (the data gradient's copy of gy is used again by the weight gradient):
// shapes taken in turn, small after large, each time with new data, still agree with
// im2col + GEMM.
TEST(ConvBackendsReuse, InterleavedShapesWithNewDataMatchIm2col) {
  if (!kernels::conv2d_dnnl_available()) GTEST_SKIP() << "built without oneDNN";
  const Case cases[] = {Case{2, 16, 13, 13, 24, 3, 3, 1, 1, 1, 1}, Case{3, 3, 45, 41, 32, 11, 11, 4, 4, 2, 2},
                        Case{1, 24, 9, 9, 16, 3, 3, 2, 2, 0, 0}};
  uint64_t seed = 100;
  for (int round = 0; round < 3; ++round)
    for (const Case& c : cases) {
      compare_forward_and_backward(shape_of(c), seed);
      seed += 4;
    }
}

// The three algorithm settings on 3x3 stride-1 layers. kAuto: oneDNN's choice per shape
// (Winograd for some of these, as for AlexNet's conv3-conv5 from batch 16 on); kWinograd
// must take Winograd in all three passes on a CPU with AVX-512 (oneDNN's names for the
// kernels say so), kDirect never. Winograd differs from the direct sum by rounding only:
// every setting matches im2col + GEMM, and a conv_relu_pool run is still the ops one
// after another, bit for bit.
TEST(ConvBackendsAlgorithm, EverySettingMatchesIm2col) {
  if (!kernels::conv2d_dnnl_available()) GTEST_SKIP() << "built without oneDNN";
  struct Restore {
    ~Restore() { kernels::set_dnnl_conv_algorithm(kernels::DnnlConvAlgorithm::kAuto); }
  } restore;
  // The last has no Winograd kernel (5x5): kWinograd falls back to the direct one there.
  const Case cases[] = {Case{16, 64, 13, 13, 64, 3, 3, 1, 1, 1, 1}, Case{2, 192, 13, 13, 384, 3, 3, 1, 1, 1, 1},
                        Case{3, 32, 15, 10, 48, 3, 3, 1, 1, 1, 1}, Case{2, 16, 13, 13, 32, 5, 5, 1, 1, 2, 2}};
  const bool avx512 = __builtin_cpu_supports("avx512f");
  uint64_t seed = 300;
  for (auto algo : {kernels::DnnlConvAlgorithm::kAuto, kernels::DnnlConvAlgorithm::kWinograd,
                    kernels::DnnlConvAlgorithm::kDirect}) {
    kernels::set_dnnl_conv_algorithm(algo);
    ASSERT_EQ(kernels::dnnl_conv_algorithm(), algo);
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << testing_util::describe(c) << ", setting " << static_cast<int>(algo));
      const kernels::Conv2dShape s = shape_of(c);
      compare_forward_and_backward(s, seed);
      seed += 4;
      const kernels::DnnlConvImplementations impl = kernels::conv2d_dnnl_implementations(s, true);
      std::printf("setting %d, %s: forward %s, data gradient %s, weight gradient %s\n", static_cast<int>(algo),
                  testing_util::describe(c).c_str(), impl.forward.c_str(), impl.backward_data.c_str(),
                  impl.backward_weights.c_str());
      const bool has_wino = c.kh == 3;
      for (const std::string* name : {&impl.forward, &impl.backward_data, &impl.backward_weights}) {
        const bool wino = name->find("wino") != std::string::npos;
        if (algo == kernels::DnnlConvAlgorithm::kDirect || !has_wino) {
          EXPECT_FALSE(wino) << *name;
        } else if (algo == kernels::DnnlConvAlgorithm::kWinograd && avx512) {
          EXPECT_TRUE(wino) << *name;
        }
      }
    }
    // A run through the blocked chain under this setting.
    const Tensor w1 = testing_util::randn({64, 64, 3, 3}, ++seed, DType::F32) * (1.0 / 24.0);
    const ConvReluPoolLayer c1 = testing_util::conv_layer(w1, testing_util::randn({64}, ++seed, DType::F32), 1, 1);
    const ConvReluPoolLayer c2 =
        testing_util::conv_layer(testing_util::randn({32, 64, 3, 3}, ++seed, DType::F32) * (1.0 / 24.0), Tensor(), 1, 1);
    const ConvReluPoolLayer pool = testing_util::pool_layer(3, 2);
    const Tensor x = testing_util::randn({16, 64, 13, 13}, ++seed, DType::F32);
    NoGradGuard ng;
    const Tensor run = conv_relu_pool(x, {c1, c2, pool});
    const Tensor h = max_pool2d(conv2d_relu(conv2d_relu(x, c1.weight, c1.bias, 1, 1), c2.weight, Tensor(), 1, 1), 3, 2);
    ASSERT_EQ(run.shape(), h.shape());
    EXPECT_EQ(std::memcmp(run.data<float>(), h.data<float>(), sizeof(float) * static_cast<size_t>(run.numel())), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ConvBackends,
    ::testing::Values(Case{2, 3, 7, 9, 4, 3, 2, 1, 1, 0, 0},      // odd, non-square kernel
                      Case{1, 3, 67, 67, 16, 11, 11, 4, 4, 2, 2},  // AlexNet conv1, smaller
                      Case{3, 5, 13, 14, 8, 3, 3, 2, 1, 1, 1},     // non-square stride
                      Case{2, 16, 13, 13, 24, 1, 1, 1, 1, 0, 0},   // pointwise (SqueezeNet)
                      Case{2, 16, 13, 13, 24, 3, 3, 1, 1, 1, 1},   // SqueezeNet expand3x3
                      Case{1, 4, 8, 10, 6, 5, 3, 3, 2, 2, 1}),     // uneven: floor drops a column
    [](const auto& info) { return "Case" + std::to_string(info.index); });

}  // namespace
