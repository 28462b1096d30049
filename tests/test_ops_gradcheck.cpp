// Every op in engine/ops.h against central differences in float64: the analytic
// gradient of sum(op(inputs) * R) for a fixed random R must match the numeric one for
// every input that requires a gradient (x, weight and bias of the multi-input ops).
// Shapes are small, odd and non-square; batch 1 and more than 1. Piecewise-linear ops
// (relu, max_pool2d) get inputs far from their kinks and ties (testing_util::distinct).
// Beside dropout's checks: the float dropout and uniform kernels, which draw 8 Philox
// counters at a time, against the formulas they implement, bit for bit.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/common.h"
#include "kernels/elementwise.h"
#include "tests/test_util.h"

using namespace engine;
using testing_util::distinct;
using testing_util::randn;

namespace {

// Requires a gradient on a fresh leaf.
Tensor leaf(Tensor t) { return t.requires_grad_(); }

// PyTorch's output-size rule for pooling (torch/nn/functional docs, MaxPool2d):
// floor/ceil((in + 2p - k) / s) + 1, and with ceil_mode the last window must start
// inside the input or its left padding. Written here independently of kernels/common.h.
int64_t torch_pool_out(int64_t in, int64_t k, int64_t s, int64_t p, bool ceil_mode) {
  const double q = static_cast<double>(in + 2 * p - k) / static_cast<double>(s);
  int64_t out = static_cast<int64_t>(ceil_mode ? std::ceil(q) : std::floor(q)) + 1;
  if (ceil_mode && (out - 1) * s >= in + p) --out;
  return out;
}

void conv_check(const Shape& xs, const Shape& ws, bool bias, Size2 stride, Size2 padding,
                uint64_t seed) {
  Tensor x = leaf(randn(xs, seed));
  Tensor w = leaf(randn(ws, seed + 1));
  Tensor b = bias ? leaf(randn({ws[0]}, seed + 2)) : Tensor();
  const Tensor y = conv2d(x, w, b, stride, padding);
  ASSERT_EQ(y.shape(), (Shape{xs[0], ws[0], torch_pool_out(xs[2], ws[2], stride.h, padding.h, false),
                              torch_pool_out(xs[3], ws[3], stride.w, padding.w, false)}));
  EXPECT_GRADCHECK(
      [stride, padding](const TensorList& in) { return conv2d(in[0], in[1], in[2], stride, padding); },
      {x, w, b});
}

void pool_check(const Shape& xs, Size2 k, Size2 s, Size2 p, bool ceil_mode, uint64_t seed) {
  Tensor x = leaf(distinct(xs, seed));
  const Tensor y = max_pool2d(x, k, s, p, ceil_mode);
  const Size2 st = (s.h == 0 && s.w == 0) ? k : s;
  ASSERT_EQ(y.shape(), (Shape{xs[0], xs[1], torch_pool_out(xs[2], k.h, st.h, p.h, ceil_mode),
                              torch_pool_out(xs[3], k.w, st.w, p.w, ceil_mode)}));
  EXPECT_GRADCHECK([k, s, p, ceil_mode](const TensorList& in) { return max_pool2d(in[0], k, s, p, ceil_mode); },
                   {x});
}

void adaptive_check(const Shape& xs, Size2 out, uint64_t seed) {
  Tensor x = leaf(randn(xs, seed));
  const Tensor y = adaptive_avg_pool2d(x, out);
  ASSERT_EQ(y.shape(), (Shape{xs[0], xs[1], out.h, out.w}));
  EXPECT_GRADCHECK([out](const TensorList& in) { return adaptive_avg_pool2d(in[0], out); }, {x});
}

}  // namespace

// ---- conv2d ----------------------------------------------------------------------------

TEST(Conv2d, GradcheckStride1Pad0F64) { conv_check({2, 3, 7, 9}, {4, 3, 3, 3}, true, 1, 0, 100); }
TEST(Conv2d, GradcheckNoBiasF64) { conv_check({2, 3, 7, 9}, {4, 3, 3, 3}, false, 1, 1, 110); }
TEST(Conv2d, GradcheckStride2Pad1F64) { conv_check({2, 3, 7, 9}, {5, 3, 3, 3}, true, 2, 1, 120); }
TEST(Conv2d, GradcheckNonSquareStrideAndPadF64) {
  conv_check({2, 3, 7, 9}, {4, 3, 3, 3}, true, Size2(2, 1), Size2(1, 2), 130);
}
TEST(Conv2d, GradcheckNonSquareKernel3x2F64) {
  conv_check({2, 2, 6, 7}, {3, 2, 3, 2}, true, Size2(1, 2), Size2(0, 1), 140);
}
TEST(Conv2d, GradcheckBatch1F64) { conv_check({1, 3, 8, 5}, {2, 3, 3, 3}, true, 1, 1, 150); }
// Large kernel with stride 4 and padding 2, like AlexNet's first layer, scaled down.
TEST(Conv2d, GradcheckAlexNetLikeK5S3P2F64) { conv_check({1, 2, 11, 12}, {3, 2, 5, 5}, true, 3, 2, 155); }
// Kernel as large as the padded input: one output position.
TEST(Conv2d, GradcheckKernelCoversInputF64) { conv_check({2, 2, 3, 4}, {3, 2, 5, 4}, true, 1, Size2(1, 0), 157); }
// 1x1, stride 1, no padding: the pointwise path that skips im2col.
TEST(Conv2d, GradcheckPointwise1x1F64) { conv_check({2, 5, 4, 7}, {3, 5, 1, 1}, true, 1, 0, 160); }
TEST(Conv2d, GradcheckPointwise1x1NoBiasBatch1F64) { conv_check({1, 4, 3, 5}, {6, 4, 1, 1}, false, 1, 0, 165); }
// 1x1 with stride or padding goes through im2col again.
TEST(Conv2d, Gradcheck1x1Stride2F64) { conv_check({2, 3, 5, 6}, {4, 3, 1, 1}, true, 2, 0, 170); }
TEST(Conv2d, Gradcheck1x1Pad1F64) { conv_check({1, 3, 4, 3}, {2, 3, 1, 1}, true, 1, 1, 175); }

