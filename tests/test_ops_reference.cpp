// Forward values and input gradients of every op against PyTorch.
//
// The cases below get seeded random inputs (float32, and a float64 case per family) and
// a random upstream gradient gy; all of them go into one HDF5 file, and
// tests/reference/ops_reference.py computes y = op(inputs) and d(sum(y * gy))/d(input)
// for every input with torch.nn.functional, once per process, in float64 from the stored
// values (so the reference carries no float32 rounding of its own). Each test then runs
// the engine's op on the same inputs, in their dtype, and compares. Shapes include AlexNet's (conv1 11x11
// stride 4 pad 2, 3x3 stride 2 pooling on 55x55 and 27x27, 13x13 -> 6x6 adaptive
// pooling, 1000 classes) and SqueezeNet's ceil_mode pooling.
//
// Tolerances: |got - ref| <= rtol * |ref| + rtol * rms(ref), rtol 1e-5 for float32 and
// 1e-12 for float64; rms(ref) is the typical size of the reference tensor, the natural
// scale of rounding error in sums of many terms. The data lives in a temporary
// directory and is never committed.
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>

#include "engine/io/h5.h"
#include "tests/test_util.h"

using namespace engine;

namespace {

struct Case {
  std::string name;    // HDF5 key prefix
  std::string family;  // which test checks it
  std::string op;      // ops_reference.py's name for it
  std::vector<int64_t> params;
  TensorList inputs;
  std::vector<int64_t> targets;  // cross_entropy
  double scalar = 0;             // mul_scalar
  bool backward = true;          // false for ops without a gradient (abs_max)
  Tensor gy;                     // upstream gradient, filled in by make_cases
};

// The engine's op for a case; the params follow ops_reference.py's layout.
Tensor run_engine(const Case& c, const TensorList& in) {
  const auto& p = c.params;
  if (c.op == "conv2d")
    return conv2d(in[0], in[1], p[4] ? in[2] : Tensor(), Size2(p[0], p[1]), Size2(p[2], p[3]));
  if (c.op == "linear") return linear(in[0], in[1], p[0] ? in[2] : Tensor());
  if (c.op == "relu") return relu(in[0]);
  if (c.op == "guided_relu") return guided_relu(in[0]);
  if (c.op == "abs_max") return abs_max(in[0], p[0], p[1] != 0);
  if (c.op == "max_pool2d")
    return max_pool2d(in[0], Size2(p[0], p[1]), Size2(p[2], p[3]), Size2(p[4], p[5]), p[6] != 0);
  if (c.op == "adaptive_avg_pool2d") return adaptive_avg_pool2d(in[0], Size2(p[0], p[1]));
  if (c.op == "cat") return cat(in, p[0]);
  if (c.op == "sum") return p[0] ? sum(in[0]) : sum(in[0], p[1], p[2] != 0);
  if (c.op == "mean") return p[0] ? mean(in[0]) : mean(in[0], p[1], p[2] != 0);
  if (c.op == "softmax") return softmax(in[0], p[0]);
  if (c.op == "log_softmax") return log_softmax(in[0], p[0]);
  if (c.op == "cross_entropy") return cross_entropy(in[0], c.targets);
  if (c.op == "add") return add(in[0], in[1]);
  if (c.op == "sub") return sub(in[0], in[1]);
  if (c.op == "mul") return mul(in[0], in[1]);
  if (c.op == "mul_scalar") return mul(in[0], c.scalar);
  throw Error("test_ops_reference: unknown op " + c.op);
}

class CaseBuilder {
 public:
  explicit CaseBuilder(std::vector<Case>& out) : out_(out) {}

  // A new case; its inputs are added with in().
  CaseBuilder& add(const std::string& family, const std::string& name, const std::string& op,
                   std::vector<int64_t> params, DType dtype = DType::F32) {
    Case c;
    c.family = family;
    c.name = name + (dtype == DType::F64 ? "_f64" : "_f32");
    c.op = op;
    c.params = std::move(params);
    out_.push_back(std::move(c));
    dtype_ = dtype;
    return *this;
  }
  // A normal(0, scale) input of this shape.
  CaseBuilder& in(const Shape& shape, double scale = 1.0) {
    const Tensor t = testing_util::randn(shape, ++seed_, DType::F64);
    out_.back().inputs.push_back(mul(t, scale).to(dtype_));
    return *this;
  }
  CaseBuilder& targets(std::vector<int64_t> t) {
    out_.back().targets = std::move(t);
    return *this;
  }
  CaseBuilder& no_backward() {
    out_.back().backward = false;
    return *this;
  }
  CaseBuilder& scalar(double s) {
    out_.back().scalar = s;
    return *this;
  }

