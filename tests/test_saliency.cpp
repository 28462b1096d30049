// Saliency maps: each method against PyTorch on the same weights, input and targets
// (AlexNet with random weights, SqueezeNet with the real ImageNet weights), and the
// properties that hold whatever the weights: no parameter gradient is computed, the
// model's state is restored, targets change the map, SmoothGrad without noise is vanilla.
#include <cmath>

#include "engine/io/h5.h"
#include "engine/io/weights.h"
#include "engine/saliency.h"
#include "nets/zoo.h"
#include "tests/test_util.h"

using namespace engine;
namespace sal = engine::saliency;

namespace {

sal::Result run(nn::Module& m, nets::Arch arch, const Tensor& x, const std::vector<int64_t>& t, sal::Method method,
                int steps = 8) {
  sal::Options opt;
  opt.method = method;
  opt.steps = steps;
  const sal::Split split = nets::gradcam_split(m, arch);
  return sal::compute(m, x, t, opt, &split);
}

// In float64 the maps must agree to 1e-4 of their maximum. In float32, rounding may flip
// a ReLU whose input is within an ulp of zero in one engine and not the other, which
// moves part of the gradient: there the bound is looser.
void expect_matches_pytorch(nets::Arch arch, const std::string& pth, const std::vector<int64_t>& targets,
                            uint64_t seed, DType dtype) {
  const bool f64 = dtype == DType::F64;
  const double bound = f64 ? 1e-4 : 2e-2;
  const std::string dir = testing_util::temp_dir();
  const Tensor x = testing_util::randn({2, 3, 224, 224}, seed, DType::F32);
  {
    io::H5Writer w(dir + "/in.h5");
    w.write("x", x);
    w.write_ints("targets", targets);
    w.commit();
  }
  const std::string name = nets::arch_name(arch);
  ASSERT_EQ(testing_util::run_python("weights/convert_torchvision.py",
                                     "--arch " + name + " --pth " + pth + " --out " + dir + "/w.h5 > /dev/null"),
            0);
  ASSERT_EQ(testing_util::run_reference_script("saliency_reference.py", "--arch " + name + " --pth " + pth +
                                                                            " --input " + dir + "/in.h5 --out " + dir +
                                                                            "/ref.h5 --steps 8" +
                                                                            (f64 ? " --double" : "")),
            0);
  auto model = nets::make_model(arch, 1000);
  io::load_weights(*model, dir + "/w.h5");
  model->to(dtype);
  io::H5Reader ref(dir + "/ref.h5");
  const std::pair<sal::Method, const char*> methods[] = {{sal::Method::Vanilla, "vanilla"},
                                                         {sal::Method::Integrated, "integrated"},
                                                         {sal::Method::Guided, "guided"},
                                                         {sal::Method::GradCam, "gradcam"}};
  for (const auto& [method, key] : methods) {
    const sal::Result r = run(*model, arch, x.to(dtype), targets, method);
    EXPECT_EQ(r.maps.shape(), (Shape{2, 224, 224})) << key;
    const double e = testing_util::rel_error(r.maps, ref.read(key));
    EXPECT_LT(e, bound) << key;
    std::cout << name << " " << dtype_name(dtype) << " " << key << ": relative error " << e << "\n";
    if (method == sal::Method::Vanilla) {
      EXPECT_LT(testing_util::rel_error(r.logits, ref.read("logits")), f64 ? 1e-12 : 1e-5);
    }
  }
}

}  // namespace

