// Modules: torchvision-style parameter names, lookup errors, train/eval and dropout,
// freezing, head surgery, dtype conversion, default initialisation statistics, seeded
// construction, and a small network that learns with SGD.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "engine/nn/module.h"
#include "engine/optim/sgd.h"
#include "tests/test_util.h"

using namespace engine;
using engine::nn::Conv2d;
using engine::nn::Dropout;
using engine::nn::Flatten;
using engine::nn::Linear;
using engine::nn::MaxPool2d;
using engine::nn::ReLU;
using engine::nn::Sequential;
using testing_util::bit_identical;
using testing_util::randn;

namespace {

// Sequential(Conv2d(3, 4, 3), ReLU, Sequential(Dropout, Linear(4*3*3, 6)), ...) on
// [N, 3, 5, 5] inputs: conv -> [N, 4, 3, 3], then flattened into the inner Sequential.
std::shared_ptr<Sequential> nested_net(Generator& gen) {
  auto inner = std::make_shared<Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<Dropout>(0.5, &gen), std::make_shared<Linear>(4 * 3 * 3, 6, true, &gen)});
  return std::make_shared<Sequential>(std::vector<std::shared_ptr<nn::Module>>{
      std::make_shared<Conv2d>(3, 4, Size2(3, 3), 1, 0, true, &gen), std::make_shared<ReLU>(),
      std::make_shared<Flatten>(), inner});
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

double variance_of(const std::vector<double>& v) {
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return s / static_cast<double>(v.size());
}

}  // namespace

TEST(Nn, NamedParametersUseDottedNames) {
  Generator gen(1);
  auto inner = std::make_shared<Sequential>();
  inner->push_back(std::make_shared<ReLU>());
  inner->push_back(std::make_shared<Conv2d>(4, 2, Size2(1, 1), 1, 0, true, &gen));
  inner->push_back(std::make_shared<Linear>(3, 2, false, &gen));
  Sequential net({std::make_shared<Conv2d>(3, 4, Size2(3, 5), 1, 0, true, &gen), std::make_shared<ReLU>(), inner});
  std::vector<std::string> names;
  for (const auto& [n, t] : net.named_parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "2.1.weight", "2.1.bias", "2.2.weight"}));
  const auto params = net.parameters();
  ASSERT_EQ(params.size(), 5u);
  EXPECT_EQ(params[0].shape(), (Shape{4, 3, 3, 5}));
  EXPECT_EQ(params[2].shape(), (Shape{2, 4, 1, 1}));
  EXPECT_EQ(params[4].shape(), (Shape{2, 3}));
  for (const Tensor& p : params) EXPECT_TRUE(p.requires_grad());
  // The child's own view agrees with the dotted names.
  EXPECT_TRUE(net.child("2")->named_parameters()[0].second.same(params[2]));
  EXPECT_EQ(net.child("2")->named_parameters()[0].first, "1.weight");
}

TEST(Nn, ParameterLookupNamesTheMissingKey) {
  Generator gen(2);
  auto net = nested_net(gen);
  auto head = std::dynamic_pointer_cast<Linear>(net->child("3")->child("1"));
  ASSERT_NE(head, nullptr);
  EXPECT_TRUE(net->parameter("3.1.weight").same(head->weight()));
  EXPECT_EQ(net->parameter("0.bias").shape(), (Shape{4}));
  try {
    net->parameter("3.7.weight");
    FAIL() << "a missing parameter must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'3.7.weight'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(net->parameter("0.weight.extra"), Error);
  EXPECT_THROW(net->parameter(""), Error);
}

TEST(Nn, TrainEvalPropagateToChildren) {
  Generator gen(3);
  auto net = nested_net(gen);
  auto inner = net->child("3");
  auto drop = inner->child("0");
  EXPECT_TRUE(net->is_training());
  EXPECT_TRUE(drop->is_training());
  net->eval();
  EXPECT_FALSE(net->is_training());
  EXPECT_FALSE(inner->is_training());
  EXPECT_FALSE(drop->is_training());
  // In eval mode the network is deterministic.
  const Tensor x = randn({2, 3, 5, 5}, 30, DType::F32);
  EXPECT_TRUE(bit_identical((*net)(x), (*net)(x)));
  net->train();
  EXPECT_TRUE(drop->is_training());
  EXPECT_FALSE(bit_identical((*net)(x), (*net)(x)));
}

TEST(Nn, DropoutIsIdentityInEval) {
  Generator gen(4);
  Dropout drop(0.5, &gen);
  drop.eval();
  const Tensor x = testing_util::rand({7, 13}, 40, 1.0, 2.0, DType::F32);
  const uint64_t offset = gen.offset();
  EXPECT_TRUE(bit_identical(drop(x), x));
  EXPECT_EQ(gen.offset(), offset);  // draws nothing
}

// In training, about p of the elements are zeroed and the rest scaled by 1/(1-p), so
// that E[y] = x; the same seed gives the same mask, the next call a different one.
TEST(Nn, DropoutDropsAboutPAndKeepsTheExpectation) {
  for (DType dt : {DType::F32, DType::F64}) {
    for (double p : {0.1, 0.5, 0.8}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " p=" + std::to_string(p));
      const int64_t n = 200003;
      const Tensor x = testing_util::rand({n}, 41, 1.0, 2.0, dt);  // never zero
      Generator gen(42);
      Dropout drop(p, &gen);
      const Tensor y = drop(x);
      const std::vector<double> xs = x.to_vector<double>(), ys = y.to_vector<double>();
      int64_t dropped = 0;
      double sx = 0, sy = 0;
      for (size_t i = 0; i < xs.size(); ++i) {
        if (ys[i] == 0.0) {
          ++dropped;
        } else {
          ASSERT_NEAR(ys[i], xs[i] / (1.0 - p), 1e-6 * ys[i]) << "element " << i;
        }
        sx += xs[i];
        sy += ys[i];
      }
      // Binomial: the standard deviation of the dropped fraction is sqrt(p(1-p)/n) < 0.0012.
      EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(n), p, 0.006);
      EXPECT_NEAR(sy / sx, 1.0, 0.02);
      Generator again(42);
      Dropout drop2(p, &again);
      EXPECT_TRUE(bit_identical(drop2(x), y));
      EXPECT_FALSE(bit_identical(drop(x), y));
    }
  }
}