// Only some inputs require a gradient: the backward computes (and saves) only those.
TEST(Conv2d, GradcheckFrozenWeightF64) {
  Tensor x = leaf(randn({2, 3, 6, 5}, 180));
  const Tensor w = randn({4, 3, 3, 2}, 181), b = randn({4}, 182);
  EXPECT_GRADCHECK([](const TensorList& in) { return conv2d(in[0], in[1], in[2], 2, 1); }, {x, w, b});
}
TEST(Conv2d, GradcheckWeightOnlyF64) {
  const Tensor x = randn({2, 3, 6, 5}, 183);
  Tensor w = leaf(randn({4, 3, 3, 2}, 184));
  EXPECT_GRADCHECK([](const TensorList& in) { return conv2d(in[0], in[1], Tensor(), 1, 1); }, {x, w});
}
TEST(Conv2d, GradcheckBiasOnlyF64) {
  const Tensor x = randn({2, 3, 5, 5}, 185), w = randn({4, 3, 3, 3}, 186);
  Tensor b = leaf(randn({4}, 187));
  EXPECT_GRADCHECK([](const TensorList& in) { return conv2d(in[0], in[1], in[2]); }, {x, w, b});
}

// An empty batch contributes nothing: the weight gradient is zero, not whatever the
// allocator's cache held (a freed block of the same size, filled with 7s, comes first).
TEST(Conv2d, EmptyBatchGivesZeroGradients) {
  for (int64_t k : {3, 1}) {  // the im2col path and the pointwise one
    SCOPED_TRACE(::testing::Message() << "kernel " << k);
    { const Tensor junk = Tensor::full({4, 3, k, k}, 7.0, DType::F64); }
    Tensor w = leaf(randn({4, 3, k, k}, 190)), b = leaf(randn({4}, 191));
    const Tensor y = conv2d(Tensor::zeros({0, 3, 5, 5}, DType::F64), w, b);
    EXPECT_EQ(y.shape(), (Shape{0, 4, 6 - k, 6 - k}));
    sum(y).backward();
    EXPECT_ALL_CLOSE(w.grad(), Tensor::zeros(w.shape(), DType::F64), 0, 0);
    EXPECT_ALL_CLOSE(b.grad(), Tensor::zeros(b.shape(), DType::F64), 0, 0);
  }
}

// ---- linear ----------------------------------------------------------------------------

TEST(Linear, Gradcheck2dF64) {
  Tensor x = leaf(randn({4, 5}, 200)), w = leaf(randn({3, 5}, 201)), b = leaf(randn({3}, 202));
  EXPECT_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
}
TEST(Linear, Gradcheck2dNoBiasF64) {
  Tensor x = leaf(randn({4, 5}, 203)), w = leaf(randn({3, 5}, 204));
  EXPECT_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1]); }, {x, w});
}
TEST(Linear, Gradcheck3dF64) {
  Tensor x = leaf(randn({2, 3, 5}, 205)), w = leaf(randn({4, 5}, 206)), b = leaf(randn({4}, 207));
  const Tensor y = linear(x, w, b);
  ASSERT_EQ(y.shape(), (Shape{2, 3, 4}));
  EXPECT_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
}
TEST(Linear, Gradcheck3dNoBiasF64) {
  Tensor x = leaf(randn({2, 3, 5}, 208)), w = leaf(randn({4, 5}, 209));
  EXPECT_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1]); }, {x, w});
}
TEST(Linear, GradcheckBatch1F64) {
  Tensor x = leaf(randn({1, 7}, 210)), w = leaf(randn({2, 7}, 211)), b = leaf(randn({2}, 212));
  EXPECT_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
}
TEST(Linear, EmptyBatchGivesZeroGradients) {
  { const Tensor junk = Tensor::full({3, 5}, 7.0, DType::F64); }
  Tensor w = leaf(randn({3, 5}, 216)), b = leaf(randn({3}, 217));
  const Tensor y = linear(Tensor::zeros({0, 5}, DType::F64), w, b);
  EXPECT_EQ(y.shape(), (Shape{0, 3}));
  sum(y).backward();
  EXPECT_ALL_CLOSE(w.grad(), Tensor::zeros(w.shape(), DType::F64), 0, 0);
  EXPECT_ALL_CLOSE(b.grad(), Tensor::zeros(b.shape(), DType::F64), 0, 0);
}
TEST(Linear, GradcheckFrozenWeightF64) {
  Tensor x = leaf(randn({3, 6}, 213));
  const Tensor w = randn({4, 6}, 214), b = randn({4}, 215);
  EXPECT_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
}

// ---- relu ------------------------------------------------------------------------------

TEST(Relu, GradcheckF64) {
  // distinct() values are multiples of 0.01 including 0; shift them off the kink.
  Tensor x = leaf(add(distinct({2, 3, 5, 7}, 300), 0.005));
  EXPECT_GRADCHECK([](const TensorList& in) { return relu(in[0]); }, {x});
}
TEST(Relu, GradcheckComposedF64) {
  // relu(x) * x: the saved output is read by a later op's backward too.
  Tensor x = leaf(add(distinct({4, 9}, 301), 0.005));
  EXPECT_GRADCHECK([](const TensorList& in) { return mul(relu(in[0]), in[0]); }, {x});
}