 private:
  std::vector<Case>& out_;
  DType dtype_ = DType::F32;
  uint64_t seed_ = 5000;
};

std::vector<Case> make_cases() {
  std::vector<Case> cases;
  CaseBuilder b(cases);
  const DType F64 = DType::F64;
  // conv2d params: [sh, sw, ph, pw, has_bias]; weights scaled like PyTorch's init.
  b.add("conv2d", "conv_alexnet_conv1", "conv2d", {4, 4, 2, 2, 1})
      .in({2, 3, 67, 67}).in({16, 3, 11, 11}, 1 / std::sqrt(363.0)).in({16}, 0.1);
  b.add("conv2d", "conv_alexnet_conv2_like", "conv2d", {1, 1, 2, 2, 1})
      .in({2, 8, 13, 13}).in({12, 8, 5, 5}, 0.07).in({12}, 0.1);
  b.add("conv2d", "conv_3x3_pad1", "conv2d", {1, 1, 1, 1, 1}).in({2, 6, 13, 11}).in({10, 6, 3, 3}, 0.13).in({10});
  b.add("conv2d", "conv_3x2_nonsquare_nobias", "conv2d", {2, 1, 1, 0, 0}).in({1, 4, 7, 9}).in({5, 4, 3, 2}, 0.2);
  b.add("conv2d", "conv_stride2_pad1_batch1", "conv2d", {2, 2, 1, 1, 1}).in({1, 3, 10, 7}).in({4, 3, 3, 3}).in({4});
  b.add("conv2d", "conv_pointwise", "conv2d", {1, 1, 0, 0, 1}).in({2, 6, 5, 7}).in({4, 6, 1, 1}).in({4});
  b.add("conv2d", "conv_1x1_stride2_nobias", "conv2d", {2, 2, 0, 0, 0}).in({1, 5, 7, 6}).in({3, 5, 1, 1});
  b.add("conv2d", "conv_stride2_pad1", "conv2d", {2, 2, 1, 1, 1}, F64).in({2, 3, 9, 8}).in({4, 3, 3, 3}).in({4});
  // linear params: [has_bias]
  b.add("linear", "linear_classifier", "linear", {1}).in({3, 256}).in({40, 256}, 1 / 16.0).in({40});
  b.add("linear", "linear_3d_nobias", "linear", {0}).in({2, 3, 5}).in({4, 5});
  b.add("linear", "linear_batch1", "linear", {1}).in({1, 33}).in({7, 33}, 0.2).in({7});
  b.add("linear", "linear", "linear", {1}, F64).in({4, 9}).in({6, 9}).in({6});
  b.add("relu", "relu", "relu", {}).in({2, 3, 5, 7});
  b.add("relu", "relu_large", "relu", {}).in({2, 64, 27, 27});
  b.add("relu", "relu", "relu", {}, F64).in({3, 11});
  // guided_relu: forward only, its backward is not relu's derivative (see the gradcheck suite).
  b.add("relu", "guided_relu_forward", "guided_relu", {}).in({2, 3, 5, 7}).no_backward();
  // abs_max params: [dim, keepdim]; no gradient.
  b.add("abs_max", "abs_max_channels", "abs_max", {1, 0}).in({2, 3, 17, 19}).no_backward();
  b.add("abs_max", "abs_max_last_keepdim", "abs_max", {-1, 1}).in({3, 4, 5}).no_backward();
  b.add("abs_max", "abs_max_channels", "abs_max", {1, 1}, F64).in({1, 3, 6, 5}).no_backward();
  // max_pool2d params: [kh, kw, sh, sw, ph, pw, ceil_mode]
  b.add("max_pool2d", "maxpool_alexnet_55", "max_pool2d", {3, 3, 2, 2, 0, 0, 0}).in({2, 4, 55, 55});
  // AlexNet's pool1 at batch 2: large enough for the kernels' OpenMP paths.
  b.add("max_pool2d", "maxpool_alexnet_pool1", "max_pool2d", {3, 3, 2, 2, 0, 0, 0}).in({2, 64, 55, 55});
  b.add("max_pool2d", "maxpool_alexnet_27", "max_pool2d", {3, 3, 2, 2, 0, 0, 0}).in({1, 8, 27, 27});
  b.add("max_pool2d", "maxpool_squeezenet_111_ceil", "max_pool2d", {3, 3, 2, 2, 0, 0, 1}).in({1, 4, 111, 111});
  b.add("max_pool2d", "maxpool_112_ceil_overhang", "max_pool2d", {3, 3, 2, 2, 0, 0, 1}).in({1, 3, 112, 112});
  b.add("max_pool2d", "maxpool_8x8_ceil", "max_pool2d", {3, 3, 2, 2, 0, 0, 1}).in({2, 3, 8, 8});
  b.add("max_pool2d", "maxpool_13x14_ceil", "max_pool2d", {3, 3, 2, 2, 0, 0, 1}).in({2, 3, 13, 14});
  b.add("max_pool2d", "maxpool_k2s2p1_ceil", "max_pool2d", {2, 2, 2, 2, 1, 1, 1}).in({2, 2, 5, 6});
  b.add("max_pool2d", "maxpool_k2s1", "max_pool2d", {2, 2, 1, 1, 0, 0, 0}).in({1, 3, 6, 7});
  b.add("max_pool2d", "maxpool_nonsquare_pad", "max_pool2d", {3, 2, 2, 1, 1, 0, 0}).in({2, 2, 7, 9});
  b.add("max_pool2d", "maxpool_k3s2p1_ceil", "max_pool2d", {3, 3, 2, 2, 1, 1, 1}, F64).in({2, 3, 13, 14});
  // adaptive_avg_pool2d params: [oh, ow]
  b.add("adaptive_avg_pool2d", "adaptive_alexnet_13_to_6", "adaptive_avg_pool2d", {6, 6}).in({2, 8, 13, 13});
  b.add("adaptive_avg_pool2d", "adaptive_alexnet_256x13x13", "adaptive_avg_pool2d", {6, 6}).in({2, 256, 13, 13});
  b.add("adaptive_avg_pool2d", "adaptive_identity_6", "adaptive_avg_pool2d", {6, 6}).in({1, 4, 6, 6});
  b.add("adaptive_avg_pool2d", "adaptive_7x9_to_3x4", "adaptive_avg_pool2d", {3, 4}).in({2, 3, 7, 9});
  b.add("adaptive_avg_pool2d", "adaptive_5x5_to_6x6", "adaptive_avg_pool2d", {6, 6}).in({1, 2, 5, 5});
  b.add("adaptive_avg_pool2d", "adaptive_10x7_to_4x3", "adaptive_avg_pool2d", {4, 3}, F64).in({2, 3, 10, 7});
  // cat params: [dim]
  b.add("cat", "cat_dim1_three", "cat", {1}).in({2, 3, 4, 5}).in({2, 1, 4, 5}).in({2, 6, 4, 5});
  b.add("cat", "cat_fire_expand", "cat", {1}).in({2, 128, 13, 13}).in({2, 128, 13, 13});
  b.add("cat", "cat_dim0", "cat", {0}).in({2, 3}).in({4, 3});
  b.add("cat", "cat_dim_last", "cat", {-1}).in({2, 3, 2}).in({2, 3, 5});
  b.add("cat", "cat_dim1", "cat", {1}, F64).in({3, 2, 2}).in({3, 4, 2});
  // sum / mean params: [over_all, dim, keepdim]
  b.add("sum_mean", "sum_all", "sum", {1, 0, 0}).in({3, 4, 5});
  b.add("sum_mean", "sum_dim1_keepdim", "sum", {0, 1, 1}).in({3, 4, 5});
  b.add("sum_mean", "sum_dim_last", "sum", {0, -1, 0}).in({3, 4, 5});
  b.add("sum_mean", "mean_all", "mean", {1, 0, 0}).in({3, 4, 5});
  b.add("sum_mean", "mean_dim0_keepdim", "mean", {0, 0, 1}).in({3, 4, 5});
  b.add("sum_mean", "mean_dim1", "mean", {0, 1, 0}).in({3, 4, 5});
  b.add("sum_mean", "sum_dim1_large", "sum", {0, 1, 0}).in({4, 256, 72});
  b.add("sum_mean", "sum_all_large", "sum", {1, 0, 0}).in({300, 257});
  b.add("sum_mean", "mean_dim1", "mean", {0, 1, 0}, F64).in({2, 7, 3});
  // softmax / log_softmax params: [dim]
  for (const char* op : {"softmax", "log_softmax"}) {
    const std::string o = op;
    b.add(o, o + "_dim1", o, {1}).in({4, 10}, 2.0);
    b.add(o, o + "_dim_last_3d", o, {-1}).in({2, 3, 5});
    b.add(o, o + "_dim0_3d", o, {0}).in({3, 2, 4});
    b.add(o, o + "_dim1_3d", o, {1}).in({2, 4, 3});
    b.add(o, o + "_imagenet_1000", o, {1}).in({2, 1000}, 5.0);
    b.add(o, o + "_imagenet_batch40", o, {1}).in({40, 1000}, 5.0);
    b.add(o, o + "_dim1_3d", o, {1}, F64).in({2, 5, 3}, 3.0);
  }
  b.add("cross_entropy", "ce_batch1", "cross_entropy", {}).in({1, 7}).targets({4});
  b.add("cross_entropy", "ce_batch5", "cross_entropy", {}).in({5, 7}, 3.0).targets({0, 6, 3, 3, 1});
  b.add("cross_entropy", "ce_imagenet", "cross_entropy", {}).in({4, 1000}, 3.0).targets({0, 999, 130, 417});
  {
    std::vector<int64_t> t;
    for (int64_t n = 0; n < 40; ++n) t.push_back((n * 397 + 11) % 1000);
    b.add("cross_entropy", "ce_imagenet_batch40", "cross_entropy", {}).in({40, 1000}, 3.0).targets(t);
  }
  b.add("cross_entropy", "ce_batch5", "cross_entropy", {}, F64).in({5, 7}, 3.0).targets({2, 2, 0, 5, 6});
  b.add("arithmetic", "add", "add", {}).in({3, 4, 5}).in({3, 4, 5});
  b.add("arithmetic", "sub", "sub", {}).in({3, 4, 5}).in({3, 4, 5});
  b.add("arithmetic", "mul", "mul", {}).in({3, 4, 5}).in({3, 4, 5});
  b.add("arithmetic", "mul_scalar", "mul_scalar", {}).in({3, 4, 5}).scalar(-2.5);
  b.add("arithmetic", "mul", "mul", {}, F64).in({4, 6}).in({4, 6});

  // The upstream gradient: random, shaped like the output.
  uint64_t seed = 9000;
  for (Case& c : cases) {
    NoGradGuard ng;
    const Tensor y = run_engine(c, c.inputs);
    c.gy = testing_util::randn(y.shape(), ++seed, c.inputs[0].dtype());
  }
  return cases;
}

const std::vector<Case>& cases() {
  static const std::vector<Case> all = make_cases();
  return all;
}

// Every reference tensor by name, or why there are none.
struct Reference {
  std::string error;
  std::map<std::string, Tensor> tensors;
};

Reference compute_reference() {
  Reference ref;
  const std::string dir = testing_util::temp_dir();
  const std::string in = dir + "/ops_in.h5", out = dir + "/ops_ref.h5";
  {
    io::H5Writer w(in);
    std::vector<std::string> names;
    for (const Case& c : cases()) {
      names.push_back(c.name);
      w.write_strings(c.name + ".op", {c.op});
      std::vector<int64_t> params = c.params;
      if (params.empty()) params.push_back(0);  // no zero-length datasets
      w.write_ints(c.name + ".params", params);
      for (size_t i = 0; i < c.inputs.size(); ++i) w.write(c.name + ".in" + std::to_string(i), c.inputs[i]);
      w.write(c.name + ".gy", c.gy);
      if (!c.targets.empty()) w.write_ints(c.name + ".target", c.targets);
      if (c.op == "mul_scalar") w.write(c.name + ".scalar", Tensor::scalar(c.scalar, DType::F64));
    }
    w.write_strings("cases", names);
    w.commit();
  }
  const int rc = testing_util::run_reference_script("ops_reference.py", in + " " + out);
  if (rc != 0) {
    ref.error = "ops_reference.py exited with status " + std::to_string(rc);
  } else {
    io::H5Reader r(out);
    for (const std::string& name : r.names()) ref.tensors[name] = r.read(name);
  }
  std::filesystem::remove_all(dir);
  return ref;
}

const Reference& reference() {
  static const Reference ref = compute_reference();
  return ref;
}

double rms(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector<double>()) s += v * v;
  return t.numel() > 0 ? std::sqrt(s / static_cast<double>(t.numel())) : 0.0;
}