TEST(Nn, RequiresGradFalseFreezes) {
  Generator gen(5);
  auto net = nested_net(gen);
  net->eval();
  net->child("0")->requires_grad_(false);
  for (const auto& [n, t] : net->named_parameters()) EXPECT_EQ(t.requires_grad(), n.rfind("0.", 0) != 0) << n;
  Tensor x = randn({2, 3, 5, 5}, 50, DType::F32).requires_grad_();
  sum((*net)(x)).backward();
  EXPECT_FALSE(net->parameter("0.weight").grad().defined());
  EXPECT_FALSE(net->parameter("0.bias").grad().defined());
  EXPECT_TRUE(net->parameter("3.1.weight").grad().defined());
  EXPECT_TRUE(x.grad().defined());  // the input gradient still flows through frozen layers
  net->requires_grad_(false);
  net->zero_grad();
  for (const Tensor& t : net->parameters()) {
    EXPECT_FALSE(t.requires_grad());
    EXPECT_FALSE(t.grad().defined());
  }
  EXPECT_FALSE((*net)(randn({1, 3, 5, 5}, 51, DType::F32)).requires_grad());
}

TEST(Nn, ReplaceChildSwapsTheHead) {
  Generator gen(6);
  auto net = nested_net(gen);
  net->eval();
  net->replace_child("3", std::make_shared<Linear>(4 * 3 * 3, 2, true, &gen));
  std::vector<std::string> names;
  for (const auto& [n, t] : net->named_parameters()) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "3.weight", "3.bias"}));
  EXPECT_FALSE(net->child("3")->is_training());  // takes the parent's mode
  EXPECT_EQ((*net)(randn({3, 3, 5, 5}, 60, DType::F32)).shape(), (Shape{3, 2}));
  try {
    net->replace_child("classifier", std::make_shared<ReLU>());
    FAIL() << "an unknown child must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'classifier'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(net->child("9"), Error);
}

TEST(Nn, ToF64ConvertsParameters) {
  Generator gen(7);
  auto net = nested_net(gen);
  net->eval();
  std::vector<std::vector<double>> before;
  for (const Tensor& t : net->parameters()) before.push_back(t.to_vector<double>());
  const std::vector<Tensor> handles = net->parameters();  // taken before the conversion
  const Tensor x = randn({2, 3, 5, 5}, 70, DType::F64);
  const Tensor y32 = (*net)(x.to(DType::F32));
  net->to(DType::F64);
  const auto params = net->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(params[i].dtype(), DType::F64);
    EXPECT_TRUE(params[i].requires_grad());
    EXPECT_TRUE(params[i].is_leaf());
    EXPECT_EQ(params[i].to_vector<double>(), before[i]);  // float -> double is exact
    // Conversion is in place: handles held from before (an optimiser's) see it.
    EXPECT_TRUE(handles[i].same(params[i]));
    EXPECT_EQ(handles[i].dtype(), DType::F64);
  }
  const Tensor y = (*net)(x);
  EXPECT_EQ(y.dtype(), DType::F64);
  EXPECT_ALL_CLOSE(y, y32.to(DType::F64), 1e-5, 1e-6);
  sum(y).backward();
  for (const Tensor& t : net->parameters()) EXPECT_EQ(t.grad().dtype(), DType::F64);
  net->to(DType::F32);
  for (const Tensor& t : net->parameters()) EXPECT_EQ(t.dtype(), DType::F32);
}

