// finetune: the dataset, loader and feature cache it is built on, then the tool end to
// end on ../shared/data/wikiart-7styles-mini with the real SqueezeNet ImageNet weights
// and with random-weight AlexNet: every output, resume (also after kill -9) equal to an
// uninterrupted run bit for bit, frozen parameters untouched, the cached-feature path
// equal to the full path, and the errors a user can run into.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "engine/data/dataset.h"
#include "engine/data/feature_cache.h"
#include "engine/data/loader.h"
#include "engine/io/h5.h"
#include "engine/io/image.h"
#include "engine/io/weights.h"
#include "nets/zoo.h"
#include "tests/random_alexnet.h"
#include "tests/test_util.h"
#include "tests/tool_run.h"
#include "tools/finetune_lib.h"

namespace fs = std::filesystem;
using namespace engine;

namespace {

using testing_util::kToolEnv;
using testing_util::slurp;
using testing_util::ToolRun;

ToolRun run_tool(const std::string& tool, const std::string& args) {
  return testing_util::run_tool_in(ENGINE_BIN_DIR, tool, args);
}

ToolRun run_finetune(const std::string& args) { return run_tool("finetune", "--device cpu " + args); }

// Every float dataset of a weights or checkpoint file, by name.
std::map<std::string, std::vector<float>> read_params(const std::string& path, const std::string& prefix = "") {
  io::H5Reader r(path);
  std::map<std::string, std::vector<float>> out;
  for (const std::string& n : r.names())
    if (r.type_of(n) == "float32" && n.compare(0, prefix.size(), prefix) == 0) out[n] = r.read(n).to_vector<float>();
  return out;
}

// A copy of an ImageFolder tree holding only the first n_train / n_test images of each
// class (as symbolic links).
std::string subset(const std::string& src, int n_train, int n_test) {
  const std::string dst = testing_util::temp_dir() + "/subset";
  for (const auto& [part, n] : {std::pair<std::string, int>{"train", n_train}, {"test", n_test}}) {
    for (const auto& cls : fs::directory_iterator(fs::path(src) / part)) {
      std::vector<fs::path> files;
      for (const auto& f : fs::directory_iterator(cls.path())) files.push_back(f.path());
      std::sort(files.begin(), files.end());
      const fs::path to = fs::path(dst) / part / cls.path().filename();
      fs::create_directories(to);
      for (int i = 0; i < n && i < static_cast<int>(files.size()); ++i)
        fs::create_symlink(fs::absolute(files[static_cast<size_t>(i)]), to / files[static_cast<size_t>(i)].filename());
    }
  }
  return dst;
}

// Rows of a CSV file, split at commas (no quoted fields in the files checked here).
std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream in(slurp(path));
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells;
    std::stringstream ls(line);
    for (std::string c; std::getline(ls, c, ',');) cells.push_back(c);
    rows.push_back(cells);
  }
  return rows;
}

std::vector<std::string> leftover_temporaries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) out.push_back(e.path().string());
  return out;
}

}  // namespace

// ---- library pieces ---------------------------------------------------------------------------

class FinetuneData : public ::testing::Test {
 protected:
  // ROOT/<class>/ with n images per class, copied from the mini set.
  static std::string flat_folder(const std::string& mini, const std::vector<std::string>& classes, int n) {
    const std::string root = testing_util::temp_dir() + "/flat";
    for (const std::string& c : classes) {
      fs::create_directories(root + "/" + c);
      int k = 0;
      for (const auto& f : fs::directory_iterator(mini + "/train/" + c)) {
        if (k == n) break;
        fs::copy_file(f.path(), root + "/" + c + "/" + f.path().filename().string());
        ++k;
      }
    }
    return root;
  }
};