// guided_relu's backward is guided backpropagation's rule, not relu's derivative, so it
// is checked against the rule itself: dx = dy where x > 0 and dy > 0, else 0.
TEST(GuidedRelu, ForwardIsReluBackwardFollowsTheGuidedRuleF64) {
  Tensor x = leaf(add(distinct({3, 4, 5}, 310), 0.005));
  const Tensor gy = randn({3, 4, 5}, 311);
  const Tensor y = guided_relu(x);
  EXPECT_ALL_CLOSE(y, relu(x.detach()), 0, 0);
  y.backward(gy);
  const std::vector<double> xv = x.to_vector<double>(), gv = gy.to_vector<double>();
  std::vector<double> want(xv.size());
  int passed = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    want[i] = xv[i] > 0 && gv[i] > 0 ? gv[i] : 0.0;
    passed += want[i] != 0.0;
  }
  EXPECT_ALL_CLOSE(x.grad(), Tensor::from_vector({3, 4, 5}, want), 0, 0);
  EXPECT_GT(passed, 5);
  EXPECT_LT(passed, 55);
}

// abs_max records no gradient (it reduces a finished saliency map).
TEST(AbsMax, ValuesShapesAndNoGradient) {
  Tensor x = leaf(randn({2, 3, 4}, 320));
  const Tensor y = abs_max(x, 1), yk = abs_max(x, -2, /*keepdim=*/true);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(y.shape(), (Shape{2, 4}));
  EXPECT_EQ(yk.shape(), (Shape{2, 1, 4}));
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t w = 0; w < 4; ++w) {
      double m = 0;
      for (int64_t c = 0; c < 3; ++c) m = std::max(m, std::fabs(x.at({n, c, w})));
      EXPECT_EQ(y.at({n, w}), m);
      EXPECT_EQ(yk.at({n, 0, w}), m);
    }
}

// ---- conv2d_relu and conv_relu_pool (in float64 the ops one after another; float32 is
// checked bit for bit against these in test_conv_backends) ------------------------------

TEST(Conv2dRelu, GradcheckF64) {
  Tensor x = leaf(randn({2, 3, 7, 9}, 180)), w = leaf(randn({4, 3, 3, 3}, 181)), b = leaf(randn({4}, 182));
  EXPECT_GRADCHECK([](const TensorList& in) { return conv2d_relu(in[0], in[1], in[2], 2, 1); }, {x, w, b});
}

TEST(ConvReluPool, GradcheckF64) {
  Tensor x = leaf(randn({1, 2, 11, 10}, 183)), w1 = leaf(randn({3, 2, 3, 3}, 184)), b1 = leaf(randn({3}, 185));
  Tensor w2 = leaf(randn({4, 3, 2, 2}, 186));
  EXPECT_GRADCHECK(
      [](const TensorList& in) {
        return conv_relu_pool(in[0], {testing_util::conv_layer(in[1], in[2], 1, 1),
                                      testing_util::pool_layer(3, 2, 0, true), testing_util::conv_layer(in[3])});
      },
      {x, w1, b1, w2});
}

// ---- max_pool2d ------------------------------------------------------------------------

TEST(MaxPool2d, GradcheckK3S2F64) { pool_check({2, 3, 9, 11}, 3, 2, 0, false, 400); }
TEST(MaxPool2d, GradcheckK3S2AlexNet13x13F64) { pool_check({1, 2, 13, 13}, 3, 2, 0, false, 401); }
TEST(MaxPool2d, GradcheckK2S1F64) { pool_check({1, 2, 5, 6}, 2, 1, 0, false, 402); }
TEST(MaxPool2d, GradcheckDefaultStrideF64) { pool_check({2, 2, 6, 7}, 2, 0, 0, false, 403); }
TEST(MaxPool2d, GradcheckPad1F64) { pool_check({2, 2, 7, 8}, 3, 2, 1, false, 404); }
TEST(MaxPool2d, GradcheckNonSquareF64) { pool_check({2, 2, 7, 9}, Size2(3, 2), Size2(2, 1), Size2(1, 0), false, 405); }
TEST(MaxPool2d, GradcheckCeilMode8x8F64) { pool_check({2, 2, 8, 8}, 3, 2, 0, true, 406); }
TEST(MaxPool2d, GradcheckCeilMode13x14F64) { pool_check({1, 2, 13, 14}, 3, 2, 0, true, 407); }
// ceil_mode with padding, where PyTorch drops a last window that would start in the
// right padding: H=5, k2 s2 p1 gives 3, not 4.
TEST(MaxPool2d, GradcheckCeilModePad1F64) { pool_check({2, 2, 5, 6}, 2, 2, 1, true, 408); }
TEST(MaxPool2d, GradcheckCeilModePad1K3F64) { pool_check({1, 2, 6, 9}, 3, 2, 1, true, 409); }

TEST(MaxPool2d, CeilModeShapesMatchPyTorch) {
  struct C { int64_t in, k, s, p, floor_out, ceil_out; };
  // Values from torch.nn.functional.max_pool2d (and its documented formula).
  const C cases[] = {{8, 3, 2, 0, 3, 4},   {13, 3, 2, 0, 6, 6},   {14, 3, 2, 0, 6, 7},
                     {5, 2, 2, 1, 3, 3},   {6, 2, 2, 1, 4, 4},    {111, 3, 2, 0, 55, 55},
                     {55, 3, 2, 0, 27, 27}, {27, 3, 2, 0, 13, 13}, {112, 3, 2, 0, 55, 56},
                     {4, 3, 3, 1, 2, 2},   {7, 2, 3, 0, 2, 3},    {6, 4, 3, 2, 3, 3}};
  for (const C& c : cases) {
    SCOPED_TRACE(::testing::Message() << "in " << c.in << " k " << c.k << " s " << c.s << " p " << c.p);
    EXPECT_EQ(torch_pool_out(c.in, c.k, c.s, c.p, false), c.floor_out);
    EXPECT_EQ(torch_pool_out(c.in, c.k, c.s, c.p, true), c.ceil_out);
    const Tensor x = distinct({1, 1, c.in, c.in}, 410);
    EXPECT_EQ(max_pool2d(x, c.k, c.s, c.p, false).size(2), c.floor_out);
    EXPECT_EQ(max_pool2d(x, c.k, c.s, c.p, true).size(3), c.ceil_out);
  }
}

