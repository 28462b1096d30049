// Whole networks on the GPU against the same networks on the CPU, and the caching
// allocator under a training loop. AlexNet and SqueezeNet 1.1 with seeded random weights
// at batch 2 (224 x 224; SqueezeNet's float32 pass at 96 x 96): logits, the cross-entropy
// loss on fixed targets, every parameter gradient and the input gradient; then SGD steps
// in training mode (dropout included: both devices draw the same masks). These tests skip
// without a CUDA device; the CudaNetsInput tests, which keep the float32 inputs away from
// float32's kinks (see moved_input), run on the CPU alone.
//
// Tolerance: the error relative to the reference tensor's largest magnitude
// (testing_util::rel_error), 1e-4 in float32 (as the PyTorch parity test of test_nets:
// eight layers of float32 sums in different orders, and gradients that come back
// through all of them) and 1e-10 in float64. The single forward-backward passes take the
// CPU's result in float64 as the reference for both dtypes (see expect_eval_pass_agrees).
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim/sgd.h"
#include "kernels/cuda_runtime.h"
#include "nets/zoo.h"
#include "tests/test_util.h"

using namespace engine;
using testing_util::randn;
using testing_util::rel_error;

#define SKIP_WITHOUT_CUDA() \
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device"

namespace {

const Device kCpu = Device::cpu();
const Device kCuda = Device::cuda(0);
double net_tol(DType t) { return t == DType::F32 ? 1e-4 : 1e-10; }

const std::vector<int64_t> kTargets = {3, 517};

struct Pass {
  Tensor logits, loss, input_grad;
  std::vector<std::pair<std::string, Tensor>> grads;
};

// Forward, cross-entropy and backward down to the input, in the model's current mode.
Pass run(nn::Module& net, const Tensor& x) {
  net.zero_grad();
  Pass r;
  Tensor in = x.detach().requires_grad_();
  r.logits = net(in);
  r.loss = cross_entropy(r.logits, kTargets);
  r.loss.backward();
  r.input_grad = in.grad();
  for (const auto& [n, p] : net.named_parameters()) r.grads.emplace_back(n, p.grad());
  return r;
}

// A network from seed `seed` (its dropout from seed + 1) in dtype t, with the generators
// it draws from.
struct Seeded {
  Generator init, drop;
  std::shared_ptr<nn::Module> net;
  Seeded(nets::Arch arch, DType t, uint64_t seed) : init(seed), drop(seed + 1) {
    net = nets::make_model(arch, 1000, &init, &drop);
    net->to(t);
  }
  Seeded(const Seeded&) = delete;  // net holds pointers to init and drop
  Seeded& operator=(const Seeded&) = delete;
};

// Two copies of one seeded network in dtype t, one on each device.
struct Twins {
  Seeded on_cpu, on_gpu;
  std::shared_ptr<nn::Module> cpu, gpu;
  Twins(nets::Arch arch, DType t, uint64_t seed)
      : on_cpu(arch, t, seed), on_gpu(arch, t, seed), cpu(on_cpu.net), gpu(on_gpu.net) {
    gpu->to(kCuda);
  }
};

// Pass g (on either device) against the reference pass c.
void expect_passes_agree(const Pass& g, const Pass& c, double tol) {
  const double logit_err = rel_error(g.logits, c.logits);
  EXPECT_LT(logit_err, tol) << "logits";
  EXPECT_NEAR(g.loss.item(), c.loss.item(), tol * std::fabs(c.loss.item())) << "loss";
  ASSERT_TRUE(g.input_grad.defined());
  EXPECT_LT(rel_error(g.input_grad, c.input_grad), tol) << "input gradient";
  ASSERT_EQ(g.grads.size(), c.grads.size());
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < c.grads.size(); ++i) {
    const std::string& n = c.grads[i].first;
    ASSERT_TRUE(g.grads[i].second.defined()) << "no gradient for " << n;
    EXPECT_EQ(g.grads[i].second.device(), g.logits.device()) << n;
    const double e = rel_error(g.grads[i].second, c.grads[i].second);
    EXPECT_LT(e, tol) << "gradient of " << n;
    if (e > worst) {
      worst = e;
      worst_name = n;
    }
  }
  std::cout << "logits rel. error " << logit_err << "; worst parameter gradient rel. error " << worst << " ("
            << worst_name << ")\n";
}

// A float32 network of ReLUs and max-pools has a discontinuous gradient: a
// pre-activation within rounding of zero, or two window values within rounding of each
// other, can go either way in two float32 implementations, and every gradient below it
// then differs by a whole element's share (in the cases tried here, by up to a fifth of
// the gradient's largest magnitude).
// At batch 2, millions of such decisions are made, so for most inputs one of them lies
// within float32's rounding of its kink, and a float32 comparison at 1e-4 holds only on
// an input away from all of them. The float32 cases below use such inputs, which the
// CudaNetsInput tests (CPU only, so CI runs them) keep so: the CPU's float32 result
// stays within the tolerance of its reference when the input moves by 3e-6 of itself
// (a few float32 roundings) in three random directions. The GPU's float32 rounding
// differs from the CPU's by about as much, so on these inputs a difference beyond the
// tolerance is the GPU's.
Tensor moved_input(const Tensor& x, uint64_t direction) {
  return add(x, mul(mul(x, randn(x.shape(), 100 + direction, x.dtype())), 3e-6));
}