TEST_F(FinetuneData, ImageFolderSortsClassesAndFilesAsTorchvision) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  const data::ImageFolder ds = data::open_image_folder(data + "/wikiart-7styles-mini");
  EXPECT_EQ(ds.layout, "train/test");
  ASSERT_EQ(ds.classes.size(), 7u);
  EXPECT_EQ(ds.classes.front(), "Art_Nouveau_Modern");
  EXPECT_EQ(ds.classes.back(), "Symbolism");
  EXPECT_TRUE(std::is_sorted(ds.classes.begin(), ds.classes.end()));
  EXPECT_EQ(ds.train.size(), 7u * 32);
  EXPECT_EQ(ds.test.size(), 7u * 8);
  for (size_t i = 1; i < ds.train.size(); ++i) {
    ASSERT_LE(ds.train[i - 1].label, ds.train[i].label);
    if (ds.train[i - 1].label == ds.train[i].label) {
      EXPECT_LT(ds.train[i - 1].path, ds.train[i].path);
    }
  }
}

TEST_F(FinetuneData, StratifiedSplitIsSeededAndKeepsEveryClass) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  const std::string root = flat_folder(data + "/wikiart-7styles-mini", {"Baroque", "Symbolism", "Expressionism"}, 10);
  data::ImageFolderOptions o;
  o.test_fraction = 0.3;
  o.seed = 5;
  const data::ImageFolder a = data::open_image_folder(root, o), b = data::open_image_folder(root, o);
  EXPECT_EQ(a.layout, "classes (split)");
  EXPECT_EQ(a.classes, (std::vector<std::string>{"Baroque", "Expressionism", "Symbolism"}));
  ASSERT_EQ(a.train.size(), 21u);
  ASSERT_EQ(a.test.size(), 9u);
  std::vector<int> per_class(3, 0);
  for (const auto& s : a.test) ++per_class[static_cast<size_t>(s.label)];
  EXPECT_EQ(per_class, (std::vector<int>{3, 3, 3}));
  for (size_t i = 0; i < a.test.size(); ++i) EXPECT_EQ(a.test[i].path, b.test[i].path);
  o.seed = 6;
  const data::ImageFolder c = data::open_image_folder(root, o);
  bool differs = false;
  for (size_t i = 0; i < a.test.size(); ++i) differs |= a.test[i].path != c.test[i].path;
  EXPECT_TRUE(differs) << "another seed should hold out other images";
  std::set<std::string> all;
  for (const auto* part : {&a.train, &a.test})
    for (const auto& s : *part) all.insert(s.path);
  EXPECT_EQ(all.size(), 30u);
}

TEST_F(FinetuneData, EmptyClassAndMissingTestClassAreErrors) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  const std::string mini = data + "/wikiart-7styles-mini";
  const std::string root = testing_util::temp_dir();
  const std::string img = mini + "/train/Baroque/" + fs::directory_iterator(mini + "/train/Baroque")->path().filename().string();
  for (const char* d : {"train/A", "train/B", "test/A", "test/B"}) fs::create_directories(root + "/" + d);
  fs::copy_file(img, root + "/train/A/1.jpg");
  fs::copy_file(img, root + "/test/A/1.jpg");
  fs::copy_file(img, root + "/test/B/1.jpg");
  std::ofstream(root + "/train/B/notes.txt") << "no images here";
  try {
    data::open_image_folder(root);
    FAIL() << "an empty class folder must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("empty class folder " + root + "/train/B"), std::string::npos) << e.what();
  }
  fs::copy_file(img, root + "/train/B/1.jpg");
  fs::remove_all(root + "/test/B");
  try {
    data::open_image_folder(root);
    FAIL() << "a test split without a class must be an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing class 'B'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(root + "/test"), std::string::npos) << e.what();
  }
  EXPECT_THROW(data::open_image_folder(root + "/nope"), Error);
}

TEST_F(FinetuneData, PermutationIsSeededAndComplete) {
  const auto a = data::permutation(1000, 42), b = data::permutation(1000, 42), c = data::permutation(1000, 43);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[static_cast<size_t>(i)], i);
  EXPECT_NE(data::derive_seed(1, {2, 3}), data::derive_seed(1, {3, 2}));
}