// Without a graph max_pool2d takes another path (no argmax; the windows inside the row
// in a vectorised loop). Both must give the same values as a plain scan of each window,
// with ties (values from a small set) and NaNs (which win, as in PyTorch), for the shapes
// of AlexNet and SqueezeNet and for padding, ceil_mode and other strides. Equal values,
// not always equal bits: where a window's maximum is 0 and it holds zeros of both signs,
// the pass without a graph (column maxima first) may return the other zero than the
// scan, which keeps the first in row-major order.
// NaNs only in every other plane: rows without one take the float kernels' NaN-free form.
TEST(MaxPool2d, WithAndWithoutAGraphEqualAPlainScan) {
  struct C {
    int64_t H, W, kh, kw, sh, sw, ph, pw;
    bool ceil;
  };
  const C cases[] = {{55, 55, 3, 3, 2, 2, 0, 0, false}, {27, 27, 3, 3, 2, 2, 0, 0, false},
                     {13, 13, 3, 3, 2, 2, 0, 0, false}, {111, 111, 3, 3, 2, 2, 0, 0, true},
                     {14, 15, 3, 3, 2, 2, 1, 1, true},   {9, 10, 2, 2, 1, 1, 0, 0, false},
                     {7, 9, 3, 2, 2, 1, 1, 0, false},    {8, 13, 3, 4, 3, 3, 1, 2, true}};
  uint64_t seed = 420;
  for (const C& c : cases) {
    for (DType dt : {DType::F32, DType::F64}) {
      SCOPED_TRACE(::testing::Message() << c.H << "x" << c.W << " k" << c.kh << "x" << c.kw << " s" << c.sh << "x"
                                        << c.sw << " p" << c.ph << "x" << c.pw << " ceil " << c.ceil << " "
                                        << (dt == DType::F32 ? "f32" : "f64"));
      const Shape shape{2, 3, c.H, c.W};
      std::vector<double> v = randn(shape, ++seed).to_vector<double>();
      const size_t plane = static_cast<size_t>(c.H * c.W);
      for (size_t i = 0; i < v.size(); ++i)
        v[i] = i / plane % 2 == 0 && i % 37 == 5 ? std::nan("") : std::round(v[i] * 2);  // ties
      const Tensor x = Tensor::from_vector(shape, v).to(dt);
      Tensor with_graph;
      {
        const Tensor xl = x.detach().requires_grad_();
        with_graph = max_pool2d(xl, Size2(c.kh, c.kw), Size2(c.sh, c.sw), Size2(c.ph, c.pw), c.ceil).detach();
      }
      Tensor without;
      {
        NoGradGuard ng;
        without = max_pool2d(x, Size2(c.kh, c.kw), Size2(c.sh, c.sw), Size2(c.ph, c.pw), c.ceil);
      }
      ASSERT_EQ(with_graph.shape(), without.shape());
      const int64_t Ho = without.size(2), Wo = without.size(3);
      const std::vector<double> a = with_graph.to_vector<double>(), b = without.to_vector<double>();
      size_t nans = 0;
      for (int64_t pl = 0; pl < 6; ++pl)
        for (int64_t oh = 0; oh < Ho; ++oh)
          for (int64_t ow = 0; ow < Wo; ++ow) {
            double best = 0;
            bool any = false;
            for (int64_t i = oh * c.sh - c.ph; i < oh * c.sh - c.ph + c.kh; ++i)
              for (int64_t j = ow * c.sw - c.pw; j < ow * c.sw - c.pw + c.kw; ++j) {
                if (i < 0 || i >= c.H || j < 0 || j >= c.W) continue;
                const double e = v[static_cast<size_t>((pl * c.H + i) * c.W + j)];
                if (!any || e > best || std::isnan(e)) best = e;
                any = true;
              }
            const size_t k = static_cast<size_t>((pl * Ho + oh) * Wo + ow);
            if (std::isnan(best)) {
              ++nans;
              EXPECT_TRUE(std::isnan(a[k]) && std::isnan(b[k])) << pl << " " << oh << " " << ow;
            } else {
              EXPECT_EQ(a[k], best) << pl << " " << oh << " " << ow;
              EXPECT_EQ(b[k], best) << pl << " " << oh << " " << ow;
            }
          }
      EXPECT_GT(nans, 0u);

      // The argmax, through the gradient: with ties but no NaN, each window's gradient
      // (small integers: exact sums) goes to its first maximum in row-major order.
      for (size_t i = 0; i < v.size(); ++i)
        if (std::isnan(v[i])) v[i] = 0;
      const Tensor xt = Tensor::from_vector(shape, v).to(dt).requires_grad_();
      const Tensor y = max_pool2d(xt, Size2(c.kh, c.kw), Size2(c.sh, c.sw), Size2(c.ph, c.pw), c.ceil);
      std::vector<double> gy(static_cast<size_t>(y.numel()));
      for (size_t k = 0; k < gy.size(); ++k) gy[k] = static_cast<double>(k % 7 + 1);
      sum(y * Tensor::from_vector(y.shape(), gy).to(dt)).backward();
      std::vector<double> want(v.size(), 0.0);
      for (int64_t pl = 0; pl < 6; ++pl)
        for (int64_t oh = 0; oh < Ho; ++oh)
          for (int64_t ow = 0; ow < Wo; ++ow) {
            int64_t arg = -1;
            for (int64_t i = oh * c.sh - c.ph; i < oh * c.sh - c.ph + c.kh; ++i)
              for (int64_t j = ow * c.sw - c.pw; j < ow * c.sw - c.pw + c.kw; ++j) {
                if (i < 0 || i >= c.H || j < 0 || j >= c.W) continue;
                const int64_t at = (pl * c.H + i) * c.W + j;
                if (arg < 0 || v[static_cast<size_t>(at)] > v[static_cast<size_t>(arg)]) arg = at;
              }
            want[static_cast<size_t>(arg)] += gy[static_cast<size_t>((pl * Ho + oh) * Wo + ow)];
          }
      const std::vector<double> got = xt.grad().to_vector<double>();
      for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "gradient at " << i;
    }
  }
}