// got in the case's dtype against the float64 reference.
::testing::AssertionResult close_to_reference(const Tensor& got, const Tensor& want, DType dtype) {
  if (!got.defined()) return ::testing::AssertionFailure() << "no value from the engine";
  if (got.dtype() != dtype)
    return ::testing::AssertionFailure() << "got " << got.str() << ", expected " << dtype_name(dtype);
  const double tol = dtype == DType::F32 ? 1e-5 : 1e-12;
  return testing_util::all_close(got, want, tol, tol * rms(want));
}

// Runs every case of a family through the engine and compares it with PyTorch.
void check_family(const std::string& family) {
  const Reference& ref = reference();
  ASSERT_TRUE(ref.error.empty()) << ref.error;
  int checked = 0;
  for (const Case& c : cases()) {
    if (c.family != family) continue;
    SCOPED_TRACE("case " + c.name);
    ++checked;
    TensorList in;
    for (const Tensor& t : c.inputs) in.push_back(c.backward ? t.clone().requires_grad_() : t);
    const Tensor y = run_engine(c, in);
    if (c.backward) y.backward(c.gy);
    auto want = [&](const std::string& key) {
      const auto it = ref.tensors.find(c.name + key);
      return it == ref.tensors.end() ? Tensor() : it->second;
    };
    const Tensor ry = want(".y");
    ASSERT_TRUE(ry.defined()) << "the reference has no " << c.name << ".y";
    const DType dtype = c.inputs[0].dtype();
    EXPECT_TRUE(close_to_reference(y, ry, dtype)) << "output of " << c.name;
    for (size_t i = 0; c.backward && i < in.size(); ++i) {
      const Tensor rg = want(".gin" + std::to_string(i));
      ASSERT_TRUE(rg.defined()) << "the reference has no " << c.name << ".gin" << i;
      EXPECT_TRUE(close_to_reference(in[i].grad(), rg, dtype)) << "gradient of input " << i << " of " << c.name;
    }
  }
  EXPECT_GT(checked, 0) << "no cases for " << family;
}

}  // namespace