TEST_F(FinetuneData, LoaderBatchesDoNotDependOnThreadsAndReportBadImages) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  data::ImageFolder ds = data::open_image_folder(data + "/wikiart-7styles-mini");
  std::vector<data::Sample> samples(ds.train.begin(), ds.train.begin() + 20);
  const std::string bad = testing_util::temp_dir() + "/broken.jpg";
  std::ofstream(bad) << "\xff\xd8 not really a JPEG";
  samples[7].path = bad;
  const std::vector<int64_t> order = data::permutation(20, 9);
  // A transform that depends on the sample index, as augmentation does.
  data::Transform t = [](const io::Image& img, int64_t s) {
    Generator g(data::derive_seed(1, {static_cast<uint64_t>(s)}));
    return io::train_transform(img, g);
  };
  std::vector<std::vector<float>> reference;
  for (int workers : {0, 1, 3}) {
    data::LoaderOptions o;
    o.batch_size = 6;
    o.workers = workers;
    o.prefetch = 2;
    data::BatchLoader loader(samples, order, o, t);
    EXPECT_EQ(loader.num_batches(), 4);
    data::Batch b;
    std::vector<std::vector<float>> got;
    int failures = 0;
    int64_t k = 0;
    while (loader.next(b)) {
      EXPECT_EQ(b.index, k++);
      for (const auto& f : b.failures) {
        ++failures;
        EXPECT_EQ(f.path, bad);
        EXPECT_NE(f.reason.find("broken.jpg"), std::string::npos) << f.reason;
      }
      got.push_back(b.images.to_vector<float>());
      for (size_t i = 0; i < b.samples.size(); ++i) EXPECT_EQ(b.labels[i], samples[static_cast<size_t>(b.samples[i])].label);
    }
    EXPECT_EQ(failures, 1);
    if (reference.empty()) reference = got;
    else EXPECT_TRUE(got == reference) << "batches differ with " << workers << " workers";
  }
}