// ---- adaptive_avg_pool2d ----------------------------------------------------------------

TEST(AdaptiveAvgPool2d, GradcheckSmallerNonDivisible7x9To3x4F64) { adaptive_check({2, 3, 7, 9}, Size2(3, 4), 500); }
TEST(AdaptiveAvgPool2d, GradcheckLarger5x5To6x6F64) { adaptive_check({1, 2, 5, 5}, 6, 501); }
TEST(AdaptiveAvgPool2d, GradcheckEqual6x6F64) { adaptive_check({2, 2, 6, 6}, 6, 502); }
TEST(AdaptiveAvgPool2d, GradcheckDivisible6x8To3x4F64) { adaptive_check({2, 2, 6, 8}, Size2(3, 4), 503); }
TEST(AdaptiveAvgPool2d, GradcheckMixed4x9To7x2F64) { adaptive_check({1, 3, 4, 9}, Size2(7, 2), 504); }
TEST(AdaptiveAvgPool2d, GradcheckGlobal1x1F64) { adaptive_check({2, 3, 5, 4}, 1, 505); }

// ---- dropout ---------------------------------------------------------------------------

TEST(Dropout, GradcheckTrainF64) {
  Tensor x = leaf(randn({4, 25}, 600));
  // A generator reseeded identically in every call: the same mask each time.
  auto f = [](const TensorList& in) {
    Generator gen(77);
    return dropout(in[0], 0.3, /*training=*/true, &gen);
  };
  EXPECT_GRADCHECK(f, {x});
  // And the mask is a real one: some zeros, the rest scaled by 1 / (1 - p).
  const std::vector<double> xv = x.to_vector<double>(), yv = f({x.detach()}).to_vector<double>();
  int zeros = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    if (yv[i] == 0.0) ++zeros;
    else EXPECT_NEAR(yv[i], xv[i] / 0.7, 1e-12);
  }
  EXPECT_GT(zeros, 10);
  EXPECT_LT(zeros, 50);
}
TEST(Dropout, GradcheckEvalIsIdentityF64) {
  Tensor x = leaf(randn({3, 7}, 601));
  EXPECT_GRADCHECK([](const TensorList& in) { return dropout(in[0], 0.5, /*training=*/false); }, {x});
  EXPECT_ALL_CLOSE(dropout(x.detach(), 0.5, false), x.detach(), 0, 0);
}

// Dropout's stream, written out here: element i of a call from counter `offset` is kept
// where word i % 4 of Philox(seed, offset + i / 4), its top 24 bits over 2^24, is at
// least p (float), or words 2 (i % 2) and 2 (i % 2) + 1 of Philox(seed, offset + i / 2),
// 53 bits (double). The float kernel's vector path draws 8 counters (32 elements) at a
// time and reorders the words; it must give these bits: lengths that are no multiple of
// 4 or 32, a block of 8 whose counters' low word wraps, a high word above zero.
TEST(Dropout, KernelsUseEveryWordOfAPhiloxBlock) {
  const uint64_t seed = 0x0123456789ABCDEFull;
  auto check = [&](auto tag, int group) {
    using T = decltype(tag);
    const T p = T(0.3), scale = T(1) / (T(1) - p);
    for (const uint64_t offset : {uint64_t{0}, uint64_t{12345}, (uint64_t{1} << 32) - 13, (uint64_t{5} << 32) - 3})
      for (const int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{33}, int64_t{1003}, int64_t{70001}}) {
        const std::vector<double> xd = randn({n}, 602).to_vector<double>();
        std::vector<T> x(xd.begin(), xd.end()), mask(static_cast<size_t>(n), T(-7)), y(static_cast<size_t>(n), T(-7));
        kernels::dropout_forward_cpu<T>(x.data(), mask.data(), y.data(), p, seed, offset, n);
        int64_t wrong = 0, kept = 0;
        for (int64_t i = 0; i < n; ++i) {
          const size_t k = static_cast<size_t>(i);
          const kernels::Philox4 r = kernels::philox4x32_10(seed, offset + static_cast<uint64_t>(i / group));
          const int w = static_cast<int>(i % group);
          T u;
          if (group == 4) {
            u = static_cast<T>(static_cast<double>(r.v[w] >> 8) / 16777216.0);
          } else {
            const uint64_t bits = ((static_cast<uint64_t>(r.v[2 * w]) << 21) ^ (r.v[2 * w + 1] >> 11)) &
                                  ((uint64_t{1} << 53) - 1);
            u = static_cast<T>(static_cast<double>(bits) / 9007199254740992.0);
          }
          const T keep = u >= p ? scale : T(0);
          if (std::memcmp(&mask[k], &keep, sizeof(T)) != 0 || y[k] != x[k] * keep) ++wrong;
          kept += keep != T(0);
        }
        EXPECT_EQ(wrong, 0) << "group " << group << ", offset " << offset << ", n " << n;
        if (n > 1000) {
          EXPECT_NEAR(static_cast<double>(kept) / static_cast<double>(n), 0.7, 0.05);
        }
      }
    EXPECT_EQ(kernels::dropout_counters<T>(1), 1u);
    EXPECT_EQ(kernels::dropout_counters<T>(group), 1u);
    EXPECT_EQ(kernels::dropout_counters<T>(group + 1), 2u);
  };
  check(float{}, 4);
  check(double{}, 2);
}

