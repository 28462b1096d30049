// SGD and StepLR: trajectories against torch.optim.SGD / lr_scheduler.StepLR (generated at
// test time by tests/reference/sgd_reference.py), hyper-parameter checks, skipped and
// frozen parameters, and the momentum state round trip.
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/io/h5.h"
#include "engine/nn/module.h"
#include "engine/optim/sgd.h"
#include "tests/test_util.h"

using namespace engine;
using engine::optim::ParamGroup;
using engine::optim::SGD;
using engine::optim::SgdOptions;
using engine::optim::StepLR;
using testing_util::bit_identical;
using testing_util::randn;

namespace {

// One reference configuration: groups of hyper-parameters, the group of each
// parameter, and an optional StepLR(step_size, gamma) stepped after every step.
struct Config {
  std::string name;
  std::vector<SgdOptions> groups;
  std::vector<int64_t> group_of;
  int64_t step_size = 0;  // 0: no scheduler
  double gamma = 0;
};

const std::vector<Shape> kShapes = {{3, 5}, {7}, {2, 3, 4}, {5, 1}};
constexpr int kSteps = 5;

// Parameter 2 gets its first gradient at step 1 (its momentum buffer starts late);
// parameter 3 has none at step 3 (skipped with a live buffer).
bool has_grad(int step, size_t param) { return !((param == 2 && step == 0) || (param == 3 && step == 3)); }

std::vector<Config> configs() {
  const std::vector<int64_t> one = {0, 0, 0, 0};
  return {
      {"plain", {SgdOptions(0.1)}, one},
      {"momentum", {SgdOptions(0.1, 0.9)}, one},
      {"dampening", {SgdOptions(0.1, 0.9, 0.1)}, one},
      {"weight_decay", {SgdOptions(0.1, 0.0, 0.0, 1e-2)}, one},
      {"nesterov", {SgdOptions(0.1, 0.9, 0.0, 0.0, true)}, one},
      {"nesterov_wd", {SgdOptions(0.05, 0.8, 0.0, 1e-2, true)}, one},
      {"all", {SgdOptions(0.1, 0.9, 0.1, 1e-2)}, one},
      {"groups_steplr", {SgdOptions(0.1, 0.9, 0.0, 1e-2), SgdOptions(0.03, 0.5, 0.2, 0.0)}, {1, 0, 1, 0}, 2, 0.5},
  };
}

struct DTypeCase {
  const char* tag;
  DType dtype;
  double rtol, atol;
};

}  // namespace