TEST_F(FinetuneData, FeatureCacheInMemoryAndOnDisk) {
  const std::string dir = testing_util::temp_dir();
  const Shape row{3, 2};
  Generator g(4);
  const Tensor values = Tensor::randn({4, 3, 2}, g);
  const std::vector<float> v = values.to_vector<float>();
  auto mem = data::FeatureCache::in_memory(5, row);
  auto file = data::FeatureCache::create_file(dir + "/c.h5", 5, row, "key-1");
  for (auto* c : {mem.get(), file.get()}) {
    c->write({4, 0, 2, 1}, values);
    c->mark_missing(3, "x.jpg: broken");
    c->finish();
    EXPECT_FALSE(c->present(3));
    const std::vector<float> got = c->gather({0, 4}).to_vector<float>();
    EXPECT_EQ(std::vector<float>(got.begin(), got.begin() + 6), std::vector<float>(v.begin() + 6, v.begin() + 12));
    EXPECT_EQ(std::vector<float>(got.begin() + 6, got.end()), std::vector<float>(v.begin(), v.begin() + 6));
    EXPECT_THROW(c->gather({3}), Error);
  }
  try {
    file->write({0}, Tensor::randn({1, 3, 2}, g));
    FAIL() << "a finished file cache must refuse writes";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/c.h5: the feature cache is finished and read-only"), std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(fs::exists(dir + "/c.h5"));
  EXPECT_TRUE(leftover_temporaries(dir).empty());
  auto again = data::FeatureCache::open_file(dir + "/c.h5", 5, row, "key-1");
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(again->gather({4, 0, 2, 1}).to_vector<float>(), v);
  ASSERT_EQ(again->missing().size(), 1u);
  EXPECT_EQ(again->missing()[0].reason, "x.jpg: broken");
  EXPECT_EQ(data::FeatureCache::open_file(dir + "/c.h5", 5, row, "key-2"), nullptr);
  EXPECT_EQ(data::FeatureCache::open_file(dir + "/c.h5", 6, row, "key-1"), nullptr);
  EXPECT_EQ(data::FeatureCache::open_file(dir + "/absent.h5", 5, row, "key-1"), nullptr);
  {
    auto unfinished = data::FeatureCache::create_file(dir + "/u.h5", 5, row, "k");
    unfinished->write({0}, Tensor::randn({1, 3, 2}, g));
  }
  EXPECT_FALSE(fs::exists(dir + "/u.h5"));
  EXPECT_TRUE(leftover_temporaries(dir).empty());
}

TEST_F(FinetuneData, CsvOutputs) {
  finetune::EpochMetrics m;
  m.epoch = 1;
  m.train_loss = 1.5;
  m.train_acc = 0.25;
  m.test_loss = 1.75;
  m.test_acc = 0.5;
  m.seconds = 2;
  m.images_per_second = 100;
  EXPECT_EQ(finetune::metrics_csv({m}),
            "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_second\n"
            "1,1.500000,0.250000,1.750000,0.500000,2.000,100.00\n");
  EXPECT_EQ(finetune::confusion_csv({"a", "b,c"}, {{1, 2}, {3, 4}}), "true\\predicted,a,\"b,c\"\na,1,2\n\"b,c\",3,4\n");
}

// ---- the tool end to end -------------------------------------------------------------------

class Finetune : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = testing_util::shared_data_dir();
    if (!data_.empty()) mini_ = data_ + "/wikiart-7styles-mini";
  }
  // Random AlexNet weights (tests/random_alexnet.h), made on first use (CTest runs each
  // test in its own process).
  static const std::string& alexnet() {
    if (alexnet_.empty()) {
      alexnet_ = testing_util::temp_dir() + "/alexnet_random.h5";
      testing_util::save_random_alexnet(alexnet_, 2024);
    }
    return alexnet_;
  }
  // The real SqueezeNet ImageNet weights converted by the project's converter.
  static const std::string& squeezenet() {
    if (squeezenet_.empty()) {
      squeezenet_ = testing_util::temp_dir() + "/squeezenet1_1.h5";
      const int rc = testing_util::run_python("weights/convert_torchvision.py",
                                              "--arch squeezenet1_1 --pth " + data_ +
                                                  "/weights/squeezenet1_1_imagenet.pth --out " + squeezenet_ + " > /dev/null");
      if (rc != 0) squeezenet_ = "(conversion failed)";
    }
    return squeezenet_;
  }
  void SetUp() override {
    std::string d;
    REQUIRE_SHARED_DATA(d);
  }
  void require_squeezenet() {
    REQUIRE_TORCH();
    ASSERT_NE(squeezenet(), "(conversion failed)") << "converting the SqueezeNet weights failed";
  }

  // Checks every output of a finished run of `epochs` epochs on K classes and returns
  // the parsed metrics.json.
  static nlohmann::json check_outputs(const std::string& out, int64_t epochs, size_t k) {
    for (const char* f : {"metrics.csv", "metrics.json", "curves.png", "confusion.csv", "confusion.png", "checkpoint.h5",
                          "final.h5"})
      EXPECT_TRUE(fs::is_regular_file(out + "/" + f)) << out << "/" << f << " is missing";
    EXPECT_TRUE(leftover_temporaries(out).empty());
    const auto csv = read_csv(out + "/metrics.csv");
    EXPECT_EQ(csv.size(), static_cast<size_t>(epochs) + 1);
    if (!csv.empty()) {
      EXPECT_EQ(csv[0], (std::vector<std::string>{"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds",
                                                   "images_per_second"}));
    }
    for (size_t r = 1; r < csv.size(); ++r) {
      EXPECT_EQ(csv[r].size(), 7u);
      EXPECT_EQ(std::stoll(csv[r][0]), static_cast<long long>(r));
      for (size_t c = 1; c < csv[r].size(); ++c) EXPECT_TRUE(std::isfinite(std::stod(csv[r][c]))) << csv[r][c];
      for (size_t c : {2u, 4u}) {
        EXPECT_GE(std::stod(csv[r][c]), 0.0);
        EXPECT_LE(std::stod(csv[r][c]), 1.0);
      }
    }
    const nlohmann::json j = nlohmann::json::parse(slurp(out + "/metrics.json"));
    EXPECT_EQ(j.at("epochs").size(), static_cast<size_t>(epochs));
    EXPECT_EQ(j.at("run").at("classes").size(), k);
    const auto conf = read_csv(out + "/confusion.csv");
    EXPECT_EQ(conf.size(), k + 1);
    int64_t total = 0;
    for (size_t r = 1; r < conf.size(); ++r) {
      EXPECT_EQ(conf[r].size(), k + 1);
      for (size_t c = 1; c < conf[r].size(); ++c) total += std::stoll(conf[r][c]);
    }
    int64_t skipped_test = 0;
    for (const auto& s : j.at("run").at("skipped_images")) skipped_test += s.get<std::string>().find("/test/") != std::string::npos;
    EXPECT_EQ(total, j.at("run").at("test_images").get<int64_t>() - skipped_test);
    const io::Image curves = io::read_image(out + "/curves.png");
    EXPECT_GT(curves.width, 600);
    EXPECT_GT(curves.height, 300);
    const io::Image confusion = io::read_image(out + "/confusion.png");
    EXPECT_GT(confusion.width, 300);
    const io::WeightsMeta meta = io::read_weights_meta(out + "/final.h5");
    EXPECT_EQ(meta.num_classes, static_cast<int64_t>(k));
    EXPECT_EQ(meta.class_names.size(), k);
    return j;
  }

  static std::vector<double> column(const nlohmann::json& metrics, const char* key) {
    std::vector<double> v;
    for (const auto& e : metrics.at("epochs")) v.push_back(e.at(key).get<double>());
    return v;
  }

  // Parameters in `a` and `b` (same names) are equal bit for bit.
  static void expect_same_params(const std::string& a, const std::string& b) {
    const auto pa = read_params(a), pb = read_params(b);
    ASSERT_EQ(pa.size(), pb.size());
    for (const auto& [name, v] : pa) {
      ASSERT_TRUE(pb.count(name)) << name;
      EXPECT_TRUE(v == pb.at(name)) << name << " differs between " << a << " and " << b;
    }
  }

  static std::string data_, mini_, alexnet_, squeezenet_;
};
std::string Finetune::data_, Finetune::mini_, Finetune::alexnet_, Finetune::squeezenet_;