// The dropout op reserves one counter per group: two calls on one generator continue
// the stream exactly where one call over both would, and the generator moves on by the
// counters used (4 floats or 2 doubles a counter, rounded up).
TEST(Dropout, OpAdvancesTheGeneratorByItsCounters) {
  for (DType dt : {DType::F32, DType::F64}) {
    SCOPED_TRACE(dtype_name(dt));
    const uint64_t per = dt == DType::F32 ? 4 : 2;
    const Tensor a = randn({8 * 13}, 603, dt), b = randn({8 * 11}, 604, dt);
    Generator split(5), whole(5);
    const Tensor ya = dropout(a, 0.4, true, &split), yb = dropout(b, 0.4, true, &split);
    EXPECT_EQ(split.offset(), static_cast<uint64_t>(8 * 24) / per);
    const Tensor y = dropout(cat({a, b}, 0), 0.4, true, &whole);
    EXPECT_TRUE(testing_util::bit_identical(cat({ya, yb}, 0), y));
    Generator odd(5);
    (void)dropout(randn({7}, 605, dt), 0.4, true, &odd);
    EXPECT_EQ(odd.offset(), (7 + per - 1) / per);
  }
}

// Likewise the float uniform fill (weight initialisation): one Philox draw per element,
// lo + (hi - lo) * u in one rounding.
TEST(Uniform, Float32KernelIsOnePhiloxDrawPerElement) {
  const uint64_t seed = 99;
  for (const uint64_t offset : {uint64_t{3}, (uint64_t{1} << 32) - 5})
    for (const int64_t n : {int64_t{5}, int64_t{1003}, int64_t{70001}}) {
      std::vector<float> y(static_cast<size_t>(n));
      const float lo = -0.3f, hi = 0.7f;
      kernels::uniform_cpu<float>(y.data(), lo, hi, seed, offset, n);
      int64_t wrong = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float want = std::fma(hi - lo, kernels::philox_uniform<float>(seed, offset + static_cast<uint64_t>(i)), lo);
        if (std::memcmp(&y[static_cast<size_t>(i)], &want, sizeof(float)) != 0) ++wrong;
      }
      EXPECT_EQ(wrong, 0) << "offset " << offset << ", n " << n;
    }
}

// ---- reshape / flatten -------------------------------------------------------------------

TEST(Reshape, GradcheckF64) {
  Tensor x = leaf(randn({2, 3, 4}, 700));
  EXPECT_GRADCHECK([](const TensorList& in) { return reshape(in[0], {4, -1}); }, {x});
}
TEST(Flatten, GradcheckF64) {
  Tensor x = leaf(randn({2, 3, 2, 5}, 701));
  EXPECT_GRADCHECK([](const TensorList& in) { return flatten(in[0], 1); }, {x});
  EXPECT_GRADCHECK([](const TensorList& in) { return mul(flatten(in[0], 1, 2), 2.0); }, {x});
}

// ---- cat -------------------------------------------------------------------------------

TEST(Cat, GradcheckDim1ThreeInputsF64) {
  Tensor a = leaf(randn({2, 3, 4}, 800)), b = leaf(randn({2, 1, 4}, 801)), c = leaf(randn({2, 5, 4}, 802));
  EXPECT_EQ(cat({a, b, c}, 1).shape(), (Shape{2, 9, 4}));
  EXPECT_GRADCHECK([](const TensorList& in) { return cat(in, 1); }, {a, b, c});
}
TEST(Cat, GradcheckDim0F64) {
  Tensor a = leaf(randn({2, 3}, 803)), b = leaf(randn({4, 3}, 804));
  EXPECT_GRADCHECK([](const TensorList& in) { return cat(in, 0); }, {a, b});
}
TEST(Cat, GradcheckDimMinus1F64) {
  Tensor a = leaf(randn({2, 3, 2}, 805)), b = leaf(randn({2, 3, 5}, 806));
  EXPECT_GRADCHECK([](const TensorList& in) { return cat(in, -1); }, {a, b});
}
TEST(Cat, GradcheckSomeInputsFrozenF64) {
  Tensor a = leaf(randn({2, 2, 3}, 807)), c = leaf(randn({2, 4, 3}, 809));
  const Tensor b = randn({2, 3, 3}, 808);
  EXPECT_GRADCHECK([](const TensorList& in) { return cat(in, 1); }, {a, b, c});
}

// ---- arithmetic -------------------------------------------------------------------------

TEST(Add, GradcheckF64) {
  Tensor a = leaf(randn({3, 4}, 900)), b = leaf(randn({3, 4}, 901));
  EXPECT_GRADCHECK([](const TensorList& in) { return add(in[0], in[1]); }, {a, b});
}
TEST(Add, GradcheckScalarF64) {
  Tensor a = leaf(randn({3, 4}, 902));
  EXPECT_GRADCHECK([](const TensorList& in) { return add(in[0], 1.5); }, {a});
}
TEST(Sub, GradcheckF64) {
  Tensor a = leaf(randn({2, 5}, 903)), b = leaf(randn({2, 5}, 904));
  EXPECT_GRADCHECK([](const TensorList& in) { return sub(in[0], in[1]); }, {a, b});
}
TEST(Sub, GradcheckSecondOnlyF64) {
  const Tensor a = randn({2, 5}, 905);
  Tensor b = leaf(randn({2, 5}, 906));
  EXPECT_GRADCHECK([](const TensorList& in) { return sub(in[0], in[1]); }, {a, b});
}
TEST(Mul, GradcheckTensorF64) {
  Tensor a = leaf(randn({3, 5}, 907)), b = leaf(randn({3, 5}, 908));
  EXPECT_GRADCHECK([](const TensorList& in) { return mul(in[0], in[1]); }, {a, b});
}
TEST(Mul, GradcheckSameTensorTwiceF64) {
  Tensor a = leaf(randn({3, 5}, 909));
  EXPECT_GRADCHECK([](const TensorList& in) { return mul(in[0], in[0]); }, {a});
}
TEST(Mul, GradcheckOneSideFrozenF64) {
  Tensor a = leaf(randn({3, 5}, 910));
  const Tensor b = randn({3, 5}, 911);
  EXPECT_GRADCHECK([](const TensorList& in) { return mul(in[0], in[1]); }, {a, b});
  EXPECT_GRADCHECK([](const TensorList& in) { return mul(in[1], in[0]); }, {a, b});
}
TEST(Mul, GradcheckScalarF64) {
  Tensor a = leaf(randn({3, 5}, 912));
  EXPECT_GRADCHECK([](const TensorList& in) { return mul(in[0], -2.5); }, {a});
}