// Five steps of every configuration, in float32 and float64, against torch: the
// parameters after each step, the lrs the scheduler sets, and the final momentum buffers.
TEST(SGD, MatchesTorchTrajectories) {
  REQUIRE_TORCH();
  const std::vector<DTypeCase> dtypes = {{"f32", DType::F32, 1e-6, 1e-7}, {"f64", DType::F64, 1e-13, 1e-15}};
  const std::vector<Config> cfgs = configs();
  const std::string dir = testing_util::temp_dir();
  const std::string in_path = dir + "/sgd_in.h5", out_path = dir + "/sgd_out.h5";

  // Inputs: initial parameters and gradients, per dtype, from fixed seeds.
  std::map<std::string, Tensor> data;
  {
    io::H5Writer w(in_path);
    std::vector<std::string> names, tags;
    for (const Config& c : cfgs) {
      names.push_back(c.name);
      std::vector<double> table;
      for (const SgdOptions& o : c.groups)
        table.insert(table.end(), {o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov ? 1.0 : 0.0});
      w.write(c.name + "_groups",
              Tensor::from_vector({static_cast<int64_t>(c.groups.size()), 5}, table));
      w.write_ints(c.name + "_group_of", c.group_of, {static_cast<int64_t>(c.group_of.size())});
      if (c.step_size > 0)
        w.write(c.name + "_steplr", Tensor::from_vector({2}, std::vector<double>{double(c.step_size), c.gamma}));
    }
    uint64_t seed = 100;
    for (const DTypeCase& d : dtypes) {
      tags.push_back(d.tag);
      for (size_t j = 0; j < kShapes.size(); ++j) {
        const std::string key = std::string(d.tag) + "_p" + std::to_string(j);
        data[key] = randn(kShapes[j], seed++, d.dtype);
        w.write(key, data[key]);
        for (int s = 0; s < kSteps; ++s) {
          if (!has_grad(s, j)) continue;
          const std::string gkey = std::string(d.tag) + "_g" + std::to_string(s) + "_p" + std::to_string(j);
          data[gkey] = randn(kShapes[j], seed++, d.dtype);
          w.write(gkey, data[gkey]);
        }
      }
    }
    w.write_strings("configs", names);
    w.write_strings("dtypes", tags);
    w.write_ints("num_params", {static_cast<int64_t>(kShapes.size())}, {1});
    w.write_ints("num_steps", {kSteps}, {1});
    w.commit();
  }
  ASSERT_EQ(testing_util::run_reference_script("sgd_reference.py", in_path + " " + out_path), 0);
  io::H5Reader ref(out_path);

  for (const Config& c : cfgs) {
    for (const DTypeCase& d : dtypes) {
      SCOPED_TRACE(c.name + " " + d.tag);
      std::vector<Tensor> params;
      for (size_t j = 0; j < kShapes.size(); ++j)
        params.push_back(data[std::string(d.tag) + "_p" + std::to_string(j)].clone().detach().requires_grad_());
      // Groups in torch's order; state_index[j] is parameter j's place in state().
      std::vector<ParamGroup> groups;
      for (const SgdOptions& o : c.groups) groups.push_back({{}, o});
      for (size_t j = 0; j < params.size(); ++j) groups[static_cast<size_t>(c.group_of[j])].params.push_back(params[j]);
      std::vector<size_t> state_index(params.size());
      {
        size_t k = 0;
        for (size_t g = 0; g < groups.size(); ++g)
          for (size_t j = 0; j < params.size(); ++j)
            if (static_cast<size_t>(c.group_of[j]) == g) state_index[j] = k++;
      }
      SGD opt(groups);
      std::unique_ptr<StepLR> sched;
      if (c.step_size > 0) sched = std::make_unique<StepLR>(opt, c.step_size, c.gamma);

      for (int s = 0; s < kSteps; ++s) {
        SCOPED_TRACE("step " + std::to_string(s));
        for (size_t j = 0; j < params.size(); ++j) {
          if (has_grad(s, j))
            params[j].set_grad(data[std::string(d.tag) + "_g" + std::to_string(s) + "_p" + std::to_string(j)]);
          else
            params[j].zero_grad();
        }
        opt.step();
        if (sched) sched->step();
        const std::string prefix = c.name + "_" + d.tag + "_s" + std::to_string(s);
        for (size_t j = 0; j < params.size(); ++j) {
          const Tensor expected = ref.read(prefix + "_p" + std::to_string(j));
          ASSERT_EQ(expected.dtype(), d.dtype);
          EXPECT_ALL_CLOSE(params[j], expected, d.rtol, d.atol) << "parameter " << j;
        }
        std::vector<double> lrs;
        for (const auto& g : opt.param_groups()) lrs.push_back(g.options.lr);
        EXPECT_EQ(lrs, ref.read(prefix + "_lr").to_vector<double>());
        if (sched) {
          EXPECT_EQ(sched->get_lr(), lrs);
        }
      }
      const std::vector<Tensor> state = opt.state();
      ASSERT_EQ(state.size(), params.size());
      for (size_t j = 0; j < params.size(); ++j) {
        const std::string key = c.name + "_" + d.tag + "_buf" + std::to_string(j);
        const Tensor& buf = state[state_index[j]];
        ASSERT_EQ(buf.defined(), ref.has(key)) << "momentum buffer of parameter " << j;
        if (buf.defined()) {
          EXPECT_ALL_CLOSE(buf, ref.read(key), d.rtol, d.atol) << "momentum buffer " << j;
        }
      }
    }
  }
  if (!HasFailure()) std::filesystem::remove_all(dir);  // kept for inspection on failure
}