TEST_F(Finetune, SqueezeNetPretrainedCase1WritesEveryOutputAndPredictLoadsIt) {
  require_squeezenet();
  const std::string out = testing_util::temp_dir() + "/run";
  const ToolRun r = run_finetune("--data " + mini_ + " --out " + out + " --weights " + squeezenet() +
                             " --epochs 3 --batch-size 16 --lr 0.01");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("best test accuracy"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("epoch 3/3"), std::string::npos) << r.err;
  const nlohmann::json j = check_outputs(out, 3, 7);
  EXPECT_NE(j.at("run").at("path").get<std::string>().find("cached features"), std::string::npos);
  const auto loss = column(j, "train_loss");
  EXPECT_LT(loss.back(), loss.front()) << "the training loss should fall";
  EXPECT_GT(column(j, "train_acc").back(), 1.5 / 7);
  // Frozen: every parameter but the new classifier.1 is bit-identical to the input.
  const auto before = read_params(squeezenet()), after = read_params(out + "/final.h5");
  int frozen = 0;
  for (const auto& [name, v] : after) {
    if (name.rfind("classifier.1.", 0) == 0) continue;
    ASSERT_TRUE(before.count(name)) << name;
    EXPECT_TRUE(v == before.at(name)) << name << " changed although frozen";
    ++frozen;
  }
  EXPECT_EQ(frozen, 50);
  // predict loads the result and names one of the seven styles.
  const ToolRun p = run_tool("predict", "--device cpu --json --topk 2 --weights " + out + "/final.h5 " + mini_ +
                                            "/test/Baroque");
  ASSERT_EQ(p.status, 0) << p.err;
  const auto classes = j.at("run").at("classes");
  const auto first = nlohmann::json::parse(p.out.substr(0, p.out.find('\n')));
  EXPECT_NE(std::find(classes.begin(), classes.end(), first["topk"][0]["name"]), classes.end()) << p.out;
}

