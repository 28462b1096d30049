// The CUDA backend against the CPU on the same random inputs: every op in engine/ops.h
// forward and backward in float32 and float64, the float64 central-difference gradient
// check run on the device, the kernels the ops are built from (GEMM, im2col/col2im, the
// cuDNN and im2col convolutions, dropout masks, the SGD step) and device parsing. Every
// GPU test skips without a CUDA device and runs for real on a machine with one; the
// whole networks and the caching allocator are in test_cuda_nets.cpp.
//
// Tolerance: a CUDA element passes when |cuda - cpu| <= rtol * |cpu| + rtol * max|cpu|,
// rtol 1e-5 for float32 and 1e-12 for float64 (rtol_for). The second term covers the
// elements where a long sum cancels to near zero and the summation order decides the
// last bits. Copies, relu, abs_max, concatenation and the dropout kernel's masks
// compare exactly.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <iostream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops/common.h"
#include "engine/optim/sgd.h"
#include "kernels/cat.h"
#include "kernels/common.h"
#include "kernels/conv.h"
#include "kernels/cuda_runtime.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/pool.h"
#include "kernels/reduce.h"
#include "kernels/sgd.h"
#include "kernels/sgd_math.h"
#include "kernels/softmax.h"
#include "tests/test_util.h"

using namespace engine;
using testing_util::bit_identical;
using testing_util::distinct;
using testing_util::randn;

#define SKIP_WITHOUT_CUDA() \
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device"

namespace {

const Device kCpu = Device::cpu();
const Device kCuda = Device::cuda(0);
double rtol_for(DType t) { return t == DType::F32 ? 1e-5 : 1e-12; }

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector<double>()) m = std::max(m, std::fabs(v));
  return m;
}

// A result computed on the GPU against the CPU's, with the tolerance described above
// (rtol 0: exact). Fails when the result is not on the GPU at all.
::testing::AssertionResult matches_cpu(const Tensor& cuda, const Tensor& cpu, double rtol) {
  if (!cuda.defined() || !cpu.defined()) return ::testing::AssertionFailure() << "undefined result";
  if (!cuda.device().is_cuda())
    return ::testing::AssertionFailure() << "the result is " << cuda.str() << ", not on the GPU";
  return testing_util::all_close(cuda.to(kCpu), cpu, rtol, rtol * max_abs(cpu));
}
#define EXPECT_MATCHES_CPU(cuda, cpu, rtol) EXPECT_TRUE(matches_cpu((cuda), (cpu), (rtol)))

Tensor leaf(Tensor t) { return t.requires_grad_(); }

using OpFn = std::function<Tensor(const TensorList&)>;

// Runs f on CPU copies and on CUDA copies of the host inputs (those that require a
// gradient become leaves that do, on both devices), compares the outputs, then
// backpropagates the same random upstream gradient on both and compares the gradient
// of every input that requires one.
void expect_op_matches_cpu(const OpFn& f, const TensorList& inputs, double rtol, uint64_t seed = 4242) {
  TensorList on_cpu, on_gpu;
  for (const Tensor& t : inputs) {
    if (!t.defined()) {
      on_cpu.emplace_back();
      on_gpu.emplace_back();
      continue;
    }
    Tensor c = t.detach().clone(), g = t.detach().to(kCuda);
    if (t.requires_grad()) {
      c.requires_grad_();
      g.requires_grad_();
    }
    on_cpu.push_back(c);
    on_gpu.push_back(g);
  }
  const Tensor yc = f(on_cpu), yg = f(on_gpu);
  EXPECT_MATCHES_CPU(yg, yc, rtol) << "forward";
  if (!yc.requires_grad()) {
    EXPECT_FALSE(yg.requires_grad());
    return;
  }
  const Tensor gy = randn(yc.shape(), seed, yc.dtype());
  yc.backward(gy);
  yg.backward(gy.to(kCuda));
  for (size_t k = 0; k < inputs.size(); ++k) {
    if (!on_cpu[k].defined() || !on_cpu[k].requires_grad()) continue;
    ASSERT_TRUE(on_gpu[k].grad().defined()) << "input " << k << " received no gradient on the GPU";
    EXPECT_MATCHES_CPU(on_gpu[k].grad(), on_cpu[k].grad(), rtol) << "gradient of input " << k;
  }
}

// testing_util::gradcheck with f evaluated on the GPU: the float64 host inputs are
// copied to the device inside the checked function, so the central differences perturb
// the host copies while the analytic gradient comes from the CUDA backward, carried back
// to the host leaves through the (differentiable) copies.
::testing::AssertionResult cuda_gradcheck(const OpFn& f, const TensorList& inputs,
                                          const testing_util::GradcheckOptions& opt = {}) {
  auto on_device = [&f](const TensorList& host) {
    TensorList dev;
    for (const Tensor& t : host) dev.push_back(t.defined() ? t.to(kCuda) : Tensor());
    return f(dev);
  };
  {
    NoGradGuard ng;
    const Tensor probe = on_device(inputs);
    if (!probe.device().is_cuda())
      return ::testing::AssertionFailure() << "the checked function returned " << probe.str() << ", not a GPU tensor";
  }
  return testing_util::gradcheck([&](const TensorList& host) { return on_device(host).to(kCpu); }, inputs, opt);
}
#define EXPECT_CUDA_GRADCHECK(...) EXPECT_TRUE(cuda_gradcheck(__VA_ARGS__))

// ---- convolution cases shared by the op and kernel tests ----------------------------------

using testing_util::ConvCase;
using testing_util::describe;
const auto shape_of = testing_util::conv_shape;

// Odd, non-square shapes; batch 1 and 2; the 1x1 pointwise path and the large-kernel,
// large-stride geometry of AlexNet's first layer.
const ConvCase kConvCases[] = {
    {2, 3, 7, 9, 4, 3, 3, 1, 1, 0, 0},     {2, 3, 7, 9, 5, 3, 3, 2, 2, 1, 1},
    {2, 3, 7, 9, 4, 3, 3, 2, 1, 1, 2},     {2, 2, 6, 7, 3, 3, 2, 1, 2, 0, 1},
    {1, 3, 8, 5, 2, 3, 3, 1, 1, 1, 1},     {1, 2, 11, 12, 3, 5, 5, 3, 3, 2, 2},
    {2, 2, 3, 4, 3, 5, 4, 1, 1, 1, 0},     {2, 5, 4, 7, 3, 1, 1, 1, 1, 0, 0},
    {1, 4, 3, 5, 6, 1, 1, 1, 1, 0, 0},     {2, 3, 5, 6, 4, 1, 1, 2, 2, 0, 0},
    {1, 3, 4, 3, 2, 1, 1, 1, 1, 1, 1},     {2, 3, 35, 33, 8, 11, 11, 4, 4, 2, 2}};

// AlexNet's five convolutions at batch 2.
const ConvCase kAlexNetConvs[] = {{2, 3, 224, 224, 64, 11, 11, 4, 4, 2, 2},
                                  {2, 64, 27, 27, 192, 5, 5, 1, 1, 2, 2},
                                  {2, 192, 13, 13, 384, 3, 3, 1, 1, 1, 1},
                                  {2, 384, 13, 13, 256, 3, 3, 1, 1, 1, 1},
                                  {2, 256, 13, 13, 256, 3, 3, 1, 1, 1, 1}};

}  // namespace

class CudaTyped : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaTyped, ::testing::Values(DType::F32, DType::F64),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// ---- copies, random streams ------------------------------------------------------------

TEST_P(CudaTyped, CopiesRoundTrip) {
  SKIP_WITHOUT_CUDA();
  Tensor x = randn({3, 5, 7}, 1, GetParam());
  Tensor d = x.to(kCuda);
  EXPECT_TRUE(d.device().is_cuda());
  EXPECT_ALL_CLOSE(d.to(kCpu), x, 0, 0);
  EXPECT_ALL_CLOSE(d.clone().to(kCpu), x, 0, 0);
  EXPECT_EQ(d.at({2, 4, 6}), x.at({2, 4, 6}));
  const DType other = GetParam() == DType::F64 ? DType::F32 : DType::F64;
  EXPECT_ALL_CLOSE(d.to(other).to(kCpu), x.to(other), 0, 0);
}

TEST_P(CudaTyped, RandomStreamsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  Generator gc(99), gg(99);
  const double r = rtol_for(GetParam());
  EXPECT_ALL_CLOSE(Tensor::randn({1001}, gg, GetParam(), kCuda).to(kCpu), Tensor::randn({1001}, gc, GetParam()), r, r);
  EXPECT_ALL_CLOSE(Tensor::rand({999}, gg, GetParam(), kCuda, -1, 2).to(kCpu),
                   Tensor::rand({999}, gc, GetParam(), kCpu, -1, 2), r, 0);
}

// ---- activations and dropout ---------------------------------------------------------------

TEST_P(CudaTyped, ReluForwardBackwardMatchCpu) {
  SKIP_WITHOUT_CUDA();
  expect_op_matches_cpu([](const TensorList& in) { return relu(in[0]); }, {leaf(randn({4, 33, 17}, 2, GetParam()))},
                        0);
}

TEST_P(CudaTyped, GuidedReluBackwardMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  expect_op_matches_cpu([](const TensorList& in) { return guided_relu(in[0]); },
                        {leaf(randn({3, 17, 11}, 30, GetParam()))}, 0);
}

TEST_P(CudaTyped, DropoutMasksMatchCpu) {
  SKIP_WITHOUT_CUDA();
  // A generator seeded identically in every call: the same counters on both devices.
  auto train = [](const TensorList& in) {
    Generator gen(5);
    return dropout(in[0], 0.3, true, &gen);
  };
  expect_op_matches_cpu(train, {leaf(randn({8, 513}, 6, GetParam()))}, rtol_for(GetParam()));
  expect_op_matches_cpu([](const TensorList& in) { return dropout(in[0], 0.3, false); },
                        {leaf(randn({5, 7}, 7, GetParam()))}, 0);
}

// ---- arithmetic, shapes --------------------------------------------------------------------

TEST_P(CudaTyped, ArithmeticMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const double r = rtol_for(t);
  const Tensor a = leaf(randn({257, 3}, 4, t)), b = leaf(randn({257, 3}, 5, t));
  expect_op_matches_cpu([](const TensorList& in) { return add(in[0], in[1]); }, {a, b}, r);
  expect_op_matches_cpu([](const TensorList& in) { return sub(in[0], in[1]); }, {a, b}, r);
  expect_op_matches_cpu([](const TensorList& in) { return mul(in[0], in[1]); }, {a, b}, r);
  expect_op_matches_cpu([](const TensorList& in) { return mul(in[0], in[0]); }, {a}, r);
  expect_op_matches_cpu([](const TensorList& in) { return mul(in[0], 0.37); }, {a}, r);
  expect_op_matches_cpu([](const TensorList& in) { return add(in[0], -1.5); }, {a}, r);
  expect_op_matches_cpu([](const TensorList& in) { return in[0] * 2.0 - in[1] * in[0] + in[1]; }, {a, b}, r);
  // One side frozen: only the other receives a gradient.
  expect_op_matches_cpu([](const TensorList& in) { return mul(in[0], in[1]); }, {a, b.detach()}, r);
}

TEST_P(CudaTyped, ReshapeAndFlattenMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({2, 3, 4, 5}, 8, GetParam()));
  expect_op_matches_cpu([](const TensorList& in) { return reshape(in[0], {4, -1}); }, {x}, 0);
  expect_op_matches_cpu([](const TensorList& in) { return flatten(in[0], 1); }, {x}, 0);
  expect_op_matches_cpu([](const TensorList& in) { return flatten(in[0], 1, 2); }, {x}, 0);
  expect_op_matches_cpu([](const TensorList& in) { return in[0].view({5, 24}); }, {x}, 0);
}