// ---- reductions -------------------------------------------------------------------------

TEST(Sum, GradcheckAllF64) {
  Tensor x = leaf(randn({2, 3, 4}, 1000));
  EXPECT_EQ(sum(x).shape(), Shape{});
  EXPECT_GRADCHECK([](const TensorList& in) { return sum(in[0]); }, {x});
}
TEST(Sum, GradcheckDim1KeepdimF64) {
  Tensor x = leaf(randn({2, 3, 4}, 1001));
  EXPECT_EQ(sum(x, 1, true).shape(), (Shape{2, 1, 4}));
  EXPECT_GRADCHECK([](const TensorList& in) { return sum(in[0], 1, true); }, {x});
}
TEST(Sum, GradcheckDim1NoKeepdimF64) {
  Tensor x = leaf(randn({2, 3, 4}, 1002));
  EXPECT_EQ(sum(x, 1, false).shape(), (Shape{2, 4}));
  EXPECT_GRADCHECK([](const TensorList& in) { return sum(in[0], 1, false); }, {x});
}
TEST(Sum, GradcheckDimMinus1AndDim0F64) {
  Tensor x = leaf(randn({3, 5}, 1003));
  EXPECT_GRADCHECK([](const TensorList& in) { return sum(in[0], -1); }, {x});
  EXPECT_GRADCHECK([](const TensorList& in) { return sum(in[0], 0, true); }, {x});
}
TEST(Mean, GradcheckAllF64) {
  Tensor x = leaf(randn({2, 3, 4}, 1004));
  EXPECT_GRADCHECK([](const TensorList& in) { return mean(in[0]); }, {x});
}
TEST(Mean, GradcheckDim1KeepdimF64) {
  Tensor x = leaf(randn({2, 3, 4}, 1005));
  EXPECT_EQ(mean(x, 1, true).shape(), (Shape{2, 1, 4}));
  EXPECT_GRADCHECK([](const TensorList& in) { return mean(in[0], 1, true); }, {x});
}
TEST(Mean, GradcheckDimMinus1NoKeepdimF64) {
  Tensor x = leaf(randn({2, 3, 4}, 1006));
  EXPECT_EQ(mean(x, -1).shape(), (Shape{2, 3}));
  EXPECT_GRADCHECK([](const TensorList& in) { return mean(in[0], -1, false); }, {x});
}
TEST(Mean, GradcheckDim0F64) {
  Tensor x = leaf(randn({3, 2, 2}, 1007));
  EXPECT_GRADCHECK([](const TensorList& in) { return mean(in[0], 0); }, {x});
}

// ---- softmax / log_softmax / cross_entropy -------------------------------------------------