TEST_F(Finetune, AlexNetRandomCase1AndCase2) {
  struct Case {
    const char* args;
    const char* trained_prefix;  // parameters that may change
    size_t changed_tensors;
  };
  // Random features carry little about painting styles: the run fits a small subset
  // (14 images, one batch) over 10 epochs, which shows the loss falling.
  const std::string small = subset(mini_, 2, 1);
  for (const Case& c : {Case{"--case 1 --train new --lr 0.1", "classifier.6.", 2},
                        Case{"--case 2 --train classifier --lr 0.01 --lr-backbone 0.001", "classifier.", 4}}) {
    SCOPED_TRACE(c.args);
    const std::string out = testing_util::temp_dir() + "/run";
    const ToolRun r = run_finetune("--data " + small + " --out " + out + " --weights " + alexnet() +
                                   " --epochs 10 --batch-size 14 " + c.args);
    ASSERT_EQ(r.status, 0) << r.err;
    const nlohmann::json j = check_outputs(out, 10, 7);
    const auto loss = column(j, "train_loss");
    std::cout << c.args << ": training loss " << loss.front() << " -> " << loss.back() << "\n";
    EXPECT_LT(loss.back(), loss.front()) << "the training loss should fall";
    const auto before = read_params(alexnet()), after = read_params(out + "/final.h5");
    size_t changed = 0;
    for (const auto& [name, v] : after) {
      const bool trainable = name.rfind(c.trained_prefix, 0) == 0;
      if (!trainable) {
        ASSERT_TRUE(before.count(name)) << name;
        EXPECT_TRUE(v == before.at(name)) << name << " changed although frozen";
      } else if (!before.count(name) || v != before.at(name)) {
        ++changed;
      }
    }
    EXPECT_EQ(changed, c.changed_tensors);
    // predict and saliency both load the fine-tuned file (Case 2 has a different head).
    const ToolRun p = run_tool("predict", "--device cpu --json --weights " + out + "/final.h5 " + mini_ +
                                              "/test/Symbolism");
    EXPECT_EQ(p.status, 0) << p.err;
    EXPECT_EQ(std::count(p.out.begin(), p.out.end(), '\n'), 8) << p.out;
  }
}

TEST_F(Finetune, ResumeAfterStoppingEqualsUninterrupted) {
  // Dropout is active (the model trains in train mode), StepLR decays every epoch,
  // momentum carries over: all of it has to come back from the checkpoint.
  const std::string small = subset(mini_, 12, 4);
  const std::string common = "--data " + small + " --weights " + alexnet() +
                             " --case 1 --train new --lr 0.01 --batch-size 16 --step-size 1 --gamma 0.5 --seed 7";
  const std::string straight = testing_util::temp_dir() + "/straight", stopped = testing_util::temp_dir() + "/stopped";
  ASSERT_EQ(run_finetune(common + " --epochs 3 --out " + straight).status, 0);
  const ToolRun first = run_finetune(common + " --epochs 1 --out " + stopped);
  ASSERT_EQ(first.status, 0) << first.err;
  const ToolRun again = run_finetune("--resume " + stopped + " --lr 0.1");
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.err.find("--lr cannot be combined with --resume"), std::string::npos) << again.err;
  const ToolRun resumed = run_finetune("--resume " + stopped + " --epochs 3");
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming"), std::string::npos) << resumed.err;
  expect_same_params(straight + "/final.h5", stopped + "/final.h5");
  expect_same_params(straight + "/checkpoint.h5", stopped + "/checkpoint.h5");
  const nlohmann::json a = check_outputs(straight, 3, 7), b = check_outputs(stopped, 3, 7);
  ASSERT_EQ(column(b, "train_loss").size(), 3u);
  for (const char* k : {"train_loss", "train_acc", "test_loss", "test_acc"}) EXPECT_EQ(column(a, k), column(b, k)) << k;
  // A finished run resumed again does nothing.
  const ToolRun done = run_finetune("--resume " + stopped);
  EXPECT_EQ(done.status, 0) << done.err;
  EXPECT_NE(done.out.find("already finished"), std::string::npos) << done.out;
}