#define REFERENCE_TEST(suite, family)   \
  TEST(suite, MatchesTorchF32AndF64) {  \
    REQUIRE_TORCH();                    \
    check_family(family);               \
  }

REFERENCE_TEST(Conv2dReference, "conv2d")
REFERENCE_TEST(LinearReference, "linear")
REFERENCE_TEST(ReluReference, "relu")
REFERENCE_TEST(MaxPool2dReference, "max_pool2d")
REFERENCE_TEST(AdaptiveAvgPool2dReference, "adaptive_avg_pool2d")
REFERENCE_TEST(CatReference, "cat")
REFERENCE_TEST(SumMeanReference, "sum_mean")
REFERENCE_TEST(SoftmaxReference, "softmax")
REFERENCE_TEST(LogSoftmaxReference, "log_softmax")
REFERENCE_TEST(CrossEntropyReference, "cross_entropy")
REFERENCE_TEST(ArithmeticReference, "arithmetic")
REFERENCE_TEST(AbsMaxReference, "abs_max")

// The case list itself: every op family has a float64 case, and the inputs are
// reproducible (the reference is computed anew in each process).
TEST(OpsReferenceCases, EveryFamilyHasF32AndF64AndInputsAreSeeded) {
  std::map<std::string, int> f32, f64;
  for (const Case& c : cases()) (c.inputs[0].dtype() == DType::F32 ? f32 : f64)[c.family]++;
  EXPECT_EQ(f32.size(), 12u);
  for (const auto& [family, n] : f32) EXPECT_GT(f64[family], 0) << family << " has no float64 case";
  const std::vector<Case> again = make_cases();
  ASSERT_EQ(again.size(), cases().size());
  for (size_t i = 0; i < again.size(); ++i)
    for (size_t k = 0; k < again[i].inputs.size(); ++k)
      EXPECT_ALL_CLOSE(again[i].inputs[k], cases()[i].inputs[k], 0, 0);
}