TEST(Softmax, GradcheckDim1F64) {
  Tensor x = leaf(randn({3, 6}, 1100));
  EXPECT_GRADCHECK([](const TensorList& in) { return softmax(in[0], 1); }, {x});
}
TEST(Softmax, GradcheckDimMinus1Of3dF64) {
  Tensor x = leaf(randn({2, 3, 5}, 1101));
  EXPECT_GRADCHECK([](const TensorList& in) { return softmax(in[0], -1); }, {x});
}
TEST(Softmax, GradcheckDim0Of3dF64) {
  Tensor x = leaf(randn({3, 2, 4}, 1102));
  EXPECT_GRADCHECK([](const TensorList& in) { return softmax(in[0], 0); }, {x});
}
TEST(Softmax, GradcheckDim1Of3dF64) {
  Tensor x = leaf(randn({2, 4, 3}, 1103));
  EXPECT_GRADCHECK([](const TensorList& in) { return softmax(in[0], 1); }, {x});
}
TEST(LogSoftmax, GradcheckDim1F64) {
  Tensor x = leaf(randn({3, 6}, 1110));
  EXPECT_GRADCHECK([](const TensorList& in) { return log_softmax(in[0], 1); }, {x});
}
TEST(LogSoftmax, GradcheckDimMinus1Of3dF64) {
  Tensor x = leaf(randn({2, 3, 5}, 1111));
  EXPECT_GRADCHECK([](const TensorList& in) { return log_softmax(in[0], -1); }, {x});
}
TEST(LogSoftmax, GradcheckDim0Of3dF64) {
  Tensor x = leaf(randn({3, 2, 4}, 1112));
  EXPECT_GRADCHECK([](const TensorList& in) { return log_softmax(in[0], 0); }, {x});
}
TEST(LogSoftmax, GradcheckDim1Of3dF64) {
  Tensor x = leaf(randn({2, 4, 3}, 1113));
  EXPECT_GRADCHECK([](const TensorList& in) { return log_softmax(in[0], 1); }, {x});
}
// float32 rows with the softmax axis last take a vectorised path with its own e^x. Against
// the float64 path on the same (float) inputs: row lengths around the 8-lane groups and
// 1000, inputs spread widely enough that many terms underflow, log_softmax's gradient;
// and rows holding -inf, +inf or NaN, which must give what the float64 path gives.
TEST(Softmax, Float32RowsMatchFloat64) {
  uint64_t seed = 1150;
  for (int64_t n : {1, 3, 7, 8, 9, 16, 37, 1000})
    for (double scale : {1.0, 40.0})
      for (bool log : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "rows of " << n << ", scale " << scale << (log ? ", log" : ""));
        const Tensor x = (randn({5, n}, ++seed) * scale).to(DType::F32);
        const Tensor gy = randn({5, n}, ++seed).to(DType::F32);
        Tensor x32 = x.detach().requires_grad_(), x64 = x.to(DType::F64).requires_grad_();
        const Tensor y32 = log ? log_softmax(x32, 1) : softmax(x32, 1);
        const Tensor y64 = log ? log_softmax(x64, 1) : softmax(x64, 1);
        y32.backward(gy);
        y64.backward(gy.to(DType::F64));
        const std::vector<double> a = y32.to_vector<double>(), b = y64.to_vector<double>();
        const std::vector<double> xv = x.to_vector<double>();
        for (size_t i = 0; i < a.size(); ++i) {
          // x - max rounds to float first (as in PyTorch): e^(x - max) is then off by up to
          // |x - max| 2^-24 relative, the rest by a few ulp; below FLT_MIN it may be 0.
          const size_t row = i / static_cast<size_t>(n);
          const double m = *std::max_element(xv.begin() + static_cast<std::ptrdiff_t>(row * static_cast<size_t>(n)),
                                             xv.begin() + static_cast<std::ptrdiff_t>((row + 1) * static_cast<size_t>(n)));
          const double tol = log ? 1e-6 * (std::fabs(b[i]) + 1.0) : std::fabs(b[i]) * (1e-6 + 6e-8 * (m - xv[i])) + 1.2e-38;
          ASSERT_LE(std::fabs(a[i] - b[i]), tol) << "at " << i << ": " << a[i] << " vs " << b[i];
        }
        const std::vector<double> ga = x32.grad().to_vector<double>(), gb = x64.grad().to_vector<double>();
        const std::vector<double> g = gy.to_vector<double>();
        for (size_t i = 0; i < ga.size(); ++i) {
          const size_t row = i / static_cast<size_t>(n);
          double gsum = 0;  // the row's sum of |gy|: the scale of a log_softmax gradient's rounding
          for (int64_t j = 0; j < n; ++j) gsum += std::fabs(g[row * static_cast<size_t>(n) + static_cast<size_t>(j)]);
          ASSERT_LE(std::fabs(ga[i] - gb[i]), 1e-6 * (std::fabs(gb[i]) + gsum)) << "gradient at " << i;
        }
      }
  const float inf = INFINITY, nan = NAN;
  const std::vector<std::vector<float>> rows = {
      {-inf, 0.5f, 1.0f, -3.0f, 2.0f, -inf, 0.0f, 1.5f, -100.0f, -1e30f},  // -inf and underflow: 0 and -inf
      {nan, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f},          // NaN first
      {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f, nan},          // NaN in the tail
      {inf, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f},          // +inf
      {-inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf, -inf}};
  for (const auto& r : rows)
    for (bool log : {false, true}) {
      const Tensor x = Tensor::from_vector({1, 10}, std::vector<double>(r.begin(), r.end())).to(DType::F32);
      NoGradGuard ng;
      const std::vector<double> a = (log ? log_softmax(x, 1) : softmax(x, 1)).to_vector<double>();
      const std::vector<double> b = (log ? log_softmax(x.to(DType::F64), 1) : softmax(x.to(DType::F64), 1)).to_vector<double>();
      for (size_t i = 0; i < a.size(); ++i) {
        SCOPED_TRACE(::testing::Message() << "row starting " << r[0] << ", element " << i << (log ? ", log" : ""));
        if (std::isnan(b[i]))
          EXPECT_TRUE(std::isnan(a[i])) << a[i];
        else if (std::isinf(b[i]))
          EXPECT_EQ(a[i], b[i]);
        else
          EXPECT_NEAR(a[i], b[i], log ? 1e-6 * (std::fabs(b[i]) + 1.0) : 1e-6 * std::fabs(b[i]) + 1.2e-38);
      }
    }
}

TEST(Softmax, EmptyDimensionGivesEmptyOutput) {
  const Tensor x = Tensor::zeros({2, 0}, DType::F64);
  EXPECT_EQ(softmax(x, 1).shape(), (Shape{2, 0}));
  EXPECT_EQ(log_softmax(x, -1).shape(), (Shape{2, 0}));
}
TEST(CrossEntropy, GradcheckBatch1F64) {
  Tensor z = leaf(randn({1, 7}, 1120));
  EXPECT_GRADCHECK([](const TensorList& in) { return cross_entropy(in[0], {4}); }, {z});
}
TEST(CrossEntropy, GradcheckBatch5F64) {
  Tensor z = leaf(mul(randn({5, 7}, 1121), 3.0).detach());
  EXPECT_GRADCHECK([](const TensorList& in) { return cross_entropy(in[0], {0, 6, 3, 3, 1}); }, {z});
}
TEST(CrossEntropy, GradcheckAfterLinearF64) {
  // The loss's upstream gradient is not 1 when scaled: exercises g in the backward.
  Tensor x = leaf(randn({5, 4}, 1122)), w = leaf(randn({7, 4}, 1123)), b = leaf(randn({7}, 1124));
  EXPECT_GRADCHECK(
      [](const TensorList& in) { return mul(cross_entropy(linear(in[0], in[1], in[2]), {2, 0, 6, 5, 2}), 3.0); },
      {x, w, b});
}

// ---- a small network, end to end ------------------------------------------------------------

TEST(Network, GradcheckConvReluPoolLinearCrossEntropyF64) {
  Tensor x = leaf(randn({2, 2, 9, 8}, 1200));
  Tensor w1 = leaf(mul(randn({3, 2, 3, 3}, 1201), 0.5).detach()), b1 = leaf(randn({3}, 1202));
  Tensor w2 = leaf(mul(randn({5, 12}, 1203), 0.3).detach()), b2 = leaf(randn({5}, 1204));
  auto f = [](const TensorList& in) {
    Tensor h = relu(conv2d(in[0], in[1], in[2], 2, 1));        // [2, 3, 5, 4]
    h = max_pool2d(h, 2, 2, 0, /*ceil_mode=*/true);             // [2, 3, 3, 2]
    h = adaptive_avg_pool2d(h, Size2(2, 2));                    // [2, 3, 2, 2]
    h = linear(flatten(h, 1), in[3], in[4]);                    // [2, 5]
    return cross_entropy(h, {1, 4});
  };
  // relu and max make this piecewise; a few kinks may be skipped, never many.
  EXPECT_GRADCHECK(f, {x, w1, b1, w2, b2});
}