TEST_F(Finetune, KilledMidEpochResumesToTheSameWeights) {
  // The full path with augmentation (background decoding, per-sample random crops) on
  // a small subset, from random SqueezeNet weights, every layer learning.
  const std::string small = subset(mini_, 4, 1);
  const std::string common = "--data " + small + " --arch squeezenet1_1 --train all --augment --epochs 3 "
                             "--batch-size 8 --lr 0.01 --lr-backbone 0.01 --seed 3 --workers 2";
  const std::string straight = testing_util::temp_dir() + "/straight", killed = testing_util::temp_dir() + "/killed";
  const ToolRun s = run_finetune(common + " --out " + straight);
  ASSERT_EQ(s.status, 0) << s.err;
  // Start the same run, wait for its first checkpoint, kill -9 it.
  const std::string cmd = "exec env " + kToolEnv + ENGINE_BIN_DIR + "/finetune --device cpu " + common + " --out " + killed +
                          " > /dev/null 2>&1";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (!fs::exists(killed + "/checkpoint.h5") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // Into the second epoch: its decoding, forward and backward are under way.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the run ended before it could be killed";
  EXPECT_FALSE(fs::exists(killed + "/final.h5"));
  const ToolRun r = run_finetune("--resume " + killed);
  ASSERT_EQ(r.status, 0) << r.err;
  expect_same_params(straight + "/final.h5", killed + "/final.h5");
  check_outputs(killed, 3, 7);
}

TEST_F(Finetune, CachedFeaturesEqualTheFullNetwork) {
  // AlexNet Case 2: dropout before fc6 and before the new layer draws from the run's
  // generator in both paths; SqueezeNet: dropout before the new 1x1 convolution.
  const std::string small = subset(mini_, 6, 2);
  for (const std::string& model : {"--weights " + alexnet() + " --case 2", std::string("--arch squeezenet1_1")}) {
    SCOPED_TRACE(model);
    const std::string common = "--data " + small + " " + model + " --train new --lr 0.01 --epochs 2 --batch-size 8 --seed 11";
    const std::string cached = testing_util::temp_dir() + "/cached", full = testing_util::temp_dir() + "/full";
    const ToolRun c = run_finetune(common + " --out " + cached);
    ASSERT_EQ(c.status, 0) << c.err;
    EXPECT_NE(c.out.find("cached features"), std::string::npos) << c.out;
    const ToolRun f = run_finetune(common + " --out " + full + " --no-feature-cache");
    ASSERT_EQ(f.status, 0) << f.err;
    EXPECT_NE(f.out.find("full network"), std::string::npos) << f.out;
    const auto a = read_params(cached + "/final.h5"), b = read_params(full + "/final.h5");
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, v] : a) {
      const auto t = [](const std::vector<float>& x) { return Tensor::from_vector({static_cast<int64_t>(x.size())}, x); };
      EXPECT_ALL_CLOSE(t(v), t(b.at(name)), 1e-4, 1e-6) << name;
    }
    const nlohmann::json ma = nlohmann::json::parse(slurp(cached + "/metrics.json")),
                         mb = nlohmann::json::parse(slurp(full + "/metrics.json"));
    for (const char* k : {"train_loss", "test_loss"}) {
      const auto x = column(ma, k), y = column(mb, k);
      for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], y[i], 1e-4 * std::abs(y[i])) << k;
    }
  }
}

TEST_F(Finetune, FeatureCacheFilesGiveTheSameBitsAndAreReused) {
  const std::string small = subset(mini_, 4, 1);
  const std::string common = "--data " + small + " --arch squeezenet1_1 --lr 0.01 --epochs 2 --batch-size 8 --seed 5";
  const std::string memory = testing_util::temp_dir() + "/memory", cache_dir = testing_util::temp_dir() + "/cache",
                    on_disk = testing_util::temp_dir() + "/disk", reused = testing_util::temp_dir() + "/reused",
                    spilled = testing_util::temp_dir() + "/spilled";
  ASSERT_EQ(run_finetune(common + " --out " + memory).status, 0);
  const ToolRun d = run_finetune(common + " --out " + on_disk + " --cache-dir " + cache_dir);
  ASSERT_EQ(d.status, 0) << d.err;
  EXPECT_EQ(std::distance(fs::directory_iterator(cache_dir), fs::directory_iterator()), 1);
  expect_same_params(memory + "/final.h5", on_disk + "/final.h5");
  const ToolRun again = run_finetune(common + " --out " + reused + " --cache-dir " + cache_dir);
  ASSERT_EQ(again.status, 0) << again.err;
  EXPECT_NE(again.err.find("reusing cached features"), std::string::npos) << again.err;
  expect_same_params(memory + "/final.h5", reused + "/final.h5");
  // Above the memory limit the cache goes to a file in the output folder.
  const ToolRun s = run_finetune(common + " --out " + spilled + " --cache-memory-mb 1");
  ASSERT_EQ(s.status, 0) << s.err;
  EXPECT_TRUE(fs::exists(spilled + "/feature_cache.h5"));
  expect_same_params(memory + "/final.h5", spilled + "/final.h5");
}