class SaliencyParity : public ::testing::TestWithParam<DType> {};
INSTANTIATE_TEST_SUITE_P(Dtypes, SaliencyParity, ::testing::Values(DType::F64, DType::F32),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST_P(SaliencyParity, AlexNetRandomWeightsMatchPyTorch) {
  REQUIRE_TORCH();
  const std::string dir = testing_util::temp_dir();
  ASSERT_EQ(testing_util::run_reference_script("net_reference.py", "make-alexnet --seed 11 --out " + dir + "/a.pth"), 0);
  expect_matches_pytorch(nets::Arch::AlexNet, dir + "/a.pth", {3, 900}, 40, GetParam());
}

TEST_P(SaliencyParity, SqueezeNetRealWeightsMatchPyTorch) {
  REQUIRE_TORCH();
  std::string data;
  REQUIRE_SHARED_DATA(data);
  expect_matches_pytorch(nets::Arch::SqueezeNet1_1, data + "/weights/squeezenet1_1_imagenet.pth", {130, 236}, 41,
                         GetParam());
}

class SaliencyProperties : public ::testing::Test {
 protected:
  void SetUp() override {
    Generator g(50), d(51);
    model_ = nets::make_model(nets::Arch::SqueezeNet1_1, 10, &g, &d);
    x_ = testing_util::randn({2, 3, 96, 112}, 52, DType::F32);
  }
  std::shared_ptr<nn::Module> model_;
  Tensor x_;
};

TEST_F(SaliencyProperties, NoParameterGradientAndStateRestored) {
  model_->train();
  const auto r = run(*model_, nets::Arch::SqueezeNet1_1, x_, {1, 2}, sal::Method::Vanilla);
  EXPECT_EQ(r.maps.shape(), (Shape{2, 96, 112}));
  for (const auto& [n, p] : model_->named_parameters()) {
    EXPECT_FALSE(p.grad().defined()) << n;
    EXPECT_TRUE(p.requires_grad()) << n;
  }
  EXPECT_TRUE(model_->is_training());
  // Guided backprop swaps the ReLUs only for the call.
  run(*model_, nets::Arch::SqueezeNet1_1, x_, {1, 2}, sal::Method::Guided);
  EXPECT_EQ(model_->describe().find("GuidedReLU"), std::string::npos);
}

TEST_F(SaliencyProperties, MapsAreNonNegativeAndDependOnTheTarget) {
  for (sal::Method m : {sal::Method::Vanilla, sal::Method::Guided, sal::Method::Integrated, sal::Method::GradCam}) {
    const auto a = run(*model_, nets::Arch::SqueezeNet1_1, x_, {1, 2}, m).maps.to_vector<float>();
    const auto b = run(*model_, nets::Arch::SqueezeNet1_1, x_, {4, 2}, m).maps.to_vector<float>();
    const size_t half = a.size() / 2;
    for (float v : a) ASSERT_GE(v, 0.0f) << sal::method_name(m);
    EXPECT_NE(std::vector<float>(a.begin(), a.begin() + half), std::vector<float>(b.begin(), b.begin() + half))
        << sal::method_name(m) << ": another target must give another map";
    // The second image kept its target: its map is unchanged.
    EXPECT_EQ(std::vector<float>(a.begin() + half, a.end()), std::vector<float>(b.begin() + half, b.end()))
        << sal::method_name(m);
  }
}

TEST_F(SaliencyProperties, SmoothGradWithoutNoiseIsVanilla) {
  sal::Options opt;
  opt.method = sal::Method::SmoothGrad;
  opt.samples = 3;
  opt.noise = 0.0;
  const auto plain = run(*model_, nets::Arch::SqueezeNet1_1, x_, {3, 7}, sal::Method::Vanilla).maps;
  EXPECT_ALL_CLOSE(sal::compute(*model_, x_, {3, 7}, opt).maps, plain, 1e-6, 1e-12);
  opt.noise = 0.2;
  opt.seed = 5;
  const auto noisy = sal::compute(*model_, x_, {3, 7}, opt).maps;
  EXPECT_FALSE(testing_util::all_close(noisy, plain, 1e-3, 0));
  EXPECT_ALL_CLOSE(sal::compute(*model_, x_, {3, 7}, opt).maps, noisy, 0, 0);  // seeded: reproducible
}

TEST_F(SaliencyProperties, BadRequestsAreRejected) {
  sal::Options opt;
  EXPECT_THROW(sal::compute(*model_, x_, {1}, opt), Error);        // one target for two images
  EXPECT_THROW(sal::compute(*model_, x_, {1, 10}, opt), Error);    // class out of range
  opt.method = sal::Method::GradCam;
  EXPECT_THROW(sal::compute(*model_, x_, {1, 2}, opt), Error);     // no split given
  EXPECT_THROW(sal::parse_method("occlusion"), Error);
}

TEST(Saliency, UpsampleBilinearMatchesHandComputedValues) {
  // 2x2 -> 4x4 with align_corners=False: rows/cols at source 0, 0.25, 0.75, 1 (clamped).
  const Tensor m = Tensor::from_vector({1, 2, 2}, std::vector<double>{0, 1, 2, 3});
  const Tensor u = sal::upsample_bilinear(m, 4, 4);
  const std::vector<double> expected = {0, 0.25, 0.75, 1, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2, 2.25, 2.75, 3};
  EXPECT_ALL_CLOSE(u, Tensor::from_vector({1, 4, 4}, expected), 1e-15, 1e-15);
}