TEST(SGD, RejectsBadHyperParameters) {
  Tensor p = randn({3, 2}, 1).requires_grad_();
  auto message = [&](const SgdOptions& o) {
    try {
      SGD opt({p}, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(SgdOptions(0.1, 0.0, 0.0, 0.0, true))
                .find("Nesterov momentum requires a momentum and zero dampening"),
            std::string::npos);
  EXPECT_NE(message(SgdOptions(0.1, 0.9, 0.1, 0.0, true)).find("Nesterov"), std::string::npos);
  EXPECT_NE(message(SgdOptions(-0.1)).find("Invalid learning rate: -0.1"), std::string::npos);
  EXPECT_NE(message(SgdOptions(0.1, -0.5)).find("Invalid momentum value: -0.5"), std::string::npos);
  EXPECT_NE(message(SgdOptions(0.1, 0.0, 0.0, -1e-3)).find("Invalid weight_decay value"), std::string::npos);
  EXPECT_NE(message(SgdOptions(std::nan(""))).find("Invalid learning rate"), std::string::npos);
  EXPECT_EQ(message(SgdOptions(0.1, 0.9, 0.0, 0.0, true)), "no error");

  // Structural errors: no parameters, a repeated parameter, a non-leaf, an undefined tensor.
  EXPECT_THROW(SGD(std::vector<Tensor>{}, SgdOptions(0.1)), Error);
  EXPECT_THROW(SGD(std::vector<ParamGroup>{}), Error);
  Tensor q = randn({4}, 2).requires_grad_();
  EXPECT_THROW(SGD({p, q, p}, SgdOptions(0.1)), Error);
  EXPECT_THROW(SGD(std::vector<ParamGroup>{{{p}, SgdOptions(0.1)}, {{q, p}, SgdOptions(0.2)}}), Error);
  EXPECT_THROW(SGD({mul(p, 2.0)}, SgdOptions(0.1)), Error);
  EXPECT_THROW(SGD({Tensor()}, SgdOptions(0.1)), Error);

  // Hyper-parameters changed through the groups are checked at the next step.
  SGD opt({p}, SgdOptions(0.1, 0.9));
  p.set_grad(randn({3, 2}, 3));
  opt.param_groups()[0].options.lr = -1.0;
  EXPECT_THROW(opt.step(), Error);
  opt.param_groups()[0].options.lr = 0.1;
  opt.param_groups()[0].options.momentum = 0.0;
  opt.param_groups()[0].options.nesterov = true;
  EXPECT_THROW(opt.step(), Error);
}

// torch skips parameters whose grad is None: no weight decay, no momentum buffer.
TEST(SGD, ParameterWithoutGradIsUntouched) {
  for (DType dt : {DType::F32, DType::F64}) {
    Tensor a = randn({4, 3}, 10, dt).requires_grad_();
    Tensor b = randn({5}, 11, dt).requires_grad_();
    const Tensor b0 = b.detach().clone();
    SGD opt({a, b}, SgdOptions(0.1, 0.9, 0.0, 0.1, true));
    const Tensor a0 = a.detach().clone();
    for (int s = 0; s < 3; ++s) {
      a.set_grad(randn({4, 3}, 20 + static_cast<uint64_t>(s), dt));
      opt.step();
    }
    EXPECT_TRUE(bit_identical(b, b0));
    EXPECT_FALSE(bit_identical(a, a0));
    const auto state = opt.state();
    ASSERT_EQ(state.size(), 2u);
    EXPECT_TRUE(state[0].defined());
    EXPECT_FALSE(state[1].defined());
    EXPECT_FALSE(b.grad().defined());
  }
}

TEST(SGD, StepRecordsNoGraphAndZeroGradDropsGrads) {
  Tensor p = randn({6}, 30).requires_grad_();
  SGD opt({p}, SgdOptions(0.5, 0.9));
  sum(mul(p, p)).backward();
  opt.step();
  EXPECT_TRUE(p.is_leaf());
  EXPECT_TRUE(p.requires_grad());
  EXPECT_TRUE(p.grad().defined());
  opt.zero_grad();
  EXPECT_FALSE(p.grad().defined());
}

// With momentum 0 the update is p -= lr * g, checked element by element in f64.
TEST(SGD, PlainStepIsLrTimesGrad) {
  Tensor p = randn({3, 7}, 40).requires_grad_();
  const Tensor g = randn({3, 7}, 41);
  const Tensor expected = sub(p.detach(), mul(g, 0.25));
  SGD opt({p}, 0.25);
  p.set_grad(g);
  opt.step();
  EXPECT_ALL_CLOSE(p, expected, 1e-15, 0);
}

// Saving state() after two steps and loading it into a fresh optimiser over copies of
// the parameters continues the trajectory bit for bit.
TEST(SGD, StateRoundTripContinuesExactly) {
  const std::vector<Shape> shapes = {{4, 3}, {7}};
  std::vector<Tensor> a, b;
  for (size_t j = 0; j < shapes.size(); ++j) a.push_back(randn(shapes[j], 50 + j, DType::F32).requires_grad_());
  const SgdOptions o(0.1, 0.9, 0.0, 1e-2, true);
  SGD first(a, o);
  auto grads = [&](int s) {
    std::vector<Tensor> g;
    for (size_t j = 0; j < shapes.size(); ++j) g.push_back(randn(shapes[j], 60 + 10 * s + j, DType::F32));
    return g;
  };
  for (int s = 0; s < 2; ++s) {
    auto g = grads(s);
    for (size_t j = 0; j < a.size(); ++j) a[j].set_grad(g[j]);
    first.step();
  }
  for (const Tensor& t : a) b.push_back(t.detach().clone().requires_grad_());
  SGD second(b, o);
  // Saved in float64 to check the conversion back to the parameters' dtype.
  std::vector<Tensor> saved;
  for (const Tensor& t : first.state()) saved.push_back(t.to(DType::F64));
  second.load_state(saved);
  for (int s = 2; s < 5; ++s) {
    auto g = grads(s);
    for (size_t j = 0; j < a.size(); ++j) {
      a[j].set_grad(g[j]);
      b[j].set_grad(g[j]);
    }
    first.step();
    second.step();
  }
  for (size_t j = 0; j < a.size(); ++j) EXPECT_TRUE(bit_identical(a[j], b[j])) << "parameter " << j;

  // The loaded buffers are copies: changing the saved tensors changes nothing.
  saved[0].fill_(123.0);
  EXPECT_NE(second.state()[0].at({0, 0}), 123.0);

  EXPECT_THROW(second.load_state({saved[0]}), Error);                                   // count
  EXPECT_THROW(second.load_state({saved[1], saved[0]}), Error);                         // shapes
  const Tensor before = second.state()[0].clone();
  EXPECT_THROW(second.load_state({Tensor(), randn({8}, 70, DType::F32)}), Error);       // nothing changes
  EXPECT_TRUE(bit_identical(second.state()[0], before));
  second.load_state({Tensor(), Tensor()});  // no buffers: the next step starts them afresh
  EXPECT_FALSE(second.state()[0].defined());
}

// A small net in which only part learns: frozen parameters (requires_grad false, given
// to the optimiser or not) and a trainable one left out of the optimiser stay
// bit-identical through training, while the trained ones move and the loss falls.
TEST(SGD, FrozenParametersAreBitIdentical) {
  Generator gen(5);
  auto conv = std::make_shared<nn::Conv2d>(3, 4, Size2(3, 3), 1, 0, true, &gen);
  auto head = std::make_shared<nn::Linear>(4 * 3 * 4, 5, true, &gen);
  nn::Sequential net({conv, std::make_shared<nn::ReLU>(), std::make_shared<nn::MaxPool2d>(2),
                      std::make_shared<nn::Flatten>(), head});
  conv->requires_grad_(false);
  const Tensor x = randn({6, 3, 9, 11}, 80, DType::F32);
  const std::vector<int64_t> y = {0, 3, 1, 4, 2, 3};

  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "frozen parameters left out" : "frozen parameters given to the optimiser");
    std::vector<Tensor> trained;
    trained.push_back(head->weight());
    if (variant == 1) {
      trained.push_back(conv->weight());
      trained.push_back(conv->bias());
    }
    // The head's bias requires a gradient but is not optimised.
    SGD opt(trained, SgdOptions(0.1, 0.9, 0.0, 1e-2));
    const Tensor cw = conv->weight().clone(), cb = conv->bias().clone();
    const Tensor hb = head->bias().detach().clone(), hw = head->weight().detach().clone();
    double first = 0, last = 0;
    for (int s = 0; s < 6; ++s) {
      opt.zero_grad();
      head->bias().zero_grad();
      Tensor loss = cross_entropy(net(x), y);
      (s == 0 ? first : last) = loss.item();
      loss.backward();
      EXPECT_FALSE(conv->weight().grad().defined());
      EXPECT_FALSE(conv->bias().grad().defined());
      EXPECT_TRUE(head->bias().grad().defined());
      opt.step();
    }
    EXPECT_TRUE(bit_identical(conv->weight(), cw));
    EXPECT_TRUE(bit_identical(conv->bias(), cb));
    EXPECT_TRUE(bit_identical(head->bias(), hb));
    EXPECT_FALSE(bit_identical(head->weight(), hw));
    EXPECT_LT(last, first);
    if (variant == 1) {
      const auto state = opt.state();
      EXPECT_TRUE(state[0].defined());
      EXPECT_FALSE(state[1].defined());
      EXPECT_FALSE(state[2].defined());
    }
  }
}