// The single forward-backward passes: a network from seed `seed` on the input of seed
// seed + 2, in eval mode. The reference is the CPU's pass in float64 for either dtype
// (the same weights and input, widened exactly). Float64 runs at 224 x 224; float32 on
// `float32_input`, away from float32's kinks: at 224 x 224 none of ten SqueezeNet seeds
// tried (20-24, 10-14) was, the CPU's own float32 input gradient off float64 by 1.3e-3 to
// 1.3e-1; at 96 x 96 two of eight were.
struct EvalCase {
  nets::Arch arch;
  uint64_t seed;
  Shape float32_input;
};
const EvalCase kAlexNetEval{nets::Arch::AlexNet, 10, {2, 3, 224, 224}};
const EvalCase kSqueezeNetEval{nets::Arch::SqueezeNet1_1, 21, {2, 3, 96, 96}};

Shape eval_input_shape(const EvalCase& e, DType t) {
  return t == DType::F32 ? e.float32_input : Shape{2, 3, 224, 224};
}

void expect_eval_pass_agrees(const EvalCase& e, DType t) {
  Twins twins(e.arch, t, e.seed);
  twins.cpu->to(DType::F64);
  twins.cpu->eval();
  twins.gpu->eval();
  const Tensor x = randn(eval_input_shape(e, t), e.seed + 2, t);
  const Pass c = run(*twins.cpu, x.to(DType::F64));
  const Pass g = run(*twins.gpu, x.to(kCuda));
  ASSERT_TRUE(g.logits.device().is_cuda()) << "logits are " << g.logits.str();
  expect_passes_agree(g, c, net_tol(t));
}

}  // namespace

class CudaNets : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaNets, ::testing::Values(DType::F32, DType::F64),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST_P(CudaNets, AlexNetForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  expect_eval_pass_agrees(kAlexNetEval, GetParam());
}

TEST_P(CudaNets, SqueezeNetForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  expect_eval_pass_agrees(kSqueezeNetEval, GetParam());
}

// The float32 eval cases' inputs are away from float32's kinks (see moved_input).
TEST(CudaNetsInput, EvalPassInputsAreAwayFromFloat32Kinks) {
  for (const EvalCase& e : {kAlexNetEval, kSqueezeNetEval}) {
    SCOPED_TRACE(nets::arch_name(e.arch));
    Seeded net64(e.arch, DType::F64, e.seed), net32(e.arch, DType::F32, e.seed);
    net64.net->eval();
    net32.net->eval();
    const Tensor x = randn(e.float32_input, e.seed + 2, DType::F32);
    const Pass reference = run(*net64.net, x.to(DType::F64));
    for (uint64_t direction : {0, 1, 2, 3}) {  // 0: the input itself
      SCOPED_TRACE(::testing::Message() << "direction " << direction);
      expect_passes_agree(run(*net32.net, direction == 0 ? x : moved_input(x, direction)), reference,
                          net_tol(DType::F32));
    }
  }
}

// Training mode: AlexNet from seed kSgdSeed (dropout from kSgdSeed + 1, the same masks
// on both devices), two SGD steps with momentum, Nesterov and weight decay on the input
// of seed kSgdInput.
constexpr uint64_t kSgdSeed = 30, kSgdInput = 34;

struct Trained {
  std::vector<double> losses;
  std::vector<std::pair<std::string, Tensor>> params;
  std::vector<Tensor> buffers;  // the momentum buffers, in the parameters' order
};

Trained two_sgd_steps(nn::Module& net, const Tensor& x) {
  net.train();
  optim::SGD sgd(net.parameters(), optim::SgdOptions(0.01, 0.9, 0.0, 5e-4, true));
  Trained r;
  for (int step = 0; step < 2; ++step) {
    sgd.zero_grad();
    const Tensor loss = cross_entropy(net(x), kTargets);
    r.losses.push_back(loss.item());
    loss.backward();
    sgd.step();
  }
  r.params = net.named_parameters();
  r.buffers = sgd.state();
  return r;
}

// The losses, the momentum buffers (the running sum of every step's gradient and weight
// decay: they stand for the updates, as p_after - p_before would lose float32's last
// bits to cancellation) and the parameters of `a` against those of the reference `b`.
void expect_trained_agree(const Trained& a, const Trained& b, double tol) {
  ASSERT_EQ(a.losses.size(), b.losses.size());
  for (size_t s = 0; s < b.losses.size(); ++s)
    EXPECT_NEAR(a.losses[s], b.losses[s], tol * std::fabs(b.losses[s])) << "loss of step " << s;
  ASSERT_EQ(a.params.size(), b.params.size());
  ASSERT_EQ(a.buffers.size(), b.params.size());
  ASSERT_EQ(b.buffers.size(), b.params.size());
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < b.params.size(); ++i) {
    const std::string& n = b.params[i].first;
    ASSERT_EQ(a.params[i].first, n);
    ASSERT_TRUE(a.buffers[i].defined() && b.buffers[i].defined()) << "no momentum buffer for " << n;
    EXPECT_EQ(a.buffers[i].device(), a.params[i].second.device()) << n;
    const double e = rel_error(a.buffers[i], b.buffers[i]);
    EXPECT_LT(e, tol) << "momentum buffer of " << n;
    EXPECT_LT(rel_error(a.params[i].second.detach(), b.params[i].second.detach()), tol) << n;
    if (e > worst) {
      worst = e;
      worst_name = n;
    }
  }
  std::cout << "worst momentum buffer rel. error " << worst << " (" << worst_name << ")\n";
}