TEST_P(CudaTyped, CatMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  auto cat_on = [](int64_t dim) { return [dim](const TensorList& in) { return cat(in, dim); }; };
  expect_op_matches_cpu(cat_on(1), {leaf(randn({2, 3, 4}, 10, t)), leaf(randn({2, 1, 4}, 11, t)),
                                    leaf(randn({2, 5, 4}, 12, t))}, 0);
  expect_op_matches_cpu(cat_on(0), {leaf(randn({2, 3}, 13, t)), leaf(randn({4, 3}, 14, t))}, 0);
  expect_op_matches_cpu(cat_on(-1), {leaf(randn({2, 3, 2}, 15, t)), leaf(randn({2, 3, 5}, 16, t))}, 0);
  expect_op_matches_cpu(cat_on(1), {leaf(randn({2, 2, 3}, 17, t)), randn({2, 3, 3}, 18, t),
                                    leaf(randn({2, 4, 3}, 19, t))}, 0);
  // SqueezeNet's Fire output: expand1x1 and expand3x3 side by side.
  expect_op_matches_cpu(cat_on(1), {leaf(randn({2, 64, 13, 15}, 20, t)), leaf(randn({2, 64, 13, 15}, 21, t))}, 0);
  // Rows of at least 512 bytes go through the copy kernel: odd widths (4-byte units in
  // float), and 18 inputs (two launches).
  expect_op_matches_cpu(cat_on(1), {leaf(randn({3, 5, 37}, 22, t)), leaf(randn({3, 7, 37}, 23, t))}, 0);
  TensorList many;
  for (int k = 0; k < 18; ++k) many.push_back(leaf(randn({2, 4, 40}, 24 + k, t)));
  expect_op_matches_cpu(cat_on(1), many, 0);
}

// The first element of x on a 16-byte boundary (x itself where it is on one).
template <typename T> T* first_aligned16(T* x) {
  while (reinterpret_cast<std::uintptr_t>(x) % 16 != 0) ++x;
  return x;
}

// The copy kernel of cat and split, its per-thread code run on the host over the blocks
// each launch would have (and over fewer, so that threads take several strides and rows),
// against the CPU's cat and split bit for bit: every unit the kernel picks (16, 8, 4 bytes
// and a float or double each), unaligned starts, an empty input, more inputs than one
// launch takes, and a split that skips an input.
template <typename T> void expect_cat_code_matches_cpu(const std::vector<int64_t>& sizes, int64_t outer,
                                                       int64_t inner, int64_t misalign, uint64_t seed) {
  int64_t total = 0;
  for (int64_t c : sizes) total += c;
  // Inputs and outputs start `misalign` elements past a 16-byte boundary of their buffers.
  std::vector<std::vector<T>> store(sizes.size() + 2);
  std::vector<const T*> xs;
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  auto buffer = [&](std::vector<T>& v, int64_t n) {
    v.assign(static_cast<std::size_t>(n + misalign + 16), T(-7));
    T* p = first_aligned16(v.data()) + misalign;
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(normal(gen));
    return p;
  };
  for (std::size_t k = 0; k < sizes.size(); ++k) xs.push_back(buffer(store[k], outer * sizes[k] * inner));
  T* ref = buffer(store[sizes.size()], outer * total * inner);
  T* y = buffer(store[sizes.size() + 1], outer * total * inner);
  kernels::cat_cpu<T>(xs, sizes, ref, outer, inner);
  const std::vector<T> want(ref, ref + outer * total * inner);
  for (auto [gx, gy] : {std::pair{0u, 0u}, std::pair{1u, 0u}, std::pair{1u, 2u}, std::pair{3u, 1u}}) {
    SCOPED_TRACE(::testing::Message() << "grid " << gx << " x " << gy);
    std::fill(y, y + outer * total * inner, T(-7));
    kernels::cat_cuda_on_host<T>(xs, sizes, y, outer, inner, gx, gy);
    EXPECT_EQ(std::memcmp(y, want.data(), want.size() * sizeof(T)), 0) << "cat";
    // Split y back out into fresh outputs, skipping input 0.
    std::vector<std::vector<T>> back(sizes.size());
    std::vector<T*> outs(sizes.size(), nullptr);
    for (std::size_t k = 1; k < sizes.size(); ++k) {
      outs[k] = buffer(back[k], outer * sizes[k] * inner);
      std::fill(outs[k], outs[k] + outer * sizes[k] * inner, T(-7));
    }
    kernels::split_cuda_on_host<T>(y, outs, sizes, outer, inner, gx, gy);
    for (std::size_t k = 1; k < sizes.size(); ++k)
      EXPECT_EQ(std::memcmp(outs[k], xs[k], static_cast<std::size_t>(outer * sizes[k] * inner) * sizeof(T)), 0)
          << "split, input " << k;
  }
}

TEST(CudaKernelsOnHost, CatCopyCodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  struct Case {
    std::vector<int64_t> sizes;
    int64_t outer, inner, misalign;
  };
  std::vector<int64_t> many;  // 19 inputs: two launches
  for (int k = 0; k < 19; ++k) many.push_back(1 + k % 4);
  const Case cases[] = {
      {{64, 64}, 3, 16, 0},      // blocks of 4 KB: 16-byte units
      {{5, 7}, 7, 37, 0},        // odd widths: 4-byte units
      {{2, 6}, 5, 301, 0},       // widths of 2408 and 7224 bytes: 8-byte units (float)
      {{64, 64}, 3, 16, 1},      // unaligned starts: 4-byte units
      {{3, 0, 4}, 6, 129, 0},    // an empty input
      {many, 5, 33, 0},          // two launches
      {{1, 1}, 2, 10000, 0},     // rows far wider than a block's trip
  };
  uint64_t seed = 600;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << c.sizes.size() << " inputs, outer " << c.outer << ", inner " << c.inner
                                      << ", misaligned by " << c.misalign);
    expect_cat_code_matches_cpu<float>(c.sizes, c.outer, c.inner, c.misalign, seed++);
    expect_cat_code_matches_cpu<double>(c.sizes, c.outer, c.inner, c.misalign, seed++);
  }
#endif
}

// ---- reductions ---------------------------------------------------------------------------

TEST_P(CudaTyped, SumAndMeanMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const double r = rtol_for(t);
  const Tensor x = leaf(randn({3, 17, 5}, 40, t));
  expect_op_matches_cpu([](const TensorList& in) { return sum(in[0]); }, {x}, r);
  expect_op_matches_cpu([](const TensorList& in) { return mean(in[0]); }, {x}, r);
  for (int64_t d : {0, 1, 2, -1})
    for (bool keep : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "dim " << d << " keepdim " << keep);
      expect_op_matches_cpu([d, keep](const TensorList& in) { return sum(in[0], d, keep); }, {x}, r);
      expect_op_matches_cpu([d, keep](const TensorList& in) { return mean(in[0], d, keep); }, {x}, r);
    }
  // Long enough for many blocks, and an odd length.
  expect_op_matches_cpu([](const TensorList& in) { return sum(in[0]); }, {leaf(randn({(1 << 20) + 3}, 41, t))}, r);
  expect_op_matches_cpu([](const TensorList& in) { return sum(in[0], 1); }, {leaf(randn({3, 70001}, 42, t))}, r);
}

TEST_P(CudaTyped, AbsMaxMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({2, 3, 13, 11}, 45, GetParam()));
  for (int64_t d : {0, 1, -1})
    for (bool keep : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "dim " << d << " keepdim " << keep);
      expect_op_matches_cpu([d, keep](const TensorList& in) { return abs_max(in[0], d, keep); }, {x}, 0);
    }
}

// ---- softmax, log_softmax, cross_entropy -------------------------------------------------

TEST_P(CudaTyped, SoftmaxAndLogSoftmaxMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const double r = rtol_for(t);
  struct Case {
    Shape shape;
    int64_t dim;
  };
  // Short and long rows (1000: ImageNet's classes; 5000: longer than a warp's share),
  // rows of every register width a warp can hold (up to 32, 64, ..., 1024 elements, each
  // just past the width below), and inner > 1 where the softmax axis is not the last one.
  const Case cases[] = {{{3, 6}, 1},     {{2, 3, 5}, -1}, {{3, 2, 4}, 0},  {{2, 4, 3}, 1},
                        {{7, 1000}, 1},  {{2, 5000}, -1}, {{3, 32}, 1},    {{3, 33}, 1},
                        {{2, 100}, -1},  {{2, 129}, 1},   {{2, 300}, 1},   {{2, 513}, 1},
                        {{2, 1024}, 1},  {{2, 1025}, 1}};
  uint64_t seed = 50;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << shape_str(c.shape) << " dim " << c.dim);
    const Tensor x = leaf(mul(randn(c.shape, seed++, t), 3.0).detach());
    const int64_t d = c.dim;
    expect_op_matches_cpu([d](const TensorList& in) { return softmax(in[0], d); }, {x}, r);
    expect_op_matches_cpu([d](const TensorList& in) { return log_softmax(in[0], d); }, {x}, r);
  }
}

// More rows than the device holds warps at once (its multiprocessors times the blocks
// resident on each): every warp of the warp kernel takes several rows, each loaded before
// the previous one is computed. 24000 rows of 1000 (the classifier's width) and 60000 of
// 100 (a narrower register width, whose backward prefetches too).
TEST_P(CudaTyped, SoftmaxManyRowsPerWarpMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const double r = rtol_for(t);
  uint64_t seed = 58;
  for (const Shape& shape : {Shape{24000, 1000}, Shape{60000, 100}}) {
    SCOPED_TRACE(shape_str(shape));
    const Tensor x = leaf(mul(randn(shape, seed++, t), 3.0).detach());
    expect_op_matches_cpu([](const TensorList& in) { return softmax(in[0], 1); }, {x}, r);
    expect_op_matches_cpu([](const TensorList& in) { return log_softmax(in[0], 1); }, {x}, r);
  }
  std::vector<int64_t> targets;
  for (int64_t i = 0; i < 24000; ++i) targets.push_back((i * 389) % 1000);
  expect_op_matches_cpu([&targets](const TensorList& in) { return cross_entropy(in[0], targets); },
                        {leaf(mul(randn({24000, 1000}, seed, t), 4.0).detach())}, r);
}

using SoftmaxShape = std::array<int64_t, 3>;  // [outer, dim, inner]

std::string describe(const SoftmaxShape& sh, bool log) {
  return "[" + std::to_string(sh[0]) + ", " + std::to_string(sh[1]) + ", " + std::to_string(sh[2]) + "]" +
         (log ? " log_softmax" : " softmax");
}

// Softmax's kernel code, run on the host (no GPU needed) in both directions, against the
// CPU's kernels, on [outer, dim, inner]. The two sum in different orders (and may differ
// in expf's last bit), hence a tolerance of a few float or double roundings. Rows of at
// most 1024 (the warp code) run on a warp each, on one warp (each row's loads issued
// before the previous row is computed: outer - 1 hand-overs) and on two.
template <typename T> void expect_softmax_code_matches_cpu(int64_t outer, int64_t dim, int64_t inner, bool log,
                                                           uint64_t seed) {
  const int64_t n = outer * dim * inner;
  const Tensor rx = randn({n}, seed), rg = randn({n}, seed + 1);
  std::vector<T> x(n), gy(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<T>(4.0 * rx.data<double>()[i]);
    gy[i] = static_cast<T>(rg.data<double>()[i]);
  }
  std::vector<T> y_cpu(n), gx_cpu(n);
  kernels::softmax_forward_cpu<T>(x.data(), y_cpu.data(), outer, dim, inner, log);
  kernels::softmax_backward_cpu<T>(gy.data(), y_cpu.data(), gx_cpu.data(), outer, dim, inner, log);
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-13;
  auto rel = [](const std::vector<T>& a, const std::vector<T>& b) {
    double diff = 0, ref = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      diff = std::max(diff, std::abs(double(a[i]) - double(b[i])));
      ref = std::max(ref, std::abs(double(b[i])));
    }
    return ref > 0 ? diff / ref : diff;
  };
  for (int64_t warps : {0, 1, 2}) {
    SCOPED_TRACE("warps " + std::to_string(warps));
    std::vector<T> y_dev(n, T(-7)), gx_dev(n, T(-7));
    kernels::softmax_forward_cuda_on_host<T>(x.data(), y_dev.data(), outer, dim, inner, log, warps);
    kernels::softmax_backward_cuda_on_host<T>(gy.data(), y_cpu.data(), gx_dev.data(), outer, dim, inner, log, warps);
    EXPECT_LE(rel(y_dev, y_cpu), tol) << "forward";
    EXPECT_LE(rel(gx_dev, gx_cpu), tol) << "backward";
    if (inner != 1 || dim > 1024) break;  // the warp count is the warp code's alone
  }
}