// torch.nn's default: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), whose
// variance is bound^2 / 3.
TEST(Nn, DefaultInitIsUniformWithinFanInBound) {
  Generator gen(8);
  struct Case {
    std::string name;
    Tensor weight, bias;
    int64_t fan_in;
  };
  Conv2d conv(64, 96, Size2(5, 3), 1, 0, true, &gen);
  Linear lin(1000, 300, true, &gen);
  const std::vector<Case> cases = {{"conv", conv.weight(), conv.bias(), 64 * 5 * 3},
                                   {"linear", lin.weight(), lin.bias(), 1000}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const double bound = 1.0 / std::sqrt(static_cast<double>(c.fan_in));
    for (const Tensor& t : {c.weight, c.bias}) {
      EXPECT_EQ(t.dtype(), DType::F32);
      const std::vector<double> v = t.to_vector<double>();
      double lo = INFINITY, hi = -INFINITY;
      for (double e : v) {
        lo = std::min(lo, e);
        hi = std::max(hi, e);
      }
      EXPECT_GE(lo, -bound);
      EXPECT_LE(hi, bound);
      EXPECT_GT(hi, 0.8 * bound);  // fills the interval, not a narrower one
      EXPECT_LT(lo, -0.8 * bound);
    }
    // Large enough (>= 92160 draws) for the sample variance to sit within 2% of bound^2/3.
    const std::vector<double> w = c.weight.to_vector<double>();
    EXPECT_NEAR(variance_of(w), bound * bound / 3, 0.02 * bound * bound / 3);
    EXPECT_NEAR(mean_of(w), 0.0, 0.02 * bound);
  }
}

TEST(Nn, SeededConstructionIsReproducible) {
  Generator a(9), b(9), c(10);
  Conv2d ca(3, 8, Size2(3, 3), 1, 1, true, &a), cb(3, 8, Size2(3, 3), 1, 1, true, &b);
  Conv2d cc(3, 8, Size2(3, 3), 1, 1, true, &c);
  Linear la(17, 5, true, &a), lb(17, 5, true, &b);
  EXPECT_TRUE(bit_identical(ca.weight(), cb.weight()));
  EXPECT_TRUE(bit_identical(ca.bias(), cb.bias()));
  EXPECT_TRUE(bit_identical(la.weight(), lb.weight()));
  EXPECT_TRUE(bit_identical(la.bias(), lb.bias()));
  EXPECT_FALSE(bit_identical(ca.weight(), cc.weight()));
  // Successive layers from one generator differ.
  Linear l2(17, 5, true, &a);
  EXPECT_FALSE(bit_identical(la.weight(), l2.weight()));
}

// Three Gaussian blobs in the plane, one per class: fifty SGD steps of a two-layer net
// bring the cross-entropy well below its initial value.
TEST(Nn, TwoLayerNetLearnsSeparableBlobs) {
  const int64_t per_class = 30, classes = 3;
  const double centers[3][2] = {{2.0, 0.0}, {-1.0, 1.7}, {-1.0, -1.7}};
  const Tensor noise = randn({per_class * classes, 2}, 90, DType::F32);
  std::vector<float> pts(static_cast<size_t>(per_class * classes * 2));
  std::vector<int64_t> labels;
  const std::vector<float> nv = noise.to_vector<float>();
  for (int64_t k = 0; k < classes; ++k)
    for (int64_t i = 0; i < per_class; ++i) {
      const size_t r = static_cast<size_t>(k * per_class + i);
      pts[2 * r] = static_cast<float>(centers[k][0] + 0.4 * nv[2 * r]);
      pts[2 * r + 1] = static_cast<float>(centers[k][1] + 0.4 * nv[2 * r + 1]);
      labels.push_back(k);
    }
  const Tensor x = Tensor::from_vector({per_class * classes, 2}, pts);

  Generator gen(91);
  Sequential net({std::make_shared<Linear>(2, 16, true, &gen), std::make_shared<ReLU>(),
                  std::make_shared<Linear>(16, classes, true, &gen)});
  optim::SGD opt(net.parameters(), optim::SgdOptions(0.1, 0.9));
  double first = 0, last = 0;
  for (int step = 0; step < 50; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy(net(x), labels);
    if (step == 0) first = loss.item();
    loss.backward();
    opt.step();
  }
  {
    NoGradGuard ng;
    last = cross_entropy(net(x), labels).item();
  }
  EXPECT_GT(first, 0.5);
  EXPECT_LT(last, 0.3 * first) << "initial loss " << first << ", final " << last;
}
