// The two CPU convolution paths agree: oneDNN (float32, used by conv2d when the build
// has it) against im2col + GEMM (the reference, which the f64 gradient checks cover),
// forward and every gradient, on odd shapes, strides, paddings and batch sizes.
#include <cmath>

#include "kernels/common.h"
#include "kernels/conv.h"
#include "tests/test_util.h"

using namespace engine;

namespace {

using Case = testing_util::ConvCase;
const auto shape_of = testing_util::conv_shape;

class ConvBackends : public ::testing::TestWithParam<Case> {};

TEST_P(ConvBackends, OneDnnMatchesIm2col) {
  if (!kernels::conv2d_dnnl_available()) GTEST_SKIP() << "built without oneDNN";
  const kernels::Conv2dShape s = shape_of(GetParam());
  const Tensor x = testing_util::randn({s.N, s.C, s.H, s.W}, 1, DType::F32);
  const Tensor w = testing_util::randn({s.Co, s.C, s.kh, s.kw}, 2, DType::F32);
  const Tensor b = testing_util::randn({s.Co}, 3, DType::F32);
  const Tensor gy = testing_util::randn({s.N, s.Co, s.Ho, s.Wo}, 4, DType::F32);
  Tensor y1 = Tensor::empty(gy.shape()), y2 = Tensor::empty(gy.shape());
  kernels::conv2d_forward_cpu<float>(x.data<float>(), w.data<float>(), b.data<float>(), y1.data<float>(), s);
  kernels::conv2d_forward_dnnl(x.data<float>(), w.data<float>(), b.data<float>(), y2.data<float>(), s);
  const double tol = 2e-5 * std::sqrt(static_cast<double>(s.C * s.kh * s.kw));
  EXPECT_ALL_CLOSE(y2, y1, 1e-4, tol);

  Tensor gx1 = Tensor::empty(x.shape()), gw1 = Tensor::empty(w.shape()), gb1 = Tensor::empty(b.shape());
  Tensor gx2 = Tensor::full(x.shape(), 7.0), gw2 = Tensor::full(w.shape(), 7.0), gb2 = Tensor::full(b.shape(), 7.0);
  kernels::conv2d_backward_cpu<float>(x.data<float>(), w.data<float>(), gy.data<float>(), gx1.data<float>(),
                                      gw1.data<float>(), gb1.data<float>(), s);
  kernels::conv2d_backward_dnnl(x.data<float>(), w.data<float>(), gy.data<float>(), gx2.data<float>(),
                                gw2.data<float>(), gb2.data<float>(), s);
  const double tol_w = 2e-5 * std::sqrt(static_cast<double>(s.N * s.Ho * s.Wo));
  EXPECT_ALL_CLOSE(gx2, gx1, 1e-4, 2e-5 * std::sqrt(static_cast<double>(s.Co * s.kh * s.kw)));
  EXPECT_ALL_CLOSE(gw2, gw1, 1e-4, tol_w);
  EXPECT_ALL_CLOSE(gb2, gb1, 1e-4, tol_w);

  // Each gradient alone (the others not requested).
  Tensor only_gx = Tensor::full(x.shape(), 7.0), only_gw = Tensor::full(w.shape(), 7.0);
  Tensor only_gb = Tensor::full(b.shape(), 7.0);
  kernels::conv2d_backward_dnnl(nullptr, w.data<float>(), gy.data<float>(), only_gx.data<float>(), nullptr, nullptr, s);
  kernels::conv2d_backward_dnnl(x.data<float>(), nullptr, gy.data<float>(), nullptr, only_gw.data<float>(), nullptr, s);
  kernels::conv2d_backward_dnnl(nullptr, nullptr, gy.data<float>(), nullptr, nullptr, only_gb.data<float>(), s);
  EXPECT_ALL_CLOSE(only_gx, gx1, 1e-4, 2e-5 * std::sqrt(static_cast<double>(s.Co * s.kh * s.kw)));
  EXPECT_ALL_CLOSE(only_gw, gw1, 1e-4, tol_w);
  EXPECT_ALL_CLOSE(only_gb, gb1, 1e-4, tol_w);
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