// Five rows of every register width of the warp code.
TEST(CudaKernelsOnHost, WarpSoftmaxCodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  uint64_t seed = 70;
  for (int64_t dim : {1, 7, 32, 33, 64, 65, 100, 128, 129, 256, 300, 512, 513, 1000, 1024})
    for (bool log : {false, true}) {
      SCOPED_TRACE("dim " + std::to_string(dim) + (log ? " log_softmax" : " softmax"));
      expect_softmax_code_matches_cpu<float>(5, dim, 1, log, seed);
      expect_softmax_code_matches_cpu<double>(5, dim, 1, log, seed + 3);
      seed += 7;
    }
  std::vector<float> row(8);
  EXPECT_THROW(kernels::softmax_forward_cuda_on_host<float>(row.data(), row.data(), 1, 8, 1, false, -1),
               std::invalid_argument);
  EXPECT_THROW(kernels::softmax_backward_cuda_on_host<float>(row.data(), row.data(), row.data(), -1, 8, 1, false),
               std::invalid_argument);
#endif
}

// Float rows a multiple of 4 long go a float4 at a time only where x and y are 16-byte
// aligned. Rows that start 4 bytes past a boundary (a view one float into its storage)
// take the scalar loads: same results as the CPU, and no misaligned float4 access (UBSan's
// alignment check in the sanitized build; a fault on a GPU).
TEST(CudaKernelsOnHost, MisalignedFloatRowsMatchCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  const int64_t outer = 3;
  uint64_t seed = 75;
  for (int64_t dim : {100, 1000})
    for (bool log : {false, true}) {
      SCOPED_TRACE("dim " + std::to_string(dim) + (log ? " log_softmax" : " softmax"));
      const int64_t n = outer * dim;
      const Tensor r = randn({n}, seed++);
      std::vector<float> x(n + 1), y_cpu(n), y(n + 1, -7.0f);
      for (int64_t i = 0; i < n; ++i) x[i + 1] = static_cast<float>(4.0 * r.data<double>()[i]);
      kernels::softmax_forward_cpu<float>(x.data() + 1, y_cpu.data(), outer, dim, 1, log);
      kernels::softmax_forward_cuda_on_host<float>(x.data() + 1, y.data() + 1, outer, dim, 1, log, 2);
      EXPECT_EQ(y[0], -7.0f) << "wrote before the output";
      auto as_tensor = [n](const float* p) { return Tensor::from_vector({n}, std::vector<double>(p, p + n)); };
      EXPECT_LE(testing_util::rel_error(as_tensor(y.data() + 1), as_tensor(y_cpu.data())), 2e-6);
    }
#endif
}

// The block-per-row code (rows past 1024) and the per-column code (inner > 1).
TEST(CudaKernelsOnHost, SoftmaxBlockAndColumnCodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  uint64_t seed = 170;
  const std::vector<SoftmaxShape> shapes{{3, 1025, 1}, {2, 2500, 1}, {4, 10, 7}, {3, 1, 5}, {2, 1100, 3}};
  for (const SoftmaxShape& sh : shapes)
    for (bool log : {false, true}) {
      SCOPED_TRACE(describe(sh, log));
      expect_softmax_code_matches_cpu<float>(sh[0], sh[1], sh[2], log, seed);
      expect_softmax_code_matches_cpu<double>(sh[0], sh[1], sh[2], log, seed + 3);
      seed += 7;
    }
#endif
}

// Float rows apply their row's double (1 / s, log s, the backward's sums) in float, split into
// two floats. Against each formula evaluated in double from the same expf values and
// rounded to float once: every element within an ulp, and almost all equal. Element
// (o, d, i) of [outer, dim, inner]; the first row has logits of -inf (masked classes):
// log-probabilities of -inf; the second an infinite output gradient, whose sum makes the
// row's other gradients infinite too.
void expect_float_rows_match_double_formulas(int64_t outer, int64_t dim, int64_t inner, bool log, uint64_t seed) {
  const int64_t n = outer * dim * inner;
  const Tensor rx = randn({n}, seed), rg = randn({n}, seed + 1);
  std::vector<float> x(n), gy(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(3.0 * rx.data<double>()[i]);
    gy[i] = static_cast<float>(rg.data<double>()[i]);
  }
  auto at = [dim, inner](int64_t o, int64_t d, int64_t i) { return (o * dim + d) * inner + i; };
  for (int64_t d = 0; d < dim; d += 7) x[at(0, d, 0)] = -std::numeric_limits<float>::infinity();
  gy[at(1, 3, 0)] = std::numeric_limits<float>::infinity();
  std::vector<float> y(n), gx(n), y_ref(n), gx_ref(n);
  kernels::softmax_forward_cuda_on_host<float>(x.data(), y.data(), outer, dim, inner, log, 2);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t d = 0; d < dim; ++d) m = std::max(m, x[at(o, d, i)]);
      double s = 0;
      for (int64_t d = 0; d < dim; ++d) s += static_cast<double>(std::exp(x[at(o, d, i)] - m));
      for (int64_t d = 0; d < dim; ++d) {
        const float v = x[at(o, d, i)];
        y_ref[at(o, d, i)] = static_cast<float>(log ? static_cast<double>(v - m) - std::log(s)
                                                    : static_cast<double>(std::exp(v - m)) / s);
      }
    }
  kernels::softmax_backward_cuda_on_host<float>(gy.data(), y_ref.data(), gx.data(), outer, dim, inner, log, 2);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double s = 0;
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t k = at(o, d, i);
        s += log ? double(gy[k]) : double(gy[k]) * double(y_ref[k]);
      }
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t k = at(o, d, i);
        gx_ref[k] = static_cast<float>(log ? double(gy[k]) - double(std::exp(y_ref[k])) * s
                                           : double(y_ref[k]) * (double(gy[k]) - s));
      }
    }
  auto ulps = [](float a, float b) {  // a and b of one sign here; 0 and -0 are 0 apart
    if (a == b || (std::isnan(a) && std::isnan(b))) return int64_t(0);
    int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return std::abs(int64_t(ia) - int64_t(ib));
  };
  for (const auto& [got, want, what] : {std::tuple(&y, &y_ref, "forward"), std::tuple(&gx, &gx_ref, "backward")}) {
    int64_t worst = 0, differ = 0;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t u = ulps((*got)[k], (*want)[k]);
      worst = std::max(worst, u);
      differ += u != 0;
    }
    EXPECT_LE(worst, 1) << what;
    // A result differs only within about 2^-48 of a rounding boundary.
    EXPECT_LE(differ, n / 1000) << what << ": " << differ << " of " << n << " elements differ";
  }
}

// Rows on the warp code (100, 513 and 1000 long, on two warps), on the block code (2500)
// and columns (inner 7).
TEST(CudaKernelsOnHost, SoftmaxFloatRowsWithinAnUlpOfDouble) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  uint64_t seed = 90;
  const std::vector<SoftmaxShape> shapes{{7, 100, 1}, {7, 513, 1}, {7, 1000, 1}, {3, 2500, 1}, {5, 300, 7}};
  for (const SoftmaxShape& sh : shapes)
    for (bool log : {false, true}) {
      SCOPED_TRACE(describe(sh, log));
      expect_float_rows_match_double_formulas(sh[0], sh[1], sh[2], log, seed);
      seed += 2;
    }
#endif
}

TEST_P(CudaTyped, CrossEntropyMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const double r = rtol_for(t);
  expect_op_matches_cpu([](const TensorList& in) { return cross_entropy(in[0], {4}); },
                        {leaf(randn({1, 7}, 60, t))}, r);
  expect_op_matches_cpu([](const TensorList& in) { return cross_entropy(in[0], {0, 6, 3, 3, 1}); },
                        {leaf(mul(randn({5, 7}, 61, t), 3.0).detach())}, r);
  std::vector<int64_t> targets;
  for (int64_t i = 0; i < 33; ++i) targets.push_back((i * 389) % 1000);
  // An upstream gradient other than 1 reaches the backward through the scale.
  expect_op_matches_cpu([&targets](const TensorList& in) { return mul(cross_entropy(in[0], targets), 3.0); },
                        {leaf(mul(randn({33, 1000}, 62, t), 4.0).detach())}, r);
}

// ---- layers ------------------------------------------------------------------------------

TEST_P(CudaTyped, Conv2dMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  uint64_t seed = 100;
  for (const ConvCase& c : kConvCases)
    for (bool bias : {true, false}) {
      SCOPED_TRACE(describe(c) + (bias ? " with bias" : " without bias"));
      const Tensor x = leaf(randn({c.N, c.C, c.H, c.W}, seed++, t));
      const Tensor w = leaf(randn({c.Co, c.C, c.kh, c.kw}, seed++, t));
      const Tensor b = bias ? leaf(randn({c.Co}, seed++, t)) : Tensor();
      const Size2 stride(c.sh, c.sw), pad(c.ph, c.pw);
      expect_op_matches_cpu([stride, pad](const TensorList& in) { return conv2d(in[0], in[1], in[2], stride, pad); },
                            {x, w, b}, rtol_for(t));
    }
}

TEST_P(CudaTyped, Conv2dOnlyRequestedGradientsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const Tensor x = randn({2, 3, 6, 5}, 130, t), w = randn({4, 3, 3, 2}, 131, t), b = randn({4}, 132, t);
  auto f = [](const TensorList& in) { return conv2d(in[0], in[1], in[2], 2, 1); };
  expect_op_matches_cpu(f, {leaf(x.clone()), w, b}, rtol_for(t));  // frozen weights (saliency)
  expect_op_matches_cpu(f, {x, leaf(w.clone()), b}, rtol_for(t));
  expect_op_matches_cpu(f, {x, w, leaf(b.clone())}, rtol_for(t));
}

TEST_P(CudaTyped, Conv2dAlexNetConv1MatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const ConvCase c = kAlexNetConvs[0];
  const Tensor x = leaf(randn({c.N, c.C, c.H, c.W}, 140, t));
  const Tensor w = leaf(mul(randn({c.Co, c.C, c.kh, c.kw}, 141, t), 0.05).detach());
  const Tensor b = leaf(randn({c.Co}, 142, t));
  expect_op_matches_cpu([](const TensorList& in) { return conv2d(in[0], in[1], in[2], 4, 2); }, {x, w, b},
                        rtol_for(t));
}

// conv2d_relu and conv_relu_pool: on CUDA the ops one after another, on the CPU (float32)
// oneDNN's fused convolution and, for the forward without a graph, the blocked chain.
TEST_P(CudaTyped, Conv2dReluAndConvReluPoolMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const ConvCase c = kAlexNetConvs[1];
  const Tensor x = leaf(randn({c.N, c.C, c.H, c.W}, 143, t));
  const Tensor w = leaf(mul(randn({c.Co, c.C, c.kh, c.kw}, 144, t), 0.05).detach());
  const Tensor b = leaf(randn({c.Co}, 145, t));
  expect_op_matches_cpu([](const TensorList& in) { return conv2d_relu(in[0], in[1], in[2], 1, 2); }, {x, w, b},
                        rtol_for(t));
  auto run = [](const TensorList& in) {
    return conv_relu_pool(in[0], {testing_util::conv_layer(in[1], in[2], 1, 2), testing_util::pool_layer(3, 2)});
  };
  expect_op_matches_cpu(run, {x, w, b}, rtol_for(t));
  NoGradGuard ng;
  expect_op_matches_cpu(run, {x.detach(), w.detach(), b.detach()}, rtol_for(t));
}

TEST_P(CudaTyped, LinearMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const double r = rtol_for(t);
  auto with_bias = [](const TensorList& in) { return linear(in[0], in[1], in[2]); };
  auto without_bias = [](const TensorList& in) { return linear(in[0], in[1]); };
  struct Case {
    Shape x;
    int64_t out;
  };
  // 2-D and batched 3-D inputs, batch 1, and an odd, wider layer.
  const Case cases[] = {{{4, 5}, 3}, {{2, 3, 5}, 4}, {{1, 7}, 2}, {{7, 1031}, 513}, {{1, 1031}, 513}};
  uint64_t seed = 150;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "x " << shape_str(c.x) << " out " << c.out);
    const Tensor x = leaf(randn(c.x, seed++, t)), w = leaf(randn({c.out, c.x.back()}, seed++, t));
    const Tensor b = leaf(randn({c.out}, seed++, t));
    expect_op_matches_cpu(with_bias, {x, w, b}, r);
    expect_op_matches_cpu(without_bias, {x, w}, r);
    expect_op_matches_cpu(with_bias, {x.detach(), w, b}, r);  // input frozen
    expect_op_matches_cpu(with_bias, {x, w.detach(), b.detach()}, r);  // weights frozen
  }
}

// ---- pooling cases shared by the op tests and the gradient checks ----------------------