TEST_F(Finetune, UnreadableImagesAreSkippedOrRefusedWithStrict) {
  const std::string small = subset(mini_, 4, 2);
  std::ofstream(small + "/train/Baroque/zz_broken.jpg") << "this is not a JPEG";
  const std::string out = testing_util::temp_dir() + "/run", strict = testing_util::temp_dir() + "/strict";
  const std::string common = "--data " + small + " --weights " + alexnet() + " --epochs 1 --batch-size 8";
  const ToolRun r = run_finetune(common + " --out " + out);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("zz_broken.jpg"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("unreadable and skipped: 1"), std::string::npos) << r.out;
  const nlohmann::json j = check_outputs(out, 1, 7);
  EXPECT_EQ(j.at("run").at("skipped_images").size(), 1u);
  const ToolRun s = run_finetune(common + " --out " + strict + " --strict");
  EXPECT_EQ(s.status, 1);
  EXPECT_NE(s.err.find("zz_broken.jpg"), std::string::npos) << s.err;
  EXPECT_FALSE(fs::exists(strict)) << "a failed run leaves no output folder";
}

TEST_F(Finetune, NonFiniteLossStopsTheRun) {
  const std::string small = subset(mini_, 4, 1);
  const std::string out = testing_util::temp_dir() + "/run";
  const ToolRun r = run_finetune("--data " + small + " --weights " + alexnet() + " --epochs 2 --batch-size 4 --lr 1e30 --out " + out);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("the training loss became"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("lower --lr"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out + "/final.h5"));
}

TEST_F(Finetune, BadArgumentsAndFoldersGiveOneClearError) {
  const std::string tmp = testing_util::temp_dir();
  std::ofstream(tmp + "/file") << "x";
  const std::string ok = "--data " + mini_ + " --arch squeezenet1_1 --epochs 1";
  struct Bad {
    std::string args, expect;
  };
  const std::vector<Bad> cases = {
      {"--data " + tmp + "/nowhere --arch alexnet --out " + tmp + "/o1", tmp + "/nowhere: no such folder"},
      {ok + " --out " + tmp + "/file/sub", tmp + "/file/sub"},
      {ok + " --out " + tmp + "/o2 --case 3", "--case must be 1 or 2"},
      {ok + " --out " + tmp + "/o3 --train everything", "--train must be new, classifier or all"},
      {"--data " + mini_ + " --arch squeezenet1_1 --case 2 --out " + tmp + "/o4", "--case 2 is defined for AlexNet only"},
      {ok + " --out " + tmp + "/o5 --lr -1", "--lr must be a positive number"},
      {ok + " --out " + tmp + "/o6 --batch-size 0", "--batch-size"},
      {ok + " --out " + tmp + "/o7 --no-such-option", "no-such-option"},
      {"--data " + mini_ + " --out " + tmp + "/o8", "--arch is required"},
      {"--data " + mini_ + " --weights " + tmp + "/file --out " + tmp + "/o9", tmp + "/file"},
      {"--resume " + tmp + "/o10", tmp + "/o10"},
  };
  for (const Bad& b : cases) {
    const ToolRun r = run_finetune(b.args);
    EXPECT_EQ(r.status, 1) << b.args << "\n" << r.err;
    EXPECT_NE(r.err.find(b.expect), std::string::npos) << b.args << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), r.err.find("--help") == std::string::npos ? 1 : 2) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
  for (int i = 1; i <= 10; ++i) EXPECT_FALSE(fs::exists(tmp + "/o" + std::to_string(i))) << "o" << i;
  // An output folder that already holds a run is not overwritten.
  const std::string out = tmp + "/done";
  fs::create_directories(out);
  std::ofstream(out + "/checkpoint.h5") << "x";
  const ToolRun r = run_finetune(ok + " --out " + out);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--resume " + out), std::string::npos) << r.err;
}
