// The command-line tools end to end, with the real SqueezeNet ImageNet weights and the
// real photographs in ../shared/data: predictions, saliency outputs, and bad input.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <sys/wait.h>

#include "engine/io/image.h"
#include "engine/io/npy.h"
#include "tests/test_util.h"
#include "tests/tool_run.h"

namespace fs = std::filesystem;
using namespace engine;

namespace {

using testing_util::json_lines;
using testing_util::ToolRun;

ToolRun run_tool(const std::string& tool, const std::string& args) {
  return testing_util::run_tool_in(ENGINE_BIN_DIR, tool, args);
}

}  // namespace

class Tools : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = testing_util::shared_data_dir();
    if (data_.empty() || !testing_util::torch_available()) return;
    weights_ = testing_util::temp_dir() + "/squeezenet1_1.h5";
    const int rc = testing_util::run_python("weights/convert_torchvision.py",
                                            "--arch squeezenet1_1 --pth " + data_ +
                                                "/weights/squeezenet1_1_imagenet.pth --out " + weights_ + " > /dev/null");
    if (rc != 0) weights_.clear();
  }
  void SetUp() override {
    std::string d;
    REQUIRE_SHARED_DATA(d);
    REQUIRE_TORCH();
    ASSERT_FALSE(weights_.empty()) << "converting the SqueezeNet weights failed";
  }
  static std::string sample(const std::string& name) { return data_ + "/imagenet/samples/" + name; }

  static std::string data_, weights_;
};
std::string Tools::data_, Tools::weights_;