namespace {
struct PoolCase {
  Shape x;
  Size2 k, s, p;
  bool ceil;
};
std::string describe(const PoolCase& c) {
  return "x " + shape_str(c.x) + " kernel " + std::to_string(c.k.h) + "x" + std::to_string(c.k.w) + " stride " +
         std::to_string(c.s.h) + "x" + std::to_string(c.s.w) + " pad " + std::to_string(c.p.h) + "x" +
         std::to_string(c.p.w) + (c.ceil ? " ceil" : "");
}
// Overlapping and not, stride 0 (= kernel), padding, rectangular windows, ceil_mode with
// a last window hanging over the edge.
const PoolCase kPoolCases[] = {{{2, 3, 9, 11}, 3, 2, 0, false},
                               {{1, 2, 13, 13}, 3, 2, 0, false},
                               {{1, 2, 5, 6}, 2, 1, 0, false},
                               {{2, 2, 6, 7}, 2, 0, 0, false},
                               {{2, 2, 7, 8}, 3, 2, 1, false},
                               {{2, 2, 7, 9}, Size2(3, 2), Size2(2, 1), Size2(1, 0), false},
                               {{2, 2, 8, 8}, 3, 2, 0, true},
                               {{1, 2, 13, 14}, 3, 2, 0, true},
                               {{2, 2, 5, 6}, 2, 2, 1, true},
                               {{1, 2, 6, 9}, 3, 2, 1, true}};

struct AdaptiveCase {
  Shape x;
  Size2 out;
};
std::string describe(const AdaptiveCase& c) {
  return "x " + shape_str(c.x) + " to " + std::to_string(c.out.h) + "x" + std::to_string(c.out.w);
}
// Smaller and non-divisible (AlexNet's 13 -> 6), larger (5 -> 7), equal, divisible,
// mixed, and global (SqueezeNet's head).
const AdaptiveCase kAdaptiveCases[] = {{{2, 3, 13, 13}, 6}, {{1, 2, 5, 5}, 7},           {{2, 3, 7, 9}, Size2(3, 4)},
                                       {{2, 2, 6, 6}, 6},   {{2, 2, 6, 8}, Size2(3, 4)}, {{1, 3, 4, 9}, Size2(7, 2)},
                                       {{2, 3, 5, 4}, 1}};
}  // namespace

TEST_P(CudaTyped, MaxPool2dMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  std::vector<PoolCase> cases(std::begin(kPoolCases), std::end(kPoolCases));
  cases.push_back({{2, 64, 55, 55}, 3, 2, 0, false});   // AlexNet's first pool
  cases.push_back({{2, 64, 111, 111}, 3, 2, 0, true});  // SqueezeNet's first pool
  uint64_t seed = 200;
  for (const PoolCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const Tensor x = leaf(randn(c.x, seed++, t));
    // The forward selects elements (exact); the backward sums where windows overlap.
    const PoolCase cc = c;
    expect_op_matches_cpu([cc](const TensorList& in) { return max_pool2d(in[0], cc.k, cc.s, cc.p, cc.ceil); }, {x},
                          rtol_for(t));
  }
}

// The max-pool kernels' per-thread code, run on the host (no GPU needed): the same maxima,
// argmax and gradients as the CPU's kernels, bit for bit. The packed kernels (with their
// index arithmetic) in both of their forms (3x3 at stride 2 with fixed trip counts; any
// other window), and the flat ones that shapes beyond int get. Values on a coarse grid
// make ties (and zeros of both signs), and a few NaNs, in every other plane, must
// propagate to their windows (the CPU's rows without one take its NaN-free form).
template <typename T> void expect_max_pool_code_matches_cpu(const PoolCase& c, uint64_t seed, bool flat) {
  const kernels::Pool2dShape s = engine::detail::max_pool2d_shape(c.x, c.k, c.s, c.p, c.ceil);
  const Tensor r = randn(c.x, seed);
  const int64_t nx = r.numel(), ny = s.N * s.C * s.Ho * s.Wo;
  std::vector<T> x(static_cast<std::size_t>(nx)), gy(static_cast<std::size_t>(ny));
  for (int64_t i = 0; i < nx; ++i) x[i] = static_cast<T>(std::round(r.data<double>()[i] * 2.0));
  const int64_t plane = s.H * s.W;
  for (int64_t i = 0; i < nx; i += 37)
    if (i / plane % 2 == 0) x[i] = std::numeric_limits<T>::quiet_NaN();
  const Tensor rg = randn({ny}, seed + 1);
  for (int64_t i = 0; i < ny; ++i) gy[i] = static_cast<T>(rg.data<double>()[i]);

  std::vector<T> y_cpu(gy.size()), y_dev(gy.size(), T(-7)), gx_cpu(x.size()), gx_dev(x.size(), T(-7));
  std::vector<int64_t> am_cpu(gy.size()), am_dev(gy.size(), -7);
  kernels::max_pool2d_forward_cpu<T>(x.data(), y_cpu.data(), am_cpu.data(), s);
  kernels::max_pool2d_forward_cuda_on_host<T>(x.data(), y_dev.data(), am_dev.data(), s, flat);
  EXPECT_EQ(am_dev, am_cpu);
  EXPECT_EQ(0, std::memcmp(y_dev.data(), y_cpu.data(), y_cpu.size() * sizeof(T))) << "maxima differ";
  // Without an argmax only y is written.
  std::vector<T> y_only(gy.size(), T(-7));
  kernels::max_pool2d_forward_cuda_on_host<T>(x.data(), y_only.data(), nullptr, s, flat);
  EXPECT_EQ(0, std::memcmp(y_only.data(), y_cpu.data(), y_cpu.size() * sizeof(T))) << "maxima differ (no argmax)";

  kernels::max_pool2d_backward_cpu<T>(gy.data(), am_cpu.data(), gx_cpu.data(), s);
  kernels::max_pool2d_backward_cuda_on_host<T>(gy.data(), am_cpu.data(), gx_dev.data(), s, flat);
  EXPECT_EQ(0, std::memcmp(gx_dev.data(), gx_cpu.data(), gx_cpu.size() * sizeof(T))) << "gradients differ";
  int64_t nan_max = 0, nonzero_grad = 0;
  for (T v : y_cpu) nan_max += std::isnan(v) ? 1 : 0;
  for (T v : gx_cpu) nonzero_grad += v != T(0) ? 1 : 0;
  EXPECT_GT(nan_max, 0);  // the case exercises NaN windows
  EXPECT_GT(nonzero_grad, 0);
}

TEST(CudaKernelsOnHost, MaxPoolCodeMatchesCpuBitForBit) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  std::vector<PoolCase> cases(std::begin(kPoolCases), std::end(kPoolCases));
  cases.push_back({{2, 8, 55, 55}, 3, 2, 0, false});   // AlexNet's first pool
  cases.push_back({{1, 4, 27, 27}, 3, 2, 0, false});   // its second
  cases.push_back({{2, 4, 111, 111}, 3, 2, 0, true});  // SqueezeNet's first (ceil_mode)
  cases.push_back({{1, 3, 10, 9}, 3, 2, 1, true});     // 3x3/2 with padding
  cases.push_back({{1, 3, 4, 5}, 3, 2, 1, false});
  cases.push_back({{1, 2, 3, 3}, 3, 2, 0, true});      // one window, hanging over
  uint64_t seed = 230;
  for (const PoolCase& c : cases) {
    SCOPED_TRACE(describe(c));
    for (bool flat : {false, true}) {
      SCOPED_TRACE(flat ? "flat kernels" : "packed kernels");
      expect_max_pool_code_matches_cpu<float>(c, seed, flat);
      expect_max_pool_code_matches_cpu<double>(c, seed + 7, flat);
    }
    seed += 17;
  }
#endif
}

// The global average pool's warp code: lane l sums elements l, l + 32, ..., then the
// lanes combine in the shuffles' order. On integer-valued inputs every sum is exact
// whatever the order, so the means must equal the CPU's bit for bit (an element missed or
// counted twice shows); on random inputs they agree to the rounding of the sums.
template <typename T>
void expect_global_pool_code_matches_cpu(int64_t NC, int64_t H, int64_t W, uint64_t seed) {
  const int64_t hw = H * W, n = NC * hw;
  const Tensor r = randn({n}, seed);
  std::vector<T> whole(static_cast<size_t>(n)), random(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double v = r.data<double>()[i];
    random[static_cast<size_t>(i)] = static_cast<T>(v);
    whole[static_cast<size_t>(i)] = static_cast<T>(std::floor(8 * v));
  }
  for (const bool exact : {true, false}) {
    SCOPED_TRACE(exact ? "integer-valued inputs" : "random inputs");
    const std::vector<T>& x = exact ? whole : random;
    std::vector<T> y_cpu(static_cast<size_t>(NC)), y_dev(static_cast<size_t>(NC), T(-7));
    kernels::adaptive_avg_pool2d_forward_cpu<T>(x.data(), y_cpu.data(), NC, H, W, 1, 1);
    kernels::adaptive_avg_pool2d_forward_cuda_on_host<T>(x.data(), y_dev.data(), NC, H, W);
    for (int64_t p = 0; p < NC; ++p) {
      const size_t k = static_cast<size_t>(p);
      if (exact) {
        EXPECT_EQ(0, std::memcmp(&y_dev[k], &y_cpu[k], sizeof(T))) << "plane " << p << ": " << y_dev[k] << " vs " << y_cpu[k];
      } else {
        double abs_sum = 0;
        for (int64_t i = 0; i < hw; ++i) abs_sum += std::abs(static_cast<double>(x[static_cast<size_t>(p * hw + i)]));
        // Either order's sum is within (hw - 1) eps sum|x| of the exact one; so each mean
        // within eps sum|x| (the division's rounding included, loosely).
        const double tol = 4.0 * std::numeric_limits<T>::epsilon() * abs_sum;
        EXPECT_NEAR(static_cast<double>(y_dev[k]), static_cast<double>(y_cpu[k]), tol) << "plane " << p;
      }
    }
  }
}

// Global pools' shapes {planes, H, W}: planes of 1, fewer than 32, exactly 32, 33,
// SqueezeNet's 13 x 13 and 1000 elements.
const std::array<std::array<int64_t, 3>, 6> kGlobalPoolShapes = {
    {{3, 1, 1}, {2, 5, 4}, {3, 4, 8}, {2, 3, 11}, {5, 13, 13}, {2, 25, 40}}};

TEST(CudaKernelsOnHost, GlobalAvgPoolWarpCodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  uint64_t seed = 260;
  for (const auto& [NC, H, W] : kGlobalPoolShapes) {
    SCOPED_TRACE(std::to_string(NC) + " planes of " + std::to_string(H) + " x " + std::to_string(W));
    expect_global_pool_code_matches_cpu<float>(NC, H, W, seed++);
    expect_global_pool_code_matches_cpu<double>(NC, H, W, seed++);
  }
#endif
}

// The global average pool's backward per-thread code (the plane of each element from a
// FastDiv) on the host, against the CPU bit for bit: the shapes above and SqueezeNet's
// last pool at batch 2.
TEST(CudaKernelsOnHost, GlobalAvgPoolBackwardCodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  std::vector<std::array<int64_t, 3>> shapes(kGlobalPoolShapes.begin(), kGlobalPoolShapes.end());
  shapes.push_back({2000, 13, 13});
  uint64_t seed = 270;
  for (const auto& [NC, H, W] : shapes) {
    SCOPED_TRACE(std::to_string(NC) + " planes of " + std::to_string(H) + " x " + std::to_string(W));
    auto check = [&](auto tag) {
      using T = decltype(tag);
      const Tensor r = randn({NC}, seed++);
      std::vector<T> gy(static_cast<size_t>(NC));
      for (int64_t p = 0; p < NC; ++p) gy[static_cast<size_t>(p)] = static_cast<T>(r.data<double>()[p]);
      std::vector<T> gx_cpu(static_cast<size_t>(NC * H * W)), buf(gx_cpu.size() + 8, T(-7));
      kernels::adaptive_avg_pool2d_backward_cpu<T>(gy.data(), gx_cpu.data(), NC, H, W, 1, 1);
      // 16-byte aligned (float: the float4 kernel) and one element past it (one a thread).
      for (int off : {0, 1}) {
        T* gx_dev = first_aligned16(buf.data()) + off;
        std::fill(buf.begin(), buf.end(), T(-7));
        kernels::adaptive_avg_pool2d_backward_cuda_on_host<T>(gy.data(), gx_dev, NC, H, W);
        EXPECT_EQ(0, std::memcmp(gx_dev, gx_cpu.data(), gx_cpu.size() * sizeof(T))) << "offset " << off;
      }
    };
    check(float{});
    check(double{});
  }
#endif
}