// Two SGD steps in training mode on each device: the losses, the momentum buffers and
// the parameters agree. Float32 is held against the CPU's float32 (the float64 network
// would draw other dropout masks), so this check holds only for an input away from the
// network's float32 kinks (see moved_input); the next test keeps kSgdInput so.
TEST_P(CudaNets, AlexNetSgdStepsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const DType t = GetParam();
  Twins twins(nets::Arch::AlexNet, t, kSgdSeed);
  const Tensor x = randn({2, 3, 224, 224}, kSgdInput, t);
  const Trained c = two_sgd_steps(*twins.cpu, x);
  const Trained g = two_sgd_steps(*twins.gpu, x.to(kCuda));
  for (const auto& [n, p] : g.params) ASSERT_TRUE(p.device().is_cuda()) << n;
  expect_trained_agree(g, c, net_tol(t));
}

// The SGD test's input is away from float32's kinks (see moved_input): of the input
// seeds 32-41, only 34 was. At seed 32 a move of 1e-6 of the input moved
// features.0.weight's momentum buffer by 6.7e-3, which the GPU reproduced (an H100:
// 6.72e-3); at seed 38 one moved classifier.1.weight's by 1.5e-1.
TEST(CudaNetsInput, AlexNetSgdStepsInputIsAwayFromFloat32Kinks) {
  auto train = [](const Tensor& x) {
    const Seeded s(nets::Arch::AlexNet, DType::F32, kSgdSeed);
    return two_sgd_steps(*s.net, x);
  };
  const Tensor x = randn({2, 3, 224, 224}, kSgdInput, DType::F32);
  const Trained base = train(x);
  for (uint64_t direction : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << "direction " << direction);
    expect_trained_agree(train(moved_input(x, direction)), base, net_tol(DType::F32));
  }
}

// After warm-up, a training step reuses cached blocks: no cudaMalloc, and the bytes
// handed out at the end of each step do not grow. Warm-up is at most four steps, ending
// with the first one that calls cudaMalloc no more: the first step also creates the
// momentum buffers, which keep blocks the next forward would have reused, and a block
// may serve a request up to half its size, so which cached block serves which request
// can take another step or two to settle.
// With ENGINE_CUDA_CACHING=0 (as under compute-sanitizer) every allocation is a
// cudaMalloc by design, so the test does not apply.
TEST(CudaAllocator, TrainingStepsAfterWarmUpCallNoCudaMalloc) {
  SKIP_WITHOUT_CUDA();
  const char* caching = std::getenv("ENGINE_CUDA_CACHING");
  if (caching != nullptr && std::string(caching) == "0") GTEST_SKIP() << "ENGINE_CUDA_CACHING=0 turns the cache off";
  for (nets::Arch arch : {nets::Arch::SqueezeNet1_1, nets::Arch::AlexNet}) {
    SCOPED_TRACE(nets::arch_name(arch));
    Generator init(40), drop(41), data(42);
    auto net = nets::make_model(arch, 1000, &init, &drop);
    net->to(kCuda);
    net->train();
    const Tensor x = Tensor::randn({2, 3, 224, 224}, data, DType::F32, kCuda);
    optim::SGD sgd(net->parameters(), optim::SgdOptions(0.01, 0.9));
    auto step = [&] {
      sgd.zero_grad();
      const Tensor loss = cross_entropy((*net)(x), kTargets);
      loss.backward();
      sgd.step();
      return loss.item();
    };
    int warm_up = 0;
    for (bool settled = false; !settled && warm_up < 4; ++warm_up) {
      const std::size_t before = kernels::cuda::device_memory_stats().malloc_calls;
      step();
      settled = warm_up > 0 && kernels::cuda::device_memory_stats().malloc_calls == before;
    }
    std::cout << nets::arch_name(arch) << ": " << warm_up << " warm-up steps\n";
    const kernels::cuda::DeviceMemoryStats warm = kernels::cuda::device_memory_stats();
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(std::isfinite(step()));
      const kernels::cuda::DeviceMemoryStats now = kernels::cuda::device_memory_stats();
      EXPECT_EQ(now.malloc_calls, warm.malloc_calls) << "step " << i << " after warm-up";
      EXPECT_EQ(now.allocated_bytes, warm.allocated_bytes) << "step " << i << " after warm-up";
    }
  }
}