TEST_F(Tools, PredictNamesFlamingoAndDoberman) {
  const ToolRun r = run_tool("predict", "--device cpu --json --weights " + weights_ + " " +
                                        sample("n02007558_flamingo.JPEG") + " " + sample("n02107142_Doberman.JPEG"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["topk"][0]["name"], "flamingo");
  EXPECT_EQ(lines[0]["topk"][0]["index"], 130);
  EXPECT_EQ(lines[1]["topk"][0]["name"], "Doberman");
  for (const auto& l : lines) {
    ASSERT_EQ(l["topk"].size(), 5u);
    double total = 0, prev = 2;
    for (const auto& p : l["topk"]) {
      EXPECT_LE(p["prob"].get<double>(), prev);
      prev = p["prob"].get<double>();
      total += prev;
    }
    EXPECT_LE(total, 1.0 + 1e-9);
  }
}

TEST_F(Tools, PredictReportsBadImagesAndGoesOn) {
  const std::string dir = testing_util::temp_dir();
  std::ofstream(dir + "/text.jpg") << "not a JPEG at all\n";
  std::ofstream(dir + "/empty.png").close();
  fs::copy_file(sample("n02007558_flamingo.JPEG"), dir + "/good.jpg");
  const ToolRun r = run_tool("predict", "--device cpu --weights " + weights_ + " " + dir);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("good.jpg"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("flamingo"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("text.jpg"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("empty.png"), std::string::npos) << r.err;
}

TEST_F(Tools, PredictRejectsABadWeightsFile) {
  const std::string dir = testing_util::temp_dir();
  std::ofstream(dir + "/w.h5") << "garbage";
  const ToolRun r = run_tool("predict", "--weights " + dir + "/w.h5 " + sample("n02007558_flamingo.JPEG"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(dir + "/w.h5"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST_F(Tools, SaliencyWritesEveryOutput) {
  const std::string out = testing_util::temp_dir() + "/maps";
  const ToolRun r = run_tool("saliency", "--device cpu --weights " + weights_ + " --out " + out + " " +
                                         sample("n02007558_flamingo.JPEG") + " " + sample("n02123045_tabby.JPEG"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["class"]["name"], "flamingo");
  EXPECT_EQ(lines[0]["class"]["source"], "top-1");
  EXPECT_EQ(lines[0]["topk"].size(), 5u);
  for (const char* stem : {"n02007558_flamingo", "n02123045_tabby"}) {
    const std::string base = out + "/" + stem;
    const io::Image panel = io::read_image(base + "_panel.png");
    EXPECT_EQ(panel.height, 224);
    EXPECT_EQ(panel.width, 3 * 224 + 2 * 4);
    EXPECT_EQ(io::read_image(base + "_saliency.png").width, 224);
    EXPECT_EQ(io::read_image(base + "_overlay.png").width, 224);
    const Tensor map = io::read_npy(base + "_saliency.npy");
    EXPECT_EQ(map.shape(), (Shape{224, 224}));
    EXPECT_EQ(map.dtype(), DType::F32);
    double mx = 0;
    for (float v : map.to_vector<float>()) mx = std::max(mx, static_cast<double>(v));
    EXPECT_GT(mx, 0.0);
  }
  // Nothing else was left in the folder (no temporary files).
  EXPECT_EQ(std::distance(fs::directory_iterator(out), fs::directory_iterator()), 8);
}

TEST_F(Tools, VanillaFlamingoMapIsDenserOnTheBirds) {
  const std::string out = testing_util::temp_dir();
  const ToolRun r = run_tool("saliency", "--device cpu --weights " + weights_ + " --out " + out + " " +
                                         sample("n02007558_flamingo.JPEG"));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::vector<float> m = io::read_npy(out + "/n02007558_flamingo_saliency.npy").to_vector<float>();
  // The three flamingos of the centre crop lie within rows 60..200, columns 35..195.
  double in = 0, outside = 0;
  int nin = 0, nout = 0;
  for (int y = 0; y < 224; ++y)
    for (int x = 0; x < 224; ++x) {
      const double v = m[static_cast<size_t>(y * 224 + x)];
      if (y >= 60 && y < 200 && x >= 35 && x < 195) {
        in += v;
        ++nin;
      } else {
        outside += v;
        ++nout;
      }
    }
  const double ratio = (in / nin) / (outside / nout);
  std::cout << "flamingo: mean saliency inside the box / outside = " << ratio << "\n";
  EXPECT_GT(ratio, 1.5);
}

TEST_F(Tools, SaliencyTargetsChangeTheMap) {
  const std::string a = testing_util::temp_dir(), b = testing_util::temp_dir();
  const std::string img = sample("n02123045_tabby.JPEG");
  ASSERT_EQ(run_tool("saliency", "--device cpu --weights " + weights_ + " --out " + a + " --class tabby " + img).status, 0);
  const ToolRun r = run_tool("saliency", "--device cpu --weights " + weights_ + " --out " + b + " --class 850 " + img);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json_lines(r.out)[0]["class"]["name"], "teddy");
  EXPECT_EQ(json_lines(r.out)[0]["class"]["source"], "requested");
  EXPECT_NE(io::read_npy(a + "/n02123045_tabby_saliency.npy").to_vector<float>(),
            io::read_npy(b + "/n02123045_tabby_saliency.npy").to_vector<float>());
}

TEST_F(Tools, SaliencyMethodsAndClassVisualisationRun) {
  const std::string out = testing_util::temp_dir();
  for (const char* method : {"smoothgrad --samples 2", "integrated --steps 2", "guided", "gradcam"}) {
    const ToolRun r = run_tool("saliency", std::string("--device cpu --method ") + method + " --weights " + weights_ +
                                           " --out " + out + " " + sample("n02007558_flamingo.JPEG"));
    EXPECT_EQ(r.status, 0) << method << ": " << r.err;
  }
  const ToolRun v = run_tool("saliency", "--device cpu --weights " + weights_ + " --out " + out +
                                         " --visualize-class flamingo --iterations 3");
  ASSERT_EQ(v.status, 0) << v.err;
  EXPECT_EQ(io::read_image(json_lines(v.out)[0]["image"].get<std::string>()).width, 224);
}

TEST_F(Tools, SaliencyRefusesAnUnwritableOutputFolder) {
  const std::string dir = testing_util::temp_dir();
  std::ofstream(dir + "/file") << "x";
  const ToolRun r = run_tool("saliency", "--weights " + weights_ + " --out " + dir + "/file/sub " +
                                         sample("n02007558_flamingo.JPEG"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find(dir + "/file/sub"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
}