TEST_P(CudaTyped, AdaptiveAvgPool2dMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  std::vector<AdaptiveCase> cases(std::begin(kAdaptiveCases), std::end(kAdaptiveCases));
  cases.push_back({{2, 1000, 13, 13}, 1});
  cases.push_back({{2, 256, 13, 13}, 6});
  uint64_t seed = 250;
  for (const AdaptiveCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const Size2 out = c.out;
    expect_op_matches_cpu([out](const TensorList& in) { return adaptive_avg_pool2d(in[0], out); },
                          {leaf(randn(c.x, seed++, t))}, rtol_for(t));
  }
}

// ---- the optimiser ------------------------------------------------------------------------

// lr, momentum, dampening, weight decay, Nesterov, first step: every branch of the update.
const kernels::SgdParams kSgdCases[] = {{0.1, 0.9, 0.1, 1e-2, false, false},
                                        {0.1, 0.9, 0.1, 1e-2, false, true},
                                        {0.05, 0.9, 0.0, 5e-4, true, false},
                                        {0.05, 0.9, 0.0, 5e-4, true, true},
                                        {0.1, 0.0, 0.0, 1e-3, false, false}};

std::string sgd_case_name(const kernels::SgdParams& h) {
  return (::testing::Message() << "momentum " << h.momentum << " dampening " << h.dampening << " wd "
                               << h.weight_decay << " nesterov " << h.nesterov << " first " << h.first_step)
      .GetString();
}

TEST_P(CudaTyped, SgdStepKernelMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  uint64_t seed = 300;
  for (const kernels::SgdParams& h : kSgdCases) {
    SCOPED_TRACE(sgd_case_name(h));
    // Lengths with and without a remainder of 4; offsets that misalign the arrays.
    for (int64_t n : {1001, 4096, 6})
      for (int64_t off : {0, 1, 2}) {
        SCOPED_TRACE("n " + std::to_string(n) + " offset " + std::to_string(off));
        const int64_t len = n + off;
        Tensor p = randn({len}, seed++, t), g = randn({len}, seed++, t), b = randn({len}, seed++, t);
        Tensor pg = p.to(kCuda), gg = g.to(kCuda), bg = b.to(kCuda);
        const bool with_buf = h.momentum != 0;
        dispatch_dtype(t, [&](auto tag) {
          using T = decltype(tag);
          kernels::sgd_step_cpu<T>(p.data<T>() + off, g.data<T>() + off, with_buf ? b.data<T>() + off : nullptr, h, n);
          kernels::sgd_step_cuda<T>(pg.data<T>() + off, gg.data<T>() + off, with_buf ? bg.data<T>() + off : nullptr, h,
                                    n);
        });
        EXPECT_MATCHES_CPU(pg, p, rtol_for(t));
        EXPECT_MATCHES_CPU(bg, b, rtol_for(t));
      }
  }
}

// The float kernel's per-thread code (four elements at a time, then each thread's share
// of the last n % 4) on the host, thread by thread over the grid the launch uses, against
// the shared per-element update applied element by element: every remainder mod 4, grids
// of one block to many, every branch of the update. Runs in every build with CUDA, GPU
// or not.
TEST(CudaKernelsOnHost, SgdFloat4CodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  uint64_t seed = 330;
  for (const kernels::SgdParams& h : kSgdCases) {
    SCOPED_TRACE(sgd_case_name(h));
    for (int64_t n : {1, 2, 3, 4, 5, 7, 1001, 1024, 4099, 300001}) {
      SCOPED_TRACE("n " + std::to_string(n));
      const Tensor p0 = randn({n}, seed++, DType::F32), g = randn({n}, seed++, DType::F32);
      const Tensor b0 = randn({n}, seed++, DType::F32);
      const bool with_buf = h.momentum != 0;
      Tensor p = p0.clone(), b = b0.clone(), p_ref = p0.clone(), b_ref = b0.clone();
      ASSERT_TRUE(first_aligned16(p.data<float>()) == p.data<float>() &&
                  first_aligned16(g.data<float>()) == g.data<float>() &&
                  first_aligned16(b.data<float>()) == b.data<float>());
      for (int64_t i = 0; i < n; ++i)
        kernels::sgd_update(p_ref.data<float>()[i], g.data<float>()[i], with_buf ? b_ref.data<float>() + i : nullptr,
                            h);
      kernels::sgd_step_float4_cuda_on_host(p.data<float>(), g.data<float>(), with_buf ? b.data<float>() : nullptr,
                                            h, n);
      EXPECT_ALL_CLOSE(p, p_ref, 1e-6, 1e-7);
      EXPECT_ALL_CLOSE(b, b_ref, 1e-6, 1e-7);
      EXPECT_FALSE(bit_identical(p, p0)) << "no step taken";
    }
  }
  Tensor p = randn({9}, seed++, DType::F32);
  EXPECT_THROW(kernels::sgd_step_float4_cuda_on_host(p.data<float>() + 1, p.data<float>(), nullptr, kSgdCases[0], 8),
               std::invalid_argument);
#endif
}

// The float maps' per-thread code on the host: four float4s loaded before the first is
// stored (cuda::strided_unrolled), then each thread's share of the last n % 4. It is held
// to the CPU kernels bit for bit on ReLU's forward (a unary map) and backward (a binary
// one). The cases cover every remainder mod 4 and last trips cut short. The grids are the
// launch's own and ones of 1 and 3 blocks, whose threads take several strides. The maps
// run out of place and in place. Runs in every build with CUDA, GPU or not.
TEST(CudaKernelsOnHost, ElementwiseFloat4CodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  uint64_t seed = 340;
  for (int64_t n : {0, 1, 3, 4, 5, 8, 17, 1023, 4096, 4099, 8195, 12289, 14003, 100003}) {
    const Tensor a = randn({n}, seed++, DType::F32), b = randn({n}, seed++, DType::F32);
    for (int64_t i = 0; i < n; i += 7) b.data<float>()[i] = 0.0f;  // relu_backward's y = 0: no gradient
    ASSERT_TRUE(first_aligned16(a.data<float>()) == a.data<float>() &&
                first_aligned16(b.data<float>()) == b.data<float>());
    for (const char* op : {"relu", "relu_backward"}) {
      const bool unary = std::string(op) == "relu";
      Tensor ref = Tensor::zeros({n}, DType::F32);
      if (unary) kernels::relu_forward_cpu<float>(a.data<float>(), ref.data<float>(), n);
      else kernels::relu_backward_cpu<float>(a.data<float>(), b.data<float>(), ref.data<float>(), n);
      for (unsigned blocks : {0u, 1u, 3u}) {
        SCOPED_TRACE(std::string(op) + " n " + std::to_string(n) + " blocks " + std::to_string(blocks));
        Tensor y = Tensor::full({n}, -7.0, DType::F32);
        kernels::map2_float4_cuda_on_host(op, a.data<float>(), unary ? nullptr : b.data<float>(), y.data<float>(), n,
                                          blocks);
        EXPECT_TRUE(bit_identical(y, ref));
        Tensor in_place = a.clone();
        kernels::map2_float4_cuda_on_host(op, in_place.data<float>(), unary ? nullptr : b.data<float>(),
                                          in_place.data<float>(), n, blocks);
        EXPECT_TRUE(bit_identical(in_place, ref)) << "in place";
      }
    }
  }
  Tensor x = randn({9}, seed++, DType::F32);
  EXPECT_THROW(kernels::map2_float4_cuda_on_host("relu", x.data<float>() + 1, nullptr, x.data<float>(), 8),
               std::invalid_argument);
  EXPECT_THROW(kernels::map2_float4_cuda_on_host("tanh", x.data<float>(), nullptr, x.data<float>(), 8),
               std::invalid_argument);
#endif
}

// Dropout's float4 kernel code on the host against the CPU's dropout, bit for bit: the
// same Philox block per four elements (counter offset + i / 4), so the same mask and
// output. Sizes cover every remainder mod 4 and cut-short trips; grids the launch's own
// and of 1 and 3 blocks; p of 0.3 and 0 (nothing dropped) and 1 (everything).
TEST(CudaKernelsOnHost, DropoutFloat4CodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  uint64_t seed = 360;
  for (int64_t n : {0, 1, 3, 4, 5, 17, 1023, 4099, 12289, 100003})
    for (float p : {0.3f, 0.0f, 1.0f}) {
      const Tensor x = randn({n}, seed++, DType::F32);
      ASSERT_TRUE(first_aligned16(x.data<float>()) == x.data<float>());
      Tensor mask = Tensor::full({n}, -7.0, DType::F32), y = Tensor::full({n}, -7.0, DType::F32);
      const uint64_t offset = 1000 + seed;
      kernels::dropout_forward_cpu<float>(x.data<float>(), mask.data<float>(), y.data<float>(), p, 77, offset, n);
      if (p == 0.3f && n > 1000) {  // a real mask: about p of it dropped
        int64_t dropped = 0;
        for (double m : mask.to_vector<double>()) dropped += m == 0.0;
        EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(n), 0.3, 0.03);
      }
      for (unsigned blocks : {0u, 1u, 3u}) {
        SCOPED_TRACE("n " + std::to_string(n) + " p " + std::to_string(p) + " blocks " + std::to_string(blocks));
        Tensor mask_d = Tensor::full({n}, -7.0, DType::F32), y_d = Tensor::full({n}, -7.0, DType::F32);
        kernels::dropout_float4_cuda_on_host(x.data<float>(), mask_d.data<float>(), y_d.data<float>(), p, 77, offset,
                                             n, blocks);
        EXPECT_TRUE(bit_identical(mask_d, mask));
        EXPECT_TRUE(bit_identical(y_d, y));
      }
    }
  Tensor x = randn({9}, seed, DType::F32), m = Tensor::empty({9}, DType::F32), y = Tensor::empty({9}, DType::F32);
  EXPECT_THROW(kernels::dropout_float4_cuda_on_host(x.data<float>() + 1, m.data<float>(), y.data<float>(), 0.5f, 1,
                                                    0, 8),
               std::invalid_argument);
#endif
}

// optim::SGD over parameters on the GPU against the same parameters on the CPU: three
// steps with fresh gradients, momentum, dampening, Nesterov and weight decay.
TEST_P(CudaTyped, SgdOptimizerMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const optim::SgdOptions cases[] = {optim::SgdOptions(0.1, 0.9, 0.1, 1e-2, false),
                                     optim::SgdOptions(0.05, 0.9, 0.0, 5e-4, true),
                                     optim::SgdOptions(0.1, 0.0, 0.0, 1e-3, false)};
  uint64_t seed = 320;
  for (const optim::SgdOptions& o : cases) {
    SCOPED_TRACE(::testing::Message() << "momentum " << o.momentum << " dampening " << o.dampening << " wd "
                                      << o.weight_decay << " nesterov " << o.nesterov);
    const Tensor w0 = randn({17, 9}, seed++, t), b0 = randn({17}, seed++, t);
    Tensor wc = leaf(w0.clone()), bc = leaf(b0.clone());
    Tensor wg = leaf(w0.to(kCuda)), bg = leaf(b0.to(kCuda));
    optim::SGD on_cpu({wc, bc}, o), on_gpu({wg, bg}, o);
    for (int step = 0; step < 3; ++step) {
      const Tensor gw = randn(w0.shape(), seed++, t), gb = randn(b0.shape(), seed++, t);
      wc.set_grad(gw);
      bc.set_grad(gb);
      wg.set_grad(gw.to(kCuda));
      bg.set_grad(gb.to(kCuda));
      on_cpu.step();
      on_gpu.step();
    }
    EXPECT_MATCHES_CPU(wg, wc, rtol_for(t));
    EXPECT_MATCHES_CPU(bg, bc, rtol_for(t));
    const TensorList sc = on_cpu.state(), sg = on_gpu.state();
    ASSERT_EQ(sc.size(), sg.size());
    for (size_t i = 0; i < sc.size(); ++i) {
      ASSERT_EQ(sc[i].defined(), sg[i].defined()) << "buffer " << i;
      if (sc[i].defined()) {
        EXPECT_MATCHES_CPU(sg[i], sc[i], rtol_for(t)) << "buffer " << i;
      }
    }
  }
}

// ---- kernels --------------------------------------------------------------------------------

class CudaKernels : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaKernels, ::testing::Values(DType::F32, DType::F64),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