TEST(SGD, CudaMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  for (DType dt : {DType::F32, DType::F64}) {
    Tensor pc = randn({37, 129}, 90, dt).requires_grad_();
    Tensor pg = pc.detach().to(Device::cuda()).requires_grad_();
    SGD cpu({pc}, SgdOptions(0.1, 0.9, 0.0, 1e-2, true));
    SGD gpu({pg}, SgdOptions(0.1, 0.9, 0.0, 1e-2, true));
    for (int s = 0; s < 4; ++s) {
      const Tensor g = randn({37, 129}, 91 + static_cast<uint64_t>(s), dt);
      pc.set_grad(g);
      pg.set_grad(g.to(Device::cuda()));
      cpu.step();
      gpu.step();
    }
    EXPECT_TRUE(pg.device().is_cuda());
    EXPECT_TRUE(gpu.state()[0].device().is_cuda());
    const double rtol = dt == DType::F32 ? 1e-6 : 1e-13;
    EXPECT_ALL_CLOSE(pg.to(Device::cpu()), pc, rtol, rtol * 0.1);
    EXPECT_ALL_CLOSE(gpu.state()[0].to(Device::cpu()), cpu.state()[0], rtol, rtol * 0.1);
  }
}

TEST(StepLR, DecaysEveryStepSizeEpochsPerGroup) {
  Tensor a = randn({2}, 1).requires_grad_(), b = randn({3}, 2).requires_grad_();
  SGD opt(std::vector<ParamGroup>{{{a}, SgdOptions(0.4)}, {{b}, SgdOptions(0.1, 0.9)}});
  StepLR sched(opt, 3, 0.1);
  EXPECT_EQ(sched.base_lrs(), (std::vector<double>{0.4, 0.1}));
  for (int epoch = 0; epoch < 10; ++epoch) {
    ASSERT_EQ(sched.last_epoch(), epoch);
    const std::vector<double> lr = sched.get_lr();
    const double f = std::pow(0.1, epoch / 3);
    EXPECT_NEAR(lr[0], 0.4 * f, 1e-15 * f) << "epoch " << epoch;
    EXPECT_NEAR(lr[1], 0.1 * f, 1e-15 * f) << "epoch " << epoch;
    EXPECT_EQ(opt.param_groups()[0].options.lr, lr[0]);
    sched.step();
  }
  EXPECT_THROW(StepLR(opt, 0, 0.5), Error);
  EXPECT_THROW(StepLR(opt, 2, -0.5), Error);
  EXPECT_THROW(sched.load_state(-1), Error);
  sched.load_state(4);
  EXPECT_EQ(sched.last_epoch(), 4);
}
