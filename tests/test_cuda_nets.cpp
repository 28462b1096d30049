// Whole networks on the GPU against the same networks on the CPU, and the caching
// allocator under a training loop. AlexNet and SqueezeNet 1.1 with seeded random weights
// at batch 2 (224 x 224): logits, the cross-entropy loss on fixed targets, every
// parameter gradient and the input gradient; then SGD steps in training mode (dropout
// included: both devices draw the same masks). Every test skips without a CUDA device.
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

// Two copies of one seeded network in dtype t, one on each device.
struct Twins {
  Generator init_cpu, init_gpu, drop_cpu, drop_gpu;
  std::shared_ptr<nn::Module> cpu, gpu;
  Twins(nets::Arch arch, DType t, uint64_t seed)
      : init_cpu(seed), init_gpu(seed), drop_cpu(seed + 1), drop_gpu(seed + 1) {
    cpu = nets::make_model(arch, 1000, &init_cpu, &drop_cpu);
    gpu = nets::make_model(arch, 1000, &init_gpu, &drop_gpu);
    cpu->to(t);
    gpu->to(t);
    gpu->to(kCuda);
  }
};

void expect_passes_agree(const Pass& g, const Pass& c, double tol) {
  ASSERT_TRUE(g.logits.device().is_cuda()) << "logits are " << g.logits.str();
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
    ASSERT_TRUE(g.grads[i].second.defined()) << "no gradient for " << n << " on the GPU";
    EXPECT_TRUE(g.grads[i].second.device().is_cuda()) << n;
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

// The GPU's pass against the CPU's, which runs in float64 for either dtype (the same
// weights and input, widened exactly). A float32 network of ReLUs and max-pools has a
// discontinuous gradient: a pre-activation within rounding of zero, or two window values
// within rounding of each other, can go either way in two float32 implementations, and
// the gradient below it then differs by a whole element's share. So float32 is held
// against the exact result rather than against another float32 rounding: SqueezeNet
// here (seed 20) is such a case, with the CPU's own float32 input gradient 4.1e-2 off
// float64 in this measure and the GPU's within the float32 tolerance.
void expect_eval_pass_agrees(nets::Arch arch, DType t, uint64_t seed) {
  Twins twins(arch, t, seed);
  twins.cpu->to(DType::F64);
  twins.cpu->eval();
  twins.gpu->eval();
  const Tensor x = randn({2, 3, 224, 224}, seed + 2, t);
  const Pass c = run(*twins.cpu, x.to(DType::F64));
  const Pass g = run(*twins.gpu, x.to(kCuda));
  expect_passes_agree(g, c, net_tol(t));
}

}  // namespace

class CudaNets : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaNets, ::testing::Values(DType::F32, DType::F64),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST_P(CudaNets, AlexNetForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  expect_eval_pass_agrees(nets::Arch::AlexNet, GetParam(), 10);
}

TEST_P(CudaNets, SqueezeNetForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  expect_eval_pass_agrees(nets::Arch::SqueezeNet1_1, GetParam(), 20);
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
// network's float32 kinks (see expect_eval_pass_agrees); the next test keeps kSgdInput so.
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

// The SGD test's input is away from float32's kinks: the CPU's own float32 result moves
// by less than the float32 tolerance when the input moves by 3e-6 of itself (a few
// float32 roundings), in three random directions. At batch 2, some millions of ReLU
// inputs and max-pool comparisons are made over the two steps, and for most inputs one
// of them lies within rounding of its kink: of the input seeds 32-41, only 34 passes this
// test. A flipped ReLU or window there moves a gradient by up to 1.5e-1 of its largest
// magnitude (classifier.1.weight, seed 38), and at seed 32 it moved features.0.weight's
// buffer by 6.7e-3, which the GPU reproduced exactly (on an H100). The GPU's float32
// rounding differs from the CPU's by about as much as these moves, so on an input that
// passes here a difference beyond the tolerance is the GPU's. Runs on the CPU alone.
TEST(CudaNetsInput, AlexNetSgdStepsInputIsAwayFromFloat32Kinks) {
  auto train = [](const Tensor& x) {
    Generator init(kSgdSeed), drop(kSgdSeed + 1);
    auto net = nets::make_model(nets::Arch::AlexNet, 1000, &init, &drop);
    net->to(DType::F32);
    return two_sgd_steps(*net, x);
  };
  const Tensor x = randn({2, 3, 224, 224}, kSgdInput, DType::F32);
  const Trained base = train(x);
  for (uint64_t direction : {1, 2, 3}) {
    SCOPED_TRACE(::testing::Message() << "direction " << direction);
    const Tensor moved = add(x, mul(mul(x, randn(x.shape(), 100 + direction, DType::F32)), 3e-6));
    expect_trained_agree(train(moved), base, net_tol(DType::F32));
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