namespace {

template <typename T>
using GemmFn = std::function<void(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T,
                                  T*, int64_t)>;

struct GemmCase {
  bool ta, tb;
  int64_t M, N, K;
  double alpha, beta;
};

// One GEMM on the GPU (or, with on_host, the GPU code on host threads) against gemm_cpu,
// on the same operands stored with leading dimensions `pad` larger than their rows (3 by
// default: the padding of C must survive, and rows are not 16-byte aligned; 0 with sizes
// that are multiples of 4: every row is, and the kernels take their vector paths). With
// nan_c the M x N block of the device's C starts as NaN: with beta 0, C is write-only.
template <typename T>
::testing::AssertionResult gemm_matches_cpu(const GemmFn<T>& gpu, const GemmCase& c, bool nan_c, uint64_t seed,
                                            int64_t pad = 3, bool on_host = false) {
  const DType dt = dtype_of<T>::value;
  const int64_t a_rows = c.ta ? c.K : c.M, a_cols = c.ta ? c.M : c.K;
  const int64_t b_rows = c.tb ? c.N : c.K, b_cols = c.tb ? c.K : c.N;
  const int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = c.N + pad;
  const Tensor A = randn({a_rows * lda}, seed, dt), B = randn({b_rows * ldb}, seed + 1, dt);
  Tensor C = randn({c.M * ldc}, seed + 2, dt);
  Tensor C_start = C.clone();
  if (nan_c) {
    T* p = C_start.data<T>();
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t j = 0; j < c.N; ++j) p[i * ldc + j] = std::numeric_limits<T>::quiet_NaN();
  }
  const Device dev = on_host ? kCpu : kCuda;
  const Tensor Ad = A.to(dev), Bd = B.to(dev);
  Tensor Cd = C_start.to(dev);
  if (on_host) Cd = Cd.clone();  // not C_start's storage
  kernels::gemm_cpu<T>(c.ta, c.tb, c.M, c.N, c.K, T(c.alpha), A.data<T>(), lda, B.data<T>(), ldb, T(c.beta),
                       C.data<T>(), ldc);
  gpu(c.ta, c.tb, c.M, c.N, c.K, T(c.alpha), Ad.data<T>(), lda, Bd.data<T>(), ldb, T(c.beta), Cd.data<T>(), ldc);
  if (on_host) return testing_util::all_close(Cd, C, rtol_for(dt), rtol_for(dt) * max_abs(C));
  return matches_cpu(Cd, C, rtol_for(dt));
}

// Every transpose combination on odd shapes (1x1x1, single rows and columns, sizes
// that are not multiples of any tile) with several alpha/beta pairs.
template <typename T> void expect_gemm_matches_cpu(GemmFn<T> gpu) {
  // {3, 70, 2000}, {37, 53, 1500} and {129, 1, 600} have few output tiles and a long K:
  // the tiled kernel splits K there. Up to 8 rows with B transposed take its warp-per-
  // column kernel ({1, 1, 1}, {1, 300, 17}, {3, 70, 2000}, {5, 33, 1001}, {8, 40, 77}).
  const int64_t shapes[][3] = {{1, 1, 1},    {37, 53, 29},   {130, 257, 67}, {1, 300, 17},
                               {129, 1, 65}, {64, 64, 64},   {3, 70, 2000},  {37, 53, 1500},
                               {129, 1, 600}, {5, 33, 1001}, {8, 40, 77}};
  const double scales[][2] = {{1.0, 0.0}, {0.7, -0.3}, {-1.25, 1.0}};
  uint64_t seed = 400;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& mnk : shapes)
        for (const auto& ab : scales) {
          const GemmCase c{ta, tb, mnk[0], mnk[1], mnk[2], ab[0], ab[1]};
          EXPECT_TRUE(gemm_matches_cpu<T>(gpu, c, false, seed += 3))
              << "trans_a " << ta << " trans_b " << tb << " M " << c.M << " N " << c.N << " K " << c.K << " alpha "
              << c.alpha << " beta " << c.beta;
        }
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const GemmCase c{ta, tb, 37, 53, 29, 1.5, 0.0};
      EXPECT_TRUE(gemm_matches_cpu<T>(gpu, c, true, seed += 3)) << "NaN in C, beta 0: trans_a " << ta << " trans_b "
                                                                 << tb;
    }
  // Aligned rows: FC-like shapes (a batch of 1, 8 or 64 rows; K split by the tiled
  // kernel, or a warp per column) and a square one, through the 16-byte loads and stores.
  const int64_t aligned[][3] = {{1, 1000, 4096}, {8, 64, 2048}, {64, 256, 1024}, {128, 128, 64}};
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& mnk : aligned)
        for (const auto& ab : scales) {
          const GemmCase c{ta, tb, mnk[0], mnk[1], mnk[2], ab[0], ab[1]};
          EXPECT_TRUE(gemm_matches_cpu<T>(gpu, c, false, seed += 3, 0))
              << "aligned: trans_a " << ta << " trans_b " << tb << " M " << c.M << " N " << c.N << " K " << c.K
              << " alpha " << c.alpha << " beta " << c.beta;
        }
}

}  // namespace

// The elementwise maps at every alignment of their pointers and with every remainder of
// n mod 4 (float takes four elements at a time where all pointers are 16-byte aligned,
// and one at a time otherwise or for the tail), in place too: equal to the CPU's, and
// nothing outside [0, n) is written (the arrays are random there).
TEST_P(CudaKernels, ElementwiseMapsAtEveryAlignmentAndLength) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const int64_t pad = 8;
  uint64_t seed = 780;
  for (int64_t n : {1, 3, 4, 5, 8, 1027, 4100})
    for (int64_t off : {0, 1, 2, 3}) {
      SCOPED_TRACE("n " + std::to_string(n) + " offset " + std::to_string(off));
      const Tensor a = randn({n + pad}, seed++, t), b = randn({n + pad}, seed++, t), y0 = randn({n + pad}, seed++, t);
      const Tensor a_d = a.to(kCuda), b_d = b.to(kCuda);
      dispatch_dtype(t, [&](auto tag) {
        using T = decltype(tag);
        using Cpu = void (*)(const T*, const T*, T*, int64_t);
        const std::function<void(const T*, const T*, T*, bool)> maps[] = {
            [&](const T* u, const T*, T* y, bool gpu) {
              (gpu ? kernels::relu_forward_cuda<T> : kernels::relu_forward_cpu<T>)(u, y, n);
            },
            [&](const T* u, const T* v, T* y, bool gpu) {
              (gpu ? Cpu(kernels::relu_backward_cuda<T>) : Cpu(kernels::relu_backward_cpu<T>))(u, v, y, n);
            },
            [&](const T* u, const T* v, T* y, bool gpu) {
              (gpu ? Cpu(kernels::guided_relu_backward_cuda<T>) : Cpu(kernels::guided_relu_backward_cpu<T>))(u, v, y,
                                                                                                           n);
            },
            [&](const T* u, const T* v, T* y, bool gpu) {
              (gpu ? kernels::axpby_cuda<T> : kernels::axpby_cpu<T>)(T(0.75), u, T(-1.25), v, y, n);
            },
            [&](const T* u, const T*, T* y, bool gpu) {
              (gpu ? kernels::axpby_cuda<T> : kernels::axpby_cpu<T>)(T(0.75), u, T(0), nullptr, y, n);
            },
            [&](const T* u, const T* v, T* y, bool gpu) {
              (gpu ? Cpu(kernels::mul_cuda<T>) : Cpu(kernels::mul_cpu<T>))(u, v, y, n);
            }};
        for (std::size_t m = 0; m < std::size(maps); ++m) {
          SCOPED_TRACE("map " + std::to_string(m));
          for (bool in_place : {false, true}) {
            Tensor y = in_place ? a.clone() : y0.clone();
            Tensor y_d = in_place ? a_d.clone() : y0.to(kCuda);
            const T* u = in_place ? y.data<T>() : a.data<T>();
            const T* u_d = in_place ? y_d.data<T>() : a_d.data<T>();
            maps[m](u + off, b.data<T>() + off, y.data<T>() + off, false);
            maps[m](u_d + off, b_d.data<T>() + off, y_d.data<T>() + off, true);
            EXPECT_MATCHES_CPU(y_d, y, rtol_for(t)) << (in_place ? "in place" : "");
          }
        }
      });
    }
}

// sum_all at every alignment of its input (float reads four elements at a time where x
// is 16-byte aligned) and every remainder mod 4, on lengths that take several blocks.
TEST_P(CudaKernels, SumAllAtEveryAlignmentAndLength) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  uint64_t seed = 790;
  for (int64_t n : {8193, 100000, 100003})
    for (int64_t off : {0, 1, 2, 3}) {
      SCOPED_TRACE("n " + std::to_string(n) + " offset " + std::to_string(off));
      const Tensor a = randn({n + 4}, seed++, t);
      const Tensor a_d = a.to(kCuda);
      dispatch_dtype(t, [&](auto tag) {
        using T = decltype(tag);
        Tensor y = Tensor::empty({1}, t, kCpu), y_d = Tensor::empty({1}, t, kCuda);
        y.data<T>()[0] = static_cast<T>(0.5 * static_cast<double>(kernels::sum_all_cpu<T>(a.data<T>() + off, n)));
        kernels::sum_all_cuda<T>(a_d.data<T>() + off, y_d.data<T>(), T(0.5), n);
        EXPECT_MATCHES_CPU(y_d, y, rtol_for(t));
      });
    }
}

// sum_all's per-thread code on the host, over the grid sum_all_cuda launches for each n
// (one block up to 8192 elements; then 16 elements a thread up to 1024 blocks, beyond
// that several grid strides a thread), at every alignment (float reads four elements at
// a time where aligned) and remainder mod 4: with x = 1 the threads' sums add up to n,
// with x[i] = i + 1 to n (n + 1) / 2, both exact, so every element is read exactly once.
TEST(CudaKernelsOnHost, SumAllThreadCodeReadsEveryElementOnce) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  auto check = [](auto tag, int64_t n, int64_t off) {
    using T = decltype(tag);
    SCOPED_TRACE(std::string(std::is_same_v<T, float> ? "float" : "double") + " n " + std::to_string(n) + " offset " +
                 std::to_string(off));
    std::vector<T> ones(static_cast<size_t>(n + 8), T(1)), iota(static_cast<size_t>(n + 8));
    T* const x1 = first_aligned16(ones.data()) + off;
    T* const xi = first_aligned16(iota.data()) + off;
    for (int64_t i = 0; i < n; ++i) xi[i] = static_cast<T>(i + 1);
    auto total = [](const std::vector<double>& sums) {
      double t = 0;
      for (double v : sums) t += v;
      return t;
    };
    const std::vector<double> a = kernels::sum_all_thread_sums_cuda_on_host<T>(x1, n);
    const std::vector<double> b = kernels::sum_all_thread_sums_cuda_on_host<T>(xi, n);
    EXPECT_EQ(total(a), static_cast<double>(n));
    EXPECT_EQ(total(b), static_cast<double>(n) * static_cast<double>(n + 1) / 2);
    EXPECT_EQ(a.size(), b.size());
  };
  for (int64_t n : std::vector<int64_t>{0, 1, 7, 8192, 8193, 8194, 8195, 8196, 100003, 1 << 22, (1 << 22) + 4099})
    for (int64_t off : {0, 1, 2, 3}) {
      check(float{}, n, off);
      if (off < 2) check(double{}, n, off);
    }
#endif
}

TEST_P(CudaKernels, GemmCublasMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  EXPECT_FALSE(kernels::cuda_allow_tf32()) << "TF32 must be opt-in";
  dispatch_dtype(GetParam(), [](auto tag) {
    using T = decltype(tag);
    expect_gemm_matches_cpu<T>(&kernels::gemm_cuda<T>);
  });
}

TEST_P(CudaKernels, GemmTiledMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  dispatch_dtype(GetParam(), [](auto tag) {
    using T = decltype(tag);
    expect_gemm_matches_cpu<T>(&kernels::gemm_tiled_cuda<T>);
  });
}

