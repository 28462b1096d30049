// The CUDA backend against the CPU on the same random inputs. Every test skips without
// a CUDA device and runs for real on a machine with one.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cuda_runtime.h"
#include "kernels/sgd.h"
#include "tests/test_util.h"

using namespace engine;
using testing_util::randn;

#define SKIP_WITHOUT_CUDA() \
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device"

namespace {
const Device kCuda = Device::cuda(0);
double rtol_for(DType t) { return t == DType::F32 ? 1e-5 : 1e-12; }
}  // namespace

class CudaTyped : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(Dtypes, CudaTyped, ::testing::Values(DType::F32, DType::F64),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST_P(CudaTyped, CopiesRoundTrip) {
  SKIP_WITHOUT_CUDA();
  Tensor x = randn({3, 5, 7}, 1, GetParam());
  Tensor d = x.to(kCuda);
  EXPECT_TRUE(d.device().is_cuda());
  EXPECT_ALL_CLOSE(d.to(Device::cpu()), x, 0, 0);
  EXPECT_ALL_CLOSE(d.clone().to(Device::cpu()), x, 0, 0);
  EXPECT_EQ(d.at({2, 4, 6}), x.at({2, 4, 6}));
}

TEST_P(CudaTyped, ReluForwardBackwardMatchCpu) {
  SKIP_WITHOUT_CUDA();
  Tensor x = randn({4, 33, 17}, 2, GetParam());
  Tensor gy = randn({4, 33, 17}, 3, GetParam());
  Tensor xc = x.detach().requires_grad_(), xg = x.to(kCuda).requires_grad_();
  Tensor yc = relu(xc), yg = relu(xg);
  yc.backward(gy);
  yg.backward(gy.to(kCuda));
  EXPECT_ALL_CLOSE(yg.to(Device::cpu()), yc, 0, 0);
  EXPECT_ALL_CLOSE(xg.grad().to(Device::cpu()), xc.grad(), 0, 0);
}

TEST_P(CudaTyped, GuidedReluBackwardMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  Tensor x = randn({3, 17, 11}, 30, GetParam());
  Tensor gy = randn({3, 17, 11}, 31, GetParam());
  Tensor xc = x.detach().requires_grad_(), xg = x.to(kCuda).requires_grad_();
  guided_relu(xc).backward(gy);
  guided_relu(xg).backward(gy.to(kCuda));
  EXPECT_ALL_CLOSE(xg.grad().to(Device::cpu()), xc.grad(), 0, 0);
}

TEST_P(CudaTyped, ArithmeticMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  Tensor a = randn({257, 3}, 4, GetParam()), b = randn({257, 3}, 5, GetParam());
  Tensor ag = a.to(kCuda), bg = b.to(kCuda);
  const double r = rtol_for(GetParam());
  EXPECT_ALL_CLOSE(add(ag, bg).to(Device::cpu()), add(a, b), r, 0);
  EXPECT_ALL_CLOSE(sub(ag, bg).to(Device::cpu()), sub(a, b), r, 0);
  EXPECT_ALL_CLOSE(mul(ag, bg).to(Device::cpu()), mul(a, b), r, 0);
  EXPECT_ALL_CLOSE(mul(ag, 0.37).to(Device::cpu()), mul(a, 0.37), r, 0);
  EXPECT_ALL_CLOSE(ag.to(DType::F64 == GetParam() ? DType::F32 : DType::F64).to(Device::cpu()),
                   a.to(DType::F64 == GetParam() ? DType::F32 : DType::F64), 0, 0);
}

TEST_P(CudaTyped, RandomStreamsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  Generator gc(99), gg(99);
  const double r = rtol_for(GetParam());
  EXPECT_ALL_CLOSE(Tensor::randn({1001}, gg, GetParam(), kCuda).to(Device::cpu()),
                   Tensor::randn({1001}, gc, GetParam()), r, r);
  EXPECT_ALL_CLOSE(Tensor::rand({999}, gg, GetParam(), kCuda, -1, 2).to(Device::cpu()),
                   Tensor::rand({999}, gc, GetParam(), Device::cpu(), -1, 2), r, 0);
}

TEST_P(CudaTyped, DropoutMasksMatchCpu) {
  SKIP_WITHOUT_CUDA();
  Tensor x = randn({8, 513}, 6, GetParam());
  Generator gc(5), gg(5);
  Tensor xc = x.detach().requires_grad_(), xg = x.to(kCuda).requires_grad_();
  Tensor yc = dropout(xc, 0.3, true, &gc), yg = dropout(xg, 0.3, true, &gg);
  EXPECT_ALL_CLOSE(yg.to(Device::cpu()), yc, rtol_for(GetParam()), 0);
  sum(yc).backward();
  sum(yg).backward();
  EXPECT_ALL_CLOSE(xg.grad().to(Device::cpu()), xc.grad(), rtol_for(GetParam()), 0);
}

TEST_P(CudaTyped, SgdStepMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  Tensor p = randn({1000}, 7, GetParam()), g = randn({1000}, 8, GetParam()), b = randn({1000}, 9, GetParam());
  Tensor pg = p.to(kCuda), gg = g.to(kCuda), bg = b.to(kCuda);
  const kernels::SgdParams h{0.1, 0.9, 0.1, 1e-2, false, false};
  dispatch_dtype(GetParam(), [&](auto tag) {
    using T = decltype(tag);
    kernels::sgd_step_cpu<T>(p.data<T>(), g.data<T>(), b.data<T>(), h, p.numel());
    kernels::sgd_step_cuda<T>(pg.data<T>(), gg.data<T>(), bg.data<T>(), h, p.numel());
  });
  EXPECT_ALL_CLOSE(pg.to(Device::cpu()), p, rtol_for(GetParam()), 1e-7);
  EXPECT_ALL_CLOSE(bg.to(Device::cpu()), b, rtol_for(GetParam()), 1e-7);
}

TEST(Cuda, OpsWithoutCudaKernelsSaySo) {
  SKIP_WITHOUT_CUDA();
  Tensor x = randn({1, 3, 8, 8}, 10, DType::F32).to(kCuda);
  Tensor w = randn({2, 3, 3, 3}, 11, DType::F32).to(kCuda);
  try {
    conv2d(x, w);
    FAIL() << "conv2d on CUDA must say it needs the CPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA implementation"), std::string::npos) << e.what();
  }
}

TEST(Cuda, DeviceIsNamed) {
  SKIP_WITHOUT_CUDA();
  EXPECT_FALSE(kernels::cuda::device_name(0).empty());
  std::cout << "CUDA device 0: " << kernels::cuda::device_name(0) << "\n";
}
