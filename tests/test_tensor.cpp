// Tensor basics: creation, views sharing storage, copies, dtype conversion, errors.
#include "tests/test_util.h"

using namespace engine;
using testing_util::randn;

TEST(Tensor, CreationShapesAndValues) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.shape(), (Shape{2, 3}));
  EXPECT_EQ(z.numel(), 6);
  EXPECT_EQ(z.dtype(), DType::F32);
  EXPECT_TRUE(z.device().is_cpu());
  for (float v : z.to_vector<float>()) EXPECT_EQ(v, 0.0f);
  Tensor f = Tensor::full({4}, 2.5, DType::F64);
  for (double v : f.to_vector<double>()) EXPECT_EQ(v, 2.5);
  Tensor d = Tensor::from_vector({2, 2}, std::vector<double>{1, 2, 3, 4});
  EXPECT_EQ(d.at({1, 0}), 3.0);
  EXPECT_EQ(Tensor::scalar(7.0).item(), 7.0);
  EXPECT_EQ(Tensor::scalar(7.0).dim(), 0);
}

TEST(Tensor, RandomIsSeededAndDistributed) {
  Generator g1(42), g2(42), g3(43);
  Tensor a = Tensor::randn({1000}, g1), b = Tensor::randn({1000}, g2), c = Tensor::randn({1000}, g3);
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  EXPECT_NE(a.to_vector<float>(), c.to_vector<float>());
  // The generator moves on: a second draw differs from the first.
  EXPECT_NE(Tensor::randn({1000}, g1).to_vector<float>(), a.to_vector<float>());
  Generator g(7);
  const std::vector<double> n = Tensor::randn({100000}, g, DType::F64).to_vector<double>();
  double m = 0, v = 0;
  for (double x : n) m += x;
  m /= n.size();
  for (double x : n) v += (x - m) * (x - m);
  v /= n.size();
  EXPECT_NEAR(m, 0.0, 0.02);
  EXPECT_NEAR(v, 1.0, 0.02);
  const std::vector<double> u = Tensor::rand({100000}, g, DType::F64, Device::cpu(), -2, 3).to_vector<double>();
  double lo = 1e9, hi = -1e9, um = 0;
  for (double x : u) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    um += x;
  }
  EXPECT_GE(lo, -2.0);
  EXPECT_LT(hi, 3.0);
  EXPECT_NEAR(um / u.size(), 0.5, 0.03);
}

TEST(Tensor, ReshapeViewFlattenShareStorage) {
  Tensor x = randn({2, 3, 4}, 1);
  Tensor v = x.view({6, 4});
  Tensor r = x.reshape({-1, 2});
  Tensor f = x.flatten(1);
  EXPECT_EQ(r.shape(), (Shape{12, 2}));
  EXPECT_EQ(f.shape(), (Shape{2, 12}));
  EXPECT_EQ(x.flatten().shape(), (Shape{24}));
  EXPECT_EQ(v.raw_data(), x.raw_data());
  EXPECT_EQ(f.raw_data(), x.raw_data());
  v.data<double>()[5] = 123.0;  // writes through the view
  EXPECT_EQ(x.at({0, 1, 1}), 123.0);
  EXPECT_EQ(f.at({0, 5}), 123.0);
}

TEST(Tensor, CloneAndToDtypeCopy) {
  Tensor x = randn({3, 5}, 2, DType::F32);
  Tensor c = x.clone();
  EXPECT_NE(c.raw_data(), x.raw_data());
  EXPECT_EQ(c.to_vector<float>(), x.to_vector<float>());
  Tensor d = x.to(DType::F64);
  EXPECT_EQ(d.dtype(), DType::F64);
  const auto xs = x.to_vector<float>();
  const auto ds = d.to_vector<double>();
  for (size_t i = 0; i < xs.size(); ++i) EXPECT_EQ(static_cast<double>(xs[i]), ds[i]);
  EXPECT_TRUE(x.to(Device::cpu()).same(x));
  Tensor y = Tensor::zeros({3, 5});
  y.copy_(x);
  EXPECT_EQ(y.to_vector<float>(), xs);
}

TEST(Tensor, ErrorsNameShapes) {
  Tensor x = randn({2, 3}, 3);
  try {
    x.reshape({4, 2});
    FAIL() << "reshape to a wrong element count must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[4, 2]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(x.data<float>(), Error);  // wrong dtype
  EXPECT_THROW(x.at({2, 0}), Error);
  EXPECT_THROW(x.size(2), Error);
  EXPECT_THROW(Tensor().shape(), Error);
  EXPECT_THROW(x.item(), Error);
}

TEST(Tensor, DeviceParsing) {
  EXPECT_TRUE(Device::parse("cpu").is_cpu());
  EXPECT_THROW(Device::parse("tpu"), Error);
  EXPECT_THROW(Device::parse("cuda:x"), Error);
  if (!cuda_available()) {
    EXPECT_TRUE(Device::parse("auto").is_cpu());
    try {
      Device::parse("cuda");
      FAIL() << "cuda without a device must throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA device"), std::string::npos) << e.what();
    }
  } else {
    EXPECT_TRUE(Device::parse("auto").is_cuda());
  }
}

TEST(Tensor, CpuCacheReusesBlocks) {
  const std::size_t before = cpu_cache_bytes();
  void* first;
  {
    Tensor t = Tensor::empty({1 << 20});
    first = t.raw_data();
  }
  EXPECT_GE(cpu_cache_bytes(), before + (4u << 20));
  Tensor again = Tensor::empty({1 << 20});
  EXPECT_EQ(again.raw_data(), first);
}