// The tiled GEMM's own code on host threads (gemm_tiled_cuda_on_host: 256 threads per
// block with real barriers, 32 per warp with the shuffles' butterfly) against gemm_cpu,
// through every path of gemm_tiled_cuda: tiles with ragged edges and unaligned rows
// (element loads), K split unevenly across the grid and the splits added (the given
// multiprocessor count decides the split: 8 splits these shapes, 1 never does), a warp
// per column for few rows with B transposed, 16-byte loads and stores on aligned rows,
// beta 0 over NaN, alpha 0 and K 0. Runs in every build with CUDA, GPU or not.
TEST(CudaKernelsOnHost, TiledGemmCodeMatchesCpu) {
#if !ENGINE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA: no kernel code to run";
#else
  struct Shape {
    int64_t M, N, K, pad;
    const char* what;
  };
  const Shape shapes[] = {
      {37, 53, 29, 3, "one ragged tile"},
      {130, 257, 67, 3, "several ragged tiles"},
      {37, 53, 800, 3, "K split 3 ways, the last split shorter"},
      {3, 20, 1001, 3, "3 rows: a warp per column when B is transposed"},
      {64, 132, 520, 0, "aligned, K split 2 ways, a ragged tile"},
      {8, 16, 1024, 0, "aligned, 8 rows: a warp per column with 16-byte loads"},
      {128, 128, 64, 0, "aligned full tiles"},
  };
  uint64_t seed = 900;
  // One case in both dtypes, the kernels' code run as on `sms` multiprocessors.
  auto check_both = [&](bool ta, bool tb, const Shape& s, double alpha, double beta, bool nan_c, int sms) {
    const GemmCase c{ta, tb, s.M, s.N, s.K, alpha, beta};
    auto check = [&](auto tag) {
      using T = decltype(tag);
      const GemmFn<T> on_host = [sms](bool op_a, bool op_b, int64_t M, int64_t N, int64_t K, T a, const T* A,
                                      int64_t lda, const T* B, int64_t ldb, T b, T* C, int64_t ldc) {
        kernels::gemm_tiled_cuda_on_host<T>(op_a, op_b, M, N, K, a, A, lda, B, ldb, b, C, ldc, sms);
      };
      EXPECT_TRUE(gemm_matches_cpu<T>(on_host, c, nan_c, seed += 3, s.pad, true))
          << dtype_name(dtype_of<T>::value) << ": " << s.what << ", M " << s.M << " N " << s.N << " K " << s.K
          << ", trans_a " << ta << " trans_b " << tb << ", alpha " << alpha << " beta " << beta
          << (nan_c ? " over NaN" : "") << ", " << sms << " multiprocessors";
    };
    check(float());
    check(double());
  };
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      for (const Shape& s : shapes) check_both(ta, tb, s, 0.7, -0.3, false, 8);
      check_both(ta, tb, shapes[2], 1.0, 0.0, true, 8);    // split, beta 0: C never read
      check_both(ta, tb, shapes[2], -1.25, 1.0, false, 1);  // the same shape unsplit
      check_both(ta, tb, shapes[0], 1.5, 0.0, true, 8);
      check_both(ta, tb, shapes[3], 1.0, 0.0, true, 8);
      check_both(ta, tb, {5, 7, 3, 3, "alpha 0"}, 0.0, -0.3, false, 8);
      check_both(ta, tb, {5, 7, 0, 3, "K 0"}, 1.0, 0.5, false, 8);
    }
  float x = 1;
  EXPECT_THROW(kernels::gemm_tiled_cuda_on_host<float>(false, false, 1, 1, 1, 1.f, &x, 1, &x, 1, 0.f, &x, 1, 0),
               std::invalid_argument);
#endif
}

// im2col only copies: exact, including the zeros of the padding; the columns between
// Ho*Wo and ld are left alone.
TEST_P(CudaKernels, Im2colMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  uint64_t seed = 500;
  for (const ConvCase& c : kConvCases) {
    SCOPED_TRACE(describe(c));
    const kernels::Conv2dShape s = shape_of(c);
    const int64_t K = s.C * s.kh * s.kw, ld = s.Ho * s.Wo + 5;
    const Tensor x = randn({s.C, s.H, s.W}, seed++, t);
    Tensor col = randn({K * ld}, seed++, t);
    Tensor col_d = col.to(kCuda);
    const Tensor x_d = x.to(kCuda);
    dispatch_dtype(t, [&](auto tag) {
      using T = decltype(tag);
      kernels::im2col_cpu<T>(x.data<T>(), col.data<T>(), s, ld);
      kernels::im2col_cuda<T>(x_d.data<T>(), col_d.data<T>(), s, ld);
    });
    EXPECT_MATCHES_CPU(col_d, col, 0);
  }
}

// col2im adds into x; overlapping windows sum in an order of the kernel's choosing.
TEST_P(CudaKernels, Col2imMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  uint64_t seed = 550;
  for (const ConvCase& c : kConvCases) {
    SCOPED_TRACE(describe(c));
    const kernels::Conv2dShape s = shape_of(c);
    const int64_t K = s.C * s.kh * s.kw, ld = s.Ho * s.Wo + 5;
    const Tensor col = randn({K * ld}, seed++, t);
    Tensor x = randn({s.C, s.H, s.W}, seed++, t);
    Tensor x_d = x.to(kCuda);
    const Tensor col_d = col.to(kCuda);
    dispatch_dtype(t, [&](auto tag) {
      using T = decltype(tag);
      kernels::col2im_cpu<T>(col.data<T>(), x.data<T>(), s, ld);
      kernels::col2im_cuda<T>(col_d.data<T>(), x_d.data<T>(), s, ld);
    });
    EXPECT_MATCHES_CPU(x_d, x, rtol_for(t));
  }
}

// The handwritten im2col + GEMM convolution and cuDNN's agree with each other and with
// the CPU, with and without bias, on the odd cases and on AlexNet's five layers.
TEST_P(CudaKernels, Conv2dIm2colMatchesCudnn) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  std::vector<ConvCase> cases(std::begin(kConvCases), std::end(kConvCases));
  cases.insert(cases.end(), std::begin(kAlexNetConvs), std::end(kAlexNetConvs));
  uint64_t seed = 600;
  for (const ConvCase& c : cases)
    for (bool bias : {true, false}) {
      SCOPED_TRACE(describe(c) + (bias ? " with bias" : " without bias"));
      const kernels::Conv2dShape s = shape_of(c);
      const Tensor x = randn({s.N, s.C, s.H, s.W}, seed++, t), w = randn({s.Co, s.C, s.kh, s.kw}, seed++, t);
      const Tensor b = randn({s.Co}, seed++, t);
      const Tensor x_d = x.to(kCuda), w_d = w.to(kCuda), b_d = b.to(kCuda);
      Tensor y = Tensor::empty({s.N, s.Co, s.Ho, s.Wo}, t);
      Tensor y_cudnn = Tensor::full(y.shape(), 7.0, t, kCuda), y_im2col = Tensor::full(y.shape(), 7.0, t, kCuda);
      dispatch_dtype(t, [&](auto tag) {
        using T = decltype(tag);
        kernels::conv2d_forward_cpu<T>(x.data<T>(), w.data<T>(), bias ? b.data<T>() : nullptr, y.data<T>(), s);
        kernels::conv2d_forward_cudnn<T>(x_d.data<T>(), w_d.data<T>(), bias ? b_d.data<T>() : nullptr,
                                         y_cudnn.data<T>(), s);
        kernels::conv2d_forward_im2col_cuda<T>(x_d.data<T>(), w_d.data<T>(), bias ? b_d.data<T>() : nullptr,
                                               y_im2col.data<T>(), s);
      });
      EXPECT_MATCHES_CPU(y_cudnn, y, rtol_for(t)) << "cuDNN";
      EXPECT_MATCHES_CPU(y_im2col, y, rtol_for(t)) << "im2col";
      EXPECT_MATCHES_CPU(y_im2col, y_cudnn.to(kCpu), rtol_for(t)) << "im2col against cuDNN";
    }
}

// With set_cudnn_deterministic(true), the backward (whose fastest algorithms use atomics)
// gives bit-identical gradients when repeated, and they still match the CPU.
TEST_P(CudaKernels, CudnnDeterministicBackwardIsBitIdentical) {
  SKIP_WITHOUT_CUDA();
  struct Restore {
    bool was = kernels::cudnn_deterministic();
    ~Restore() { kernels::set_cudnn_deterministic(was); }
  } restore;
  kernels::set_cudnn_deterministic(true);
  EXPECT_TRUE(kernels::cudnn_deterministic());
  const DType t = GetParam();
  const ConvCase cases[] = {{4, 64, 27, 27, 192, 5, 5, 1, 1, 2, 2}, {2, 3, 35, 33, 8, 11, 11, 4, 4, 2, 2},
                            {3, 5, 9, 11, 7, 3, 3, 2, 1, 1, 1}};
  uint64_t seed = 700;
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(describe(c));
    const kernels::Conv2dShape s = shape_of(c);
    const Tensor x = randn({s.N, s.C, s.H, s.W}, seed++, t), w = randn({s.Co, s.C, s.kh, s.kw}, seed++, t);
    const Tensor gy = randn({s.N, s.Co, s.Ho, s.Wo}, seed++, t);
    const Tensor x_d = x.to(kCuda), w_d = w.to(kCuda), gy_d = gy.to(kCuda);
    TensorList runs[2];
    for (int r = 0; r < 2; ++r) {
      // Different garbage in the outputs each time: nothing may depend on it.
      Tensor gx = Tensor::full(x.shape(), 3.0 + r, t, kCuda), gw = Tensor::full(w.shape(), -5.0 - r, t, kCuda);
      Tensor gb = Tensor::full({s.Co}, 11.0 + r, t, kCuda);
      dispatch_dtype(t, [&](auto tag) {
        using T = decltype(tag);
        kernels::conv2d_backward_cudnn<T>(x_d.data<T>(), w_d.data<T>(), gy_d.data<T>(), gx.data<T>(), gw.data<T>(),
                                          gb.data<T>(), s);
      });
      runs[r] = {gx, gw, gb};
    }
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(bit_identical(runs[0][k], runs[1][k])) << "gradient " << k;
    Tensor gx = Tensor::empty(x.shape(), t), gw = Tensor::empty(w.shape(), t), gb = Tensor::empty({s.Co}, t);
    dispatch_dtype(t, [&](auto tag) {
      using T = decltype(tag);
      kernels::conv2d_backward_cpu<T>(x.data<T>(), w.data<T>(), gy.data<T>(), gx.data<T>(), gw.data<T>(),
                                      gb.data<T>(), s);
    });
    EXPECT_MATCHES_CPU(runs[0][0], gx, rtol_for(t)) << "input gradient";
    EXPECT_MATCHES_CPU(runs[0][1], gw, rtol_for(t)) << "weight gradient";
    EXPECT_MATCHES_CPU(runs[0][2], gb, rtol_for(t)) << "bias gradient";
  }
}

// At AlexNet's shapes and a training batch (where cudnnFind ranks the fast transforms
// first), every cuDNN algorithm the engine picks for float stays within float's accuracy:
// forward, backward-data and backward-filter against cuDNN in double, relative to the
// largest magnitude. Measured on an H200 (cuDNN 9.19): the engine's choices within
// 9.3e-7, and every other algorithm within 2.3e-6, but for the non-fused Winograd ones,
// which it must not pick and which Find ranks first for conv4 and conv5 forward: 1.2e-5
// to 2e-5 on the 3x3 layers, 1e-2 on the 5x5 one.
TEST(CudnnConvolution, FloatMatchesDoubleAtAlexNetShapesBatch64) {
  SKIP_WITHOUT_CUDA();
  ASSERT_FALSE(kernels::cuda_allow_tf32());
  uint64_t seed = 720;
  for (ConvCase c : kAlexNetConvs) {
    c.N = 64;
    SCOPED_TRACE(describe(c));
    const kernels::Conv2dShape s = shape_of(c);
    const Tensor x = randn({s.N, s.C, s.H, s.W}, seed++, DType::F32).to(kCuda);
    const Tensor w = mul(randn({s.Co, s.C, s.kh, s.kw}, seed++, DType::F32), 0.05).to(kCuda);
    const Tensor gy = randn({s.N, s.Co, s.Ho, s.Wo}, seed++, DType::F32).to(kCuda);
    TensorList out[2];  // float, double: y, gx, gw
    for (int k = 0; k < 2; ++k) {
      const DType t = k == 0 ? DType::F32 : DType::F64;
      const Tensor xt = x.to(t), wt = w.to(t), gyt = gy.to(t);
      Tensor y = Tensor::empty(gy.shape(), t, kCuda), gx = Tensor::empty(x.shape(), t, kCuda);
      Tensor gw = Tensor::empty(w.shape(), t, kCuda);
      dispatch_dtype(t, [&](auto tag) {
        using T = decltype(tag);
        kernels::conv2d_forward_cudnn<T>(xt.data<T>(), wt.data<T>(), nullptr, y.data<T>(), s);
        kernels::conv2d_backward_cudnn<T>(xt.data<T>(), wt.data<T>(), gyt.data<T>(), gx.data<T>(), gw.data<T>(),
                                          nullptr, s);
      });
      out[k] = {y.to(kCpu).to(DType::F64), gx.to(kCpu).to(DType::F64), gw.to(kCpu).to(DType::F64)};
    }
    const char* names[3] = {"forward", "backward-data", "backward-filter"};
    for (int i = 0; i < 3; ++i) {
      const double e = testing_util::rel_error(out[0][i], out[1][i]);
      std::cout << describe(c) << " " << names[i] << ": float vs double " << e << "\n";
      EXPECT_LT(e, 6e-6) << names[i];
    }
  }
}

// Counter-based random numbers: the CUDA kernel draws the CPU's mask for the same seed
// and offset, bit for bit, and the mask is a real one.
TEST_P(CudaKernels, DropoutMaskMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  const int64_t n = 10007;
  const double p = 0.3;
  const Tensor x = randn({n}, 750, t), x_d = x.to(kCuda);
  Tensor mask = Tensor::empty({n}, t), y = Tensor::empty({n}, t);
  Tensor mask_d = Tensor::empty({n}, t, kCuda), y_d = Tensor::empty({n}, t, kCuda);
  dispatch_dtype(t, [&](auto tag) {
    using T = decltype(tag);
    kernels::dropout_forward_cpu<T>(x.data<T>(), mask.data<T>(), y.data<T>(), T(p), 77, 12345, n);
    kernels::dropout_forward_cuda<T>(x_d.data<T>(), mask_d.data<T>(), y_d.data<T>(), T(p), 77, 12345, n);
  });
  EXPECT_TRUE(bit_identical(mask_d, mask));
  EXPECT_TRUE(bit_identical(y_d, y));
  int64_t dropped = 0;
  for (double m : mask.to_vector<double>()) dropped += m == 0.0;
  EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(n), p, 0.03);
}

// ---- gradient checks on the device (float64, central differences) ----------------------------

TEST(CudaGradcheck, Conv2dEveryCaseF64) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 800;
  for (const ConvCase& c : kConvCases)
    for (bool bias : {true, false}) {
      if (c.H > 20) continue;  // the AlexNet-geometry case has its own, smaller check below
      SCOPED_TRACE(describe(c) + (bias ? " with bias" : " without bias"));
      const Tensor x = leaf(randn({c.N, c.C, c.H, c.W}, seed++));
      const Tensor w = leaf(randn({c.Co, c.C, c.kh, c.kw}, seed++));
      const Tensor b = bias ? leaf(randn({c.Co}, seed++)) : Tensor();
      const Size2 stride(c.sh, c.sw), pad(c.ph, c.pw);
      EXPECT_CUDA_GRADCHECK(
          [stride, pad](const TensorList& in) { return conv2d(in[0], in[1], in[2], stride, pad); }, {x, w, b});
    }
}

// AlexNet's first layer geometry (11x11, stride 4, padding 2) on a small image.
TEST(CudaGradcheck, Conv2dK11S4P2F64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({1, 2, 19, 17}, 830)), w = leaf(randn({3, 2, 11, 11}, 831)), b = leaf(randn({3}, 832));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return conv2d(in[0], in[1], in[2], 4, 2); }, {x, w, b});
}

TEST(CudaGradcheck, Conv2dFrozenWeightF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({2, 3, 6, 5}, 835)), w = randn({4, 3, 3, 2}, 836), b = randn({4}, 837);
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return conv2d(in[0], in[1], in[2], 2, 1); }, {x, w, b});
}

TEST(CudaGradcheck, LinearF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({4, 5}, 840)), w = leaf(randn({3, 5}, 841)), b = leaf(randn({3}, 842));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1], in[2]); }, {x, w, b});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1]); }, {x, w});
  const Tensor x3 = leaf(randn({2, 3, 5}, 843));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1], in[2]); }, {x3, w, b});
  const Tensor x1 = leaf(randn({1, 5}, 844));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return linear(in[0], in[1], in[2]); }, {x1, w, b});
}

TEST(CudaGradcheck, ReluF64) {
  SKIP_WITHOUT_CUDA();
  // distinct() values are multiples of 0.01 including 0; shifted off the kink.
  const Tensor x = leaf(add(distinct({2, 3, 5, 7}, 850), 0.005));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return relu(in[0]); }, {x});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return mul(relu(in[0]), in[0]); }, {x});
}

// guided_relu's backward is guided backpropagation's rule, not a derivative: checked
// against the rule itself, on the device.
TEST(CudaGradcheck, GuidedReluFollowsTheGuidedRuleF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = add(distinct({3, 4, 5}, 855), 0.005);
  const Tensor gy = randn({3, 4, 5}, 856);
  Tensor xg = leaf(x.to(kCuda));
  guided_relu(xg).backward(gy.to(kCuda));
  const std::vector<double> xv = x.to_vector<double>(), gv = gy.to_vector<double>();
  std::vector<double> want(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) want[i] = xv[i] > 0 && gv[i] > 0 ? gv[i] : 0.0;
  EXPECT_MATCHES_CPU(xg.grad(), Tensor::from_vector({3, 4, 5}, want), 0);
}

TEST(CudaGradcheck, DropoutF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({4, 25}, 860));
  EXPECT_CUDA_GRADCHECK(
      [](const TensorList& in) {
        Generator gen(77);
        return dropout(in[0], 0.3, true, &gen);
      },
      {x});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return dropout(in[0], 0.5, false); }, {x});
}

TEST(CudaGradcheck, MaxPool2dF64) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 870;
  for (const PoolCase& c : kPoolCases) {
    SCOPED_TRACE(describe(c));
    const PoolCase cc = c;
    // Distinct values: no ties, so no kinks.
    EXPECT_CUDA_GRADCHECK([cc](const TensorList& in) { return max_pool2d(in[0], cc.k, cc.s, cc.p, cc.ceil); },
                          {leaf(distinct(c.x, seed++))});
  }
}

TEST(CudaGradcheck, AdaptiveAvgPool2dF64) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 890;
  for (const AdaptiveCase& c : kAdaptiveCases) {
    SCOPED_TRACE(describe(c));
    const Size2 out = c.out;
    EXPECT_CUDA_GRADCHECK([out](const TensorList& in) { return adaptive_avg_pool2d(in[0], out); },
                          {leaf(randn(c.x, seed++))});
  }
}

TEST(CudaGradcheck, ReshapeFlattenCatF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({2, 3, 2, 5}, 900));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return reshape(in[0], {4, -1}); }, {x});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return mul(flatten(in[0], 1, 2), 2.0); }, {x});
  const Tensor a = leaf(randn({2, 3, 4}, 901)), b = randn({2, 1, 4}, 902), c = leaf(randn({2, 5, 4}, 903));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return cat(in, 1); }, {a, b, c});
  const Tensor d = leaf(randn({2, 3}, 904)), e = leaf(randn({4, 3}, 905));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return cat(in, 0); }, {d, e});
  const Tensor f = leaf(randn({2, 3, 2}, 906)), g = leaf(randn({2, 3, 5}, 907));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return cat(in, -1); }, {f, g});
}

TEST(CudaGradcheck, ArithmeticF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor a = leaf(randn({3, 5}, 910)), b = leaf(randn({3, 5}, 911));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return add(in[0], in[1]); }, {a, b});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return sub(in[0], in[1]); }, {a, b});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return mul(in[0], in[1]); }, {a, b});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return mul(in[0], in[0]); }, {a});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return mul(in[0], -2.5); }, {a});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return add(in[0], 1.5); }, {a});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return mul(in[0], in[1]); }, {a, b.detach()});
}

TEST(CudaGradcheck, SumAndMeanF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({2, 3, 4}, 920));
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return sum(in[0]); }, {x});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return mean(in[0]); }, {x});
  for (int64_t d : {0, 1, -1})
    for (bool keep : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "dim " << d << " keepdim " << keep);
      EXPECT_CUDA_GRADCHECK([d, keep](const TensorList& in) { return sum(in[0], d, keep); }, {x});
      EXPECT_CUDA_GRADCHECK([d, keep](const TensorList& in) { return mean(in[0], d, keep); }, {x});
    }
}

TEST(CudaGradcheck, SoftmaxAndLogSoftmaxF64) {
  SKIP_WITHOUT_CUDA();
  const std::pair<Shape, int64_t> cases[] = {{{3, 6}, 1}, {{2, 3, 5}, -1}, {{3, 2, 4}, 0}, {{2, 4, 3}, 1}};
  uint64_t seed = 930;
  for (const auto& [shape, dim] : cases) {
    SCOPED_TRACE(::testing::Message() << shape_str(shape) << " dim " << dim);
    const Tensor x = leaf(randn(shape, seed++));
    const int64_t d = dim;
    EXPECT_CUDA_GRADCHECK([d](const TensorList& in) { return softmax(in[0], d); }, {x});
    EXPECT_CUDA_GRADCHECK([d](const TensorList& in) { return log_softmax(in[0], d); }, {x});
  }
}

TEST(CudaGradcheck, CrossEntropyF64) {
  SKIP_WITHOUT_CUDA();
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return cross_entropy(in[0], {4}); }, {leaf(randn({1, 7}, 940))});
  EXPECT_CUDA_GRADCHECK([](const TensorList& in) { return cross_entropy(in[0], {0, 6, 3, 3, 1}); },
                        {leaf(mul(randn({5, 7}, 941), 3.0).detach())});
  const Tensor x = leaf(randn({5, 4}, 942)), w = leaf(randn({7, 4}, 943)), b = leaf(randn({7}, 944));
  EXPECT_CUDA_GRADCHECK(
      [](const TensorList& in) { return mul(cross_entropy(linear(in[0], in[1], in[2]), {2, 0, 6, 5, 2}), 3.0); },
      {x, w, b});
}

// conv, relu, pool, adaptive pool, linear and the loss in one graph, all on the device.
TEST(CudaGradcheck, SmallNetworkF64) {
  SKIP_WITHOUT_CUDA();
  const Tensor x = leaf(randn({2, 2, 9, 8}, 950));
  const Tensor w1 = leaf(mul(randn({3, 2, 3, 3}, 951), 0.5).detach()), b1 = leaf(randn({3}, 952));
  const Tensor w2 = leaf(mul(randn({5, 12}, 953), 0.3).detach()), b2 = leaf(randn({5}, 954));
  auto f = [](const TensorList& in) {
    Tensor h = relu(conv2d(in[0], in[1], in[2], 2, 1));  // [2, 3, 5, 4]
    h = max_pool2d(h, 2, 2, 0, /*ceil_mode=*/true);       // [2, 3, 3, 2]
    h = adaptive_avg_pool2d(h, Size2(2, 2));              // [2, 3, 2, 2]
    h = linear(flatten(h, 1), in[3], in[4]);              // [2, 5]
    return cross_entropy(h, {1, 4});
  };
  EXPECT_CUDA_GRADCHECK(f, {x, w1, b1, w2, b2});
}

// ---- devices --------------------------------------------------------------------------------

// Never skipped: without a GPU, "cuda" is a clear engine error and "auto" is the CPU;
// with one, "cuda" and "auto" are device 0 and an index past the last is an error.
TEST(CudaDevice, ParseGivesOnlyDevicesThatExist) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_THROW(Device::parse("gpu"), Error);
  auto error_of = [](const std::string& name) {
    try {
      Device::parse(name);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  if (!cuda_available()) {
    EXPECT_EQ(kernels::cuda::device_count(), 0);
    EXPECT_EQ(Device::parse("auto"), Device::cpu());
    for (const std::string name : {"cuda", "cuda:0"}) {
      const std::string e = error_of(name);
      EXPECT_NE(e.find("'" + name + "'"), std::string::npos) << e;
      EXPECT_NE(e.find("no CUDA device is available"), std::string::npos) << e;
    }
  } else {
    const int n = kernels::cuda::device_count();
    EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
    EXPECT_EQ(Device::parse("auto"), Device::cuda(0));
    EXPECT_EQ(Device::parse("cuda:" + std::to_string(n - 1)), Device::cuda(n - 1));
    const std::string e = error_of("cuda:" + std::to_string(n));
    EXPECT_NE(e.find("only " + std::to_string(n) + " CUDA device(s) exist"), std::string::npos) << e;
  }
}

TEST(CudaDevice, IsNamed) {
  SKIP_WITHOUT_CUDA();
  EXPECT_FALSE(kernels::cuda::device_name(0).empty());
  std::cout << "CUDA device 0: " << kernels::cuda::device_name(0) << "\n";
  const std::string versions = kernels::cuda::library_versions();
  EXPECT_NE(versions.find("cuDNN "), std::string::npos) << versions;
  std::cout << "libraries at run time: " << versions << "\n";
}
