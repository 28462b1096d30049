// AlexNet and SqueezeNet 1.1: torchvision's structure and names, head surgery, the HDF5
// weights layout (round trip, strict and non-strict loading, bad files), and parity
// with PyTorch end to end (logits, loss, every parameter gradient, the input gradient).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include <hdf5.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "engine/io/h5.h"
#include "engine/io/weights.h"
#include "kernels/conv.h"
#include "nets/alexnet.h"
#include "nets/squeezenet.h"
#include "nets/zoo.h"
#include "tests/test_util.h"

using namespace engine;
namespace fs = std::filesystem;

namespace {

std::vector<std::pair<std::string, Shape>> names_and_shapes(const nn::Module& m) {
  std::vector<std::pair<std::string, Shape>> out;
  for (const auto& [n, p] : m.named_parameters()) out.emplace_back(n, p.shape());
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- structure ------------------------------------------------------------------------

TEST(AlexNet, ParameterNamesAndShapesAreTorchvisions) {
  Generator g(1);
  nets::AlexNet net(1000, 0.5, &g);
  const std::vector<std::pair<std::string, Shape>> expected = {
      {"features.0.weight", {64, 3, 11, 11}},   {"features.0.bias", {64}},
      {"features.3.weight", {192, 64, 5, 5}},   {"features.3.bias", {192}},
      {"features.6.weight", {384, 192, 3, 3}},  {"features.6.bias", {384}},
      {"features.8.weight", {256, 384, 3, 3}},  {"features.8.bias", {256}},
      {"features.10.weight", {256, 256, 3, 3}}, {"features.10.bias", {256}},
      {"classifier.1.weight", {4096, 9216}},    {"classifier.1.bias", {4096}},
      {"classifier.4.weight", {4096, 4096}},    {"classifier.4.bias", {4096}},
      {"classifier.6.weight", {1000, 4096}},    {"classifier.6.bias", {1000}}};
  EXPECT_EQ(names_and_shapes(net), expected);
}

TEST(AlexNet, OutputShapeForAnyClassCountAndInputSize) {
  Generator g(2), d(3);
  nets::AlexNet net(7, 0.5, &g, &d);
  net.eval();
  NoGradGuard ng;
  EXPECT_EQ(net(testing_util::randn({2, 3, 224, 224}, 4, DType::F32)).shape(), (Shape{2, 7}));
  EXPECT_EQ(net(testing_util::randn({1, 3, 99, 131}, 5, DType::F32)).shape(), (Shape{1, 7}));
}

// An empty batch gives an empty output, without a graph (the blocked chain, oneDNN's
// matmul) and with one, through the backward pass.
TEST(AlexNet, EmptyBatchGivesAnEmptyOutput) {
  Generator g(2), d(3);
  nets::AlexNet net(7, 0.5, &g, &d);
  net.eval();
  {
    NoGradGuard ng;
    EXPECT_EQ(net(Tensor::zeros({0, 3, 224, 224})).shape(), (Shape{0, 7}));
  }
  net.train();
  const Tensor x = Tensor::zeros({0, 3, 224, 224}).requires_grad_();
  const Tensor y = net(x);
  EXPECT_EQ(y.shape(), (Shape{0, 7}));
  sum(y).backward();
  EXPECT_EQ(x.grad().shape(), x.shape());
  EXPECT_EQ(net.parameter("classifier.6.weight").grad().shape(), (Shape{7, 4096}));
}

TEST(SqueezeNet, ParameterNamesAndShapesAreTorchvisions) {
  Generator g(6);
  nets::SqueezeNet net(1000, 0.5, &g);
  const auto ns = names_and_shapes(net);
  ASSERT_EQ(ns.size(), 52u);
  EXPECT_EQ(ns[0], (std::pair<std::string, Shape>{"features.0.weight", {64, 3, 3, 3}}));
  EXPECT_EQ(ns[2], (std::pair<std::string, Shape>{"features.3.squeeze.weight", {16, 64, 1, 1}}));
  EXPECT_EQ(ns[4], (std::pair<std::string, Shape>{"features.3.expand1x1.weight", {64, 16, 1, 1}}));
  EXPECT_EQ(ns[6], (std::pair<std::string, Shape>{"features.3.expand3x3.weight", {64, 16, 3, 3}}));
  EXPECT_EQ(ns[48], (std::pair<std::string, Shape>{"features.12.expand3x3.weight", {256, 64, 3, 3}}));
  EXPECT_EQ(ns[50], (std::pair<std::string, Shape>{"classifier.1.weight", {1000, 512, 1, 1}}));
  NoGradGuard ng;
  net.eval();
  EXPECT_EQ(net(testing_util::randn({2, 3, 224, 224}, 7, DType::F32)).shape(), (Shape{2, 1000}));
}

TEST(Surgery, AlexNetCase1ReplacesTheLastLayer) {
  Generator g(8);
  auto net = nets::make_model(nets::Arch::AlexNet, 1000, &g);
  const auto before = names_and_shapes(*net);
  const auto fresh = nets::replace_head(*net, nets::Arch::AlexNet, 1, 10, &g);
  EXPECT_EQ(fresh, (std::vector<std::string>{"classifier.6.weight", "classifier.6.bias"}));
  auto after = names_and_shapes(*net);
  auto expected = before;
  expected[14].second = {10, 4096};
  expected[15].second = {10};
  EXPECT_EQ(after, expected);
}

TEST(Surgery, AlexNetCase2ReplacesTheLastTwoWithOne) {
  Generator g(9), d(10);
  auto net = nets::make_model(nets::Arch::AlexNet, 1000, &g, &d);
  const Tensor fc6 = net->parameter("classifier.1.weight");
  const auto fresh = nets::replace_head(*net, nets::Arch::AlexNet, 2, 10, &g);
  EXPECT_EQ(fresh, (std::vector<std::string>{"classifier.4.weight", "classifier.4.bias"}));
  auto ns = names_and_shapes(*net);
  ASSERT_EQ(ns.size(), 14u);
  EXPECT_EQ(ns[10], (std::pair<std::string, Shape>{"classifier.1.weight", {4096, 9216}}));
  EXPECT_EQ(ns[12], (std::pair<std::string, Shape>{"classifier.4.weight", {10, 4096}}));
  EXPECT_EQ(ns[13], (std::pair<std::string, Shape>{"classifier.4.bias", {10}}));
  EXPECT_TRUE(net->parameter("classifier.1.weight").same(fc6));  // fc6 kept, not copied
  const std::string desc = net->describe();
  EXPECT_NE(desc.find("(4): Linear(in_features=4096, out_features=10)"), std::string::npos) << desc;
  EXPECT_NE(desc.find("(3): Dropout"), std::string::npos) << desc;
  NoGradGuard ng;
  net->eval();
  EXPECT_EQ((*net)(testing_util::randn({2, 3, 100, 100}, 11, DType::F32)).shape(), (Shape{2, 10}));
  EXPECT_THROW(nets::replace_head(*nets::make_model(nets::Arch::SqueezeNet1_1), nets::Arch::SqueezeNet1_1, 2, 10),
               Error);
}

TEST(Surgery, SqueezeNetReplacesTheFinalConvolution) {
  Generator g(12);
  auto net = nets::make_model(nets::Arch::SqueezeNet1_1, 1000, &g);
  nets::replace_head(*net, nets::Arch::SqueezeNet1_1, 1, 7, &g);
  EXPECT_EQ(net->parameter("classifier.1.weight").shape(), (Shape{7, 512, 1, 1}));
  NoGradGuard ng;
  net->eval();
  EXPECT_EQ((*net)(testing_util::randn({1, 3, 224, 224}, 13, DType::F32)).shape(), (Shape{1, 7}));
}

TEST(Surgery, NamesAndShapesEqualTorchvisionSurgery) {
  REQUIRE_TORCH();
  const std::string dir = testing_util::temp_dir();
  ASSERT_EQ(testing_util::run_reference_script("net_reference.py", "surgery --classes 7 --out " + dir + "/s.json"), 0);
  std::ifstream f(dir + "/s.json");
  const nlohmann::json ref = nlohmann::json::parse(f);
  auto as_json = [](const nn::Module& m) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [n, p] : m.named_parameters()) out.push_back({n, p.shape()});
    return out;
  };
  const std::pair<const char*, std::pair<nets::Arch, int>> cases[] = {
      {"case1", {nets::Arch::AlexNet, 1}}, {"case2", {nets::Arch::AlexNet, 2}}, {"squeezenet", {nets::Arch::SqueezeNet1_1, 1}}};
  for (const auto& [key, c] : cases) {
    auto model = nets::make_model(c.first, 1000);
    nets::replace_head(*model, c.first, c.second, 7);
    EXPECT_EQ(as_json(*model), ref[key]) << key;
  }
}

TEST(Surgery, NonStrictLoadIntoAlexNetCases) {
  const std::string dir = testing_util::temp_dir();
  Generator g(25);
  nets::AlexNet pretrained(1000, 0.5, &g);
  io::WeightsMeta meta;
  meta.architecture = "alexnet";
  meta.num_classes = 1000;
  io::save_weights(pretrained, dir + "/alexnet.h5", meta);
  for (int which : {1, 2}) {
    Generator init(26), head(27), same(27);
    auto model = nets::make_model(nets::Arch::AlexNet, 1000, &init);
    const auto fresh = nets::replace_head(*model, nets::Arch::AlexNet, which, 7, &head);
    io::LoadOptions opt;
    opt.strict = false;
    opt.skip = fresh;
    io::load_weights(*model, dir + "/alexnet.h5", opt);
    nn::Linear expected(4096, 7, true, &same);
    EXPECT_EQ(model->parameter(fresh[0]).to_vector<float>(), expected.weight().to_vector<float>()) << which;
    EXPECT_EQ(model->parameter(fresh[1]).to_vector<float>(), expected.bias().to_vector<float>()) << which;
    for (const auto& [n, p] : model->named_parameters()) {
      if (n == fresh[0] || n == fresh[1]) continue;
      EXPECT_EQ(p.to_vector<float>(), pretrained.parameter(n).to_vector<float>()) << "case " << which << ": " << n;
    }
  }
}

// ---- weights files ------------------------------------------------------------------

class WeightsFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing_util::temp_dir();
    Generator g(20);
    net_ = nets::make_model(nets::Arch::SqueezeNet1_1, 1000, &g);
    meta_.architecture = "squeezenet1_1";
    meta_.num_classes = 1000;
    meta_.source = "seeded test model";
    for (int i = 0; i < 1000; ++i) meta_.class_names.push_back("class " + std::to_string(i));
    good_ = dir_ + "/good.h5";
    io::save_weights(*net_, good_, meta_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A copy of the good file with its datasets changed by `edit` (name -> tensor or skip).
  std::string variant(const std::string& name, const std::function<Tensor(const std::string&, const Tensor&)>& edit,
                      const std::string& arch = "squeezenet1_1") {
    const std::string path = dir_ + "/" + name + ".h5";
    io::H5Writer w(path);
    w.set_attr("format", "alexnet-engine-weights");
    w.set_attr("format_version", int64_t{1});
    w.set_attr("architecture", arch);
    w.set_attr("num_classes", int64_t{1000});
    w.set_attr("source", "variant");
    for (const auto& [n, p] : net_->named_parameters()) {
      Tensor t = edit(n, p.detach());
      if (t.defined()) w.write(n, t);
    }
    w.commit();
    return path;
  }

  std::string dir_, good_;
  std::shared_ptr<nn::Module> net_;
  io::WeightsMeta meta_;
};

TEST_F(WeightsFile, RoundTripIsExactAndKeepsMetadata) {
  Generator g(21);
  auto other = nets::make_model(nets::Arch::SqueezeNet1_1, 1000, &g);
  io::LoadOptions opt;
  opt.expect_architecture = "squeezenet1_1";
  const io::WeightsMeta m = io::load_weights(*other, good_, opt);
  EXPECT_EQ(m.architecture, "squeezenet1_1");
  EXPECT_EQ(m.num_classes, 1000);
  EXPECT_EQ(m.source, "seeded test model");
  EXPECT_EQ(m.class_names, meta_.class_names);
  const auto a = net_->named_parameters(), b = other->named_parameters();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].second.to_vector<float>(), b[i].second.to_vector<float>()) << a[i].first;
  EXPECT_FALSE(fs::exists(good_ + ".tmp-" + std::to_string(::getpid())));
}

TEST_F(WeightsFile, NonStrictLoadKeepsTheNewLayerAtItsSeededInit) {
  Generator g(22);
  auto model = nets::make_model(nets::Arch::SqueezeNet1_1, 1000, &g);
  Generator head_gen(23), same_gen(23);
  const auto fresh = nets::replace_head(*model, nets::Arch::SqueezeNet1_1, 1, 7, &head_gen);
  EXPECT_THROW(io::load_weights(*model, good_), Error);  // strict: the head does not match
  io::LoadOptions opt;
  opt.strict = false;
  opt.skip = fresh;
  io::load_weights(*model, good_, opt);
  nn::Conv2d expected_head(512, 7, 1, 1, 0, true, &same_gen);
  EXPECT_EQ(model->parameter("classifier.1.weight").to_vector<float>(), expected_head.weight().to_vector<float>());
  EXPECT_EQ(model->parameter("classifier.1.bias").to_vector<float>(), expected_head.bias().to_vector<float>());
  for (const auto& [n, p] : net_->named_parameters())
    if (n.rfind("classifier.1.", 0) != 0) {
      EXPECT_EQ(model->parameter(n).to_vector<float>(), p.to_vector<float>()) << n;
    }
}

TEST_F(WeightsFile, NotHdf5) {
  const std::string path = dir_ + "/text.h5";
  std::ofstream(path) << "this is not an HDF5 file\n";
  const std::string e = error_of([&] { io::load_weights(*net_, path); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_NE(e.find("not an HDF5 file"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { io::load_weights(*net_, dir_ + "/absent.h5"); }).find("no such file"), std::string::npos);
}

TEST_F(WeightsFile, Truncated) {
  const std::string path = dir_ + "/truncated.h5";
  fs::copy_file(good_, path);
  fs::resize_file(path, fs::file_size(path) / 2);
  const std::string e = error_of([&] { io::load_weights(*net_, path); });
  EXPECT_NE(e.find(path), std::string::npos) << e;
  EXPECT_FALSE(e.empty());
}

TEST_F(WeightsFile, MissingDatasetIsListed) {
  const std::string path = variant("missing", [](const std::string& n, const Tensor& t) {
    return n == "features.3.squeeze.weight" ? Tensor() : t;
  });
  const std::string e = error_of([&] { io::load_weights(*net_, path); });
  EXPECT_NE(e.find("missing keys (1): features.3.squeeze.weight"), std::string::npos) << e;
}

TEST_F(WeightsFile, WrongShapeAndDtypeAreListedTogether) {
  const std::string path = variant("shape_dtype", [](const std::string& n, const Tensor& t) {
    if (n == "features.0.bias") return Tensor::zeros({65});
    if (n == "classifier.1.bias") return t.to(DType::F64);
    return t;
  });
  const std::string e = error_of([&] { io::load_weights(*net_, path); });
  EXPECT_NE(e.find("features.0.bias (file: float32 [65], model: float32 [64])"), std::string::npos) << e;
  EXPECT_NE(e.find("classifier.1.bias (file: float64 [1000]"), std::string::npos) << e;
  EXPECT_NE(e.find("shape or dtype mismatches (2)"), std::string::npos) << e;
}

TEST_F(WeightsFile, UnexpectedKeyAndWrongArchitecture) {
  Generator g(24);
  nets::AlexNet alex(1000, 0.5, &g);
  const std::string e = error_of([&] {
    io::LoadOptions opt;
    opt.expect_architecture = "alexnet";
    io::load_weights(alex, good_, opt);
  });
  EXPECT_NE(e.find("weights are for architecture 'squeezenet1_1', but the model is 'alexnet'"), std::string::npos) << e;
  const std::string e2 = error_of([&] { io::load_weights(alex, good_); });
  // Names the two layouts share (features.0, classifier.1) differ in shape.
  EXPECT_NE(e2.find("missing keys (12): features.3.weight"), std::string::npos) << e2;
  EXPECT_NE(e2.find("unexpected keys (48)"), std::string::npos) << e2;
  EXPECT_NE(e2.find("features.0.weight (file: float32 [64, 3, 3, 3], model: float32 [64, 3, 11, 11])"),
            std::string::npos) << e2;
}

// Bytes that crash libhdf5 1.10 itself (the `format` attribute's string names a heap
// object that does not exist) are an engine::Error naming the file: the reader reads
// the file in a child process first, so the crash ends the child, not this process.
// With ENGINE_H5_ISOLATION=0 this test dies with the crash.
TEST_F(WeightsFile, BytesThatCrashTheHdf5LibraryAreAnError) {
  std::ifstream in(good_, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(testing_util::break_string_heap_id(bytes, "alexnet-engine-weights"));
  const std::string path = dir_ + "/crash.h5";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                              static_cast<std::streamsize>(bytes.size()));
  const std::string e = error_of([&] { io::load_weights(*net_, path); });
  EXPECT_EQ(e.rfind(path + ": corrupt HDF5 file (the HDF5 library failed while reading it: ", 0), 0u) << e;
  // The reader is usable again afterwards.
  EXPECT_EQ(io::read_weights_meta(good_).architecture, "squeezenet1_1");
}

// Bytes on which libhdf5 1.10 loops forever: a global heap collection whose free-space
// entry has size 0 makes H5HG__cache_heap_deserialize stop advancing. libhdf5 ignores
// the three reserved bytes of the collection's header; with one of them set, the
// reader's walk of the collections must still find it, and refuse the file at once
// (without it, only the child's time limit would stop the loop, after 60 s).
TEST_F(WeightsFile, HangingGlobalHeapWithReservedBytesSetIsRefusedAtOnce) {
  // The metadata strings only (no class names): one collection, with free space.
  std::ifstream in(variant("strings", [](const std::string&, const Tensor& t) { return t; }), std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const int64_t found = testing_util::zero_global_heap_free_space(bytes);
  ASSERT_GE(found, 0) << "no global heap collection with free space";
  const size_t base = static_cast<size_t>(found);
  bytes[base + 5] = 8;  // a reserved byte of the collection's header
  const std::string path = dir_ + "/hang.h5";
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                              static_cast<std::streamsize>(bytes.size()));
  const auto start = std::chrono::steady_clock::now();
  const std::string e = error_of([&] { io::load_weights(*net_, path); });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(e.rfind(path + ": corrupt global heap at byte " + std::to_string(base) + ": object 0 of 0 bytes", 0), 0u)
      << e;
  EXPECT_LT(seconds, 10.0);
}

// A class name whose stored length is larger than the file is refused before libhdf5
// reads it (libhdf5 1.10 would first allocate and clear that many bytes), quickly.
TEST_F(WeightsFile, StringLongerThanTheFileIsRefusedBeforeReading) {
  haddr_t at = HADDR_UNDEF;
  {
    const hid_t f = H5Fopen(good_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    const hid_t ds = H5Dopen2(f, "class_names", H5P_DEFAULT);
    ASSERT_GE(ds, 0);
    at = H5Dget_offset(ds);
    H5Dclose(ds);
    H5Fclose(f);
  }
  ASSERT_NE(at, HADDR_UNDEF);
  std::ifstream in(good_, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t entry = 16;  // the length (4 bytes), the heap's address (8), the object's index (4)
  const uint32_t length = 0x7fffff00u;
  std::memcpy(bytes.data() + at + 3 * entry, &length, sizeof(length));  // class 3
  const std::string path = dir_ + "/long_string.h5";
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const auto start = std::chrono::steady_clock::now();
  const std::string e = error_of([&] { io::read_weights_meta(path); });
  EXPECT_EQ(e, path + ": dataset 'class_names': string 3 claims 2147483392 bytes, more than the file holds (corrupt file)");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
  // The other datasets still read.
  EXPECT_EQ(io::H5Reader(path).read("features.0.bias").to_vector<float>(),
            net_->parameter("features.0.bias").to_vector<float>());
}

// A child that has not finished in its time limit is killed and the file refused. A
// limit of 0 (ENGINE_H5_TIME_LIMIT=0) takes that path for any file.
TEST_F(WeightsFile, ReadingThatDoesNotFinishInTimeIsRefused) {
  struct Env {
    Env() { ::setenv("ENGINE_H5_TIME_LIMIT", "0", 1); }
    ~Env() { ::unsetenv("ENGINE_H5_TIME_LIMIT"); }
  } env;
  EXPECT_EQ(error_of([&] { io::load_weights(*net_, good_); }),
            good_ + ": corrupt HDF5 file (reading it did not finish in 0 s)");
}

// The reader reads the file once, into memory: what was checked is what is read, even
// when the file is replaced while the reader is open.
TEST_F(WeightsFile, ReaderReadsTheBytesItChecked) {
  const std::string path = dir_ + "/replaced.h5";
  fs::copy_file(good_, path);
  const io::H5Reader r(path);
  std::ofstream(path, std::ios::trunc) << "replaced by something else\n";
  EXPECT_EQ(r.attr("architecture"), "squeezenet1_1");
  EXPECT_EQ(r.read("classifier.1.bias").to_vector<float>(), net_->parameter("classifier.1.bias").to_vector<float>());
  EXPECT_EQ(r.read_strings("class_names"), meta_.class_names);
}

// Empty datasets and a scalar read back as they were written (the reader answers from
// what it read at construction, values included).
TEST_F(WeightsFile, EmptyAndScalarDatasetsReadBack) {
  const std::string path = dir_ + "/small.h5";
  {
    io::H5Writer w(path);
    w.write("empty", Tensor::zeros({0, 3}));
    w.write("scalar", Tensor::full({}, 2.5, DType::F64));
    w.write_ints("no_ints", {}, {0});
    w.write_strings("no_strings", {});
    w.commit();
  }
  const io::H5Reader r(path);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"empty", "no_ints", "no_strings", "scalar"}));
  EXPECT_EQ(r.read("empty").shape(), (Shape{0, 3}));
  const Tensor scalar = r.read("scalar");
  EXPECT_EQ(scalar.shape(), Shape{});
  EXPECT_EQ(scalar.dtype(), DType::F64);
  EXPECT_EQ(scalar.to_vector<double>(), std::vector<double>{2.5});
  EXPECT_TRUE(r.read_ints("no_ints").empty());
  EXPECT_TRUE(r.read_strings("no_strings").empty());
  EXPECT_EQ(r.type_of("no_ints"), "int64");
}

// ENGINE_H5_ISOLATION=0 reads without the child process; good files read the same.
TEST_F(WeightsFile, IsolationCanBeTurnedOff) {
  struct Env {
    Env() { ::setenv("ENGINE_H5_ISOLATION", "0", 1); }
    ~Env() { ::unsetenv("ENGINE_H5_ISOLATION"); }
  } env;
  Generator g(25);
  auto other = nets::make_model(nets::Arch::SqueezeNet1_1, 1000, &g);
  const io::WeightsMeta m = io::load_weights(*other, good_);
  EXPECT_EQ(m.class_names, meta_.class_names);
  EXPECT_EQ(other->parameter("features.0.weight").to_vector<float>(),
            net_->parameter("features.0.weight").to_vector<float>());
}

// Datasets whose data is not in the file are refused: a soft or an external link, and a
// dataset whose values live in another file (external storage) would make libhdf5 read
// files that nothing checked. They are not listed among the datasets either.
TEST_F(WeightsFile, DataOutsideTheFileIsRefused) {
  const std::string path = dir_ + "/links.h5", outside = dir_ + "/outside.bin";
  std::ofstream(outside, std::ios::binary) << std::string(64, '\x01');
  {
    const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    const hsize_t n = 4;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const float values[4] = {1.5f, -2.0f, 0.25f, 8.0f};
    const hid_t inside = H5Dcreate2(f, "inside", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(inside, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
    H5Dclose(inside);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_external(dcpl, outside.c_str(), 0, 16);
    H5Dclose(H5Dcreate2(f, "external_storage", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5Pclose(dcpl);
    H5Lcreate_soft("/inside", f, "soft_link", H5P_DEFAULT, H5P_DEFAULT);
    H5Lcreate_external(good_.c_str(), "/features.0.bias", f, "external_link", H5P_DEFAULT, H5P_DEFAULT);
    H5Sclose(space);
    H5Fclose(f);
  }
  const io::H5Reader r(path);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"external_storage", "inside"}));
  EXPECT_EQ(r.read("inside").to_vector<float>(), (std::vector<float>{1.5f, -2.0f, 0.25f, 8.0f}));
  const std::string storage = error_of([&] { r.read("external_storage"); });
  EXPECT_NE(storage.find(path + ": dataset 'external_storage' keeps its data in other files"), std::string::npos)
      << storage;
  for (const std::string link : {"soft_link", "external_link"}) {
    const std::string e = error_of([&] { r.shape_of(link); });
    EXPECT_NE(e.find("dataset '" + link + "' is a soft or external link"), std::string::npos) << e;
  }
}

// Values of every integer width and signedness and of both IEEE float widths, in both
// byte orders, contiguous and compressed, read back as written: the reader takes them as
// stored and swaps and widens them itself. An unsigned 64-bit value above the int64 range
// reads as the int64 maximum (as libhdf5's own conversion clamps it).
TEST_F(WeightsFile, EveryByteOrderAndWidthReadsAsWritten) {
  const std::string path = dir_ + "/orders.h5";
  const hsize_t n = 37;
  std::mt19937_64 rng(41);
  std::vector<int64_t> ints(n);
  for (auto& v : ints) v = static_cast<int64_t>(rng());
  ints[0] = std::numeric_limits<int64_t>::min();
  ints[1] = std::numeric_limits<int64_t>::max();
  ints[2] = -1;
  ints[3] = 0;
  std::vector<uint64_t> big(n);
  for (auto& v : big) v = rng();
  big[0] = std::numeric_limits<uint64_t>::max();
  big[1] = uint64_t{1} << 63;
  big[2] = (uint64_t{1} << 63) - 1;
  std::vector<double> reals(n);
  std::normal_distribution<double> normal(0.0, 3.0);
  for (auto& v : reals) v = normal(rng);
  reals[0] = std::numeric_limits<double>::denorm_min();
  reals[1] = -0.0;
  std::vector<float> floats(reals.begin(), reals.end());
  floats[0] = std::numeric_limits<float>::denorm_min();

  struct IntCase {
    const char* name;
    hid_t type;
    int bits;
    bool is_signed;
  };
  const IntCase int_cases[] = {{"i8", H5T_STD_I8LE, 8, true},      {"u8", H5T_STD_U8BE, 8, false},
                               {"i16be", H5T_STD_I16BE, 16, true}, {"u16le", H5T_STD_U16LE, 16, false},
                               {"i32be", H5T_STD_I32BE, 32, true}, {"u32be", H5T_STD_U32BE, 32, false},
                               {"i64be", H5T_STD_I64BE, 64, true}, {"i64le", H5T_STD_I64LE, 64, true}};
  // What a value of the type holds: the low bits of ints, sign- or zero-extended.
  auto narrowed = [&](const IntCase& c) {
    std::vector<int64_t> out;
    for (int64_t v : ints) {
      const uint64_t u = static_cast<uint64_t>(v);
      if (c.bits == 64) {
        out.push_back(v);
      } else if (c.is_signed) {
        out.push_back(static_cast<int64_t>(u << (64 - c.bits)) >> (64 - c.bits));
      } else {
        out.push_back(static_cast<int64_t>(u & ((uint64_t{1} << c.bits) - 1)));
      }
    }
    return out;
  };
  {
    const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hsize_t chunk = 8;
    const hid_t deflate = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(deflate, 1, &chunk);
    H5Pset_deflate(deflate, 6);
    auto write = [&](const char* name, hid_t type, hid_t dcpl, hid_t mem, const void* values) {
      const hid_t ds = H5Dcreate2(f, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
      ASSERT_GE(ds, 0) << name;
      ASSERT_GE(H5Dwrite(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, values), 0) << name;
      H5Dclose(ds);
    };
    for (const IntCase& c : int_cases) {
      const std::vector<int64_t> v = narrowed(c);
      if (c.is_signed) {
        write(c.name, c.type, H5P_DEFAULT, H5T_NATIVE_INT64, v.data());
      } else {
        const std::vector<uint64_t> u(v.begin(), v.end());
        write(c.name, c.type, H5P_DEFAULT, H5T_NATIVE_UINT64, u.data());
      }
    }
    write("u64be", H5T_STD_U64BE, H5P_DEFAULT, H5T_NATIVE_UINT64, big.data());
    write("i32be_deflate", H5T_STD_I32BE, deflate, H5T_NATIVE_INT64, narrowed(int_cases[4]).data());
    write("f32be", H5T_IEEE_F32BE, H5P_DEFAULT, H5T_NATIVE_FLOAT, floats.data());
    write("f32le", H5T_IEEE_F32LE, H5P_DEFAULT, H5T_NATIVE_FLOAT, floats.data());
    write("f64be", H5T_IEEE_F64BE, H5P_DEFAULT, H5T_NATIVE_DOUBLE, reals.data());
    write("f64be_deflate", H5T_IEEE_F64BE, deflate, H5T_NATIVE_DOUBLE, reals.data());
    H5Pclose(deflate);
    H5Sclose(space);
    H5Fclose(f);
  }
  const io::H5Reader r(path);
  for (const IntCase& c : int_cases) EXPECT_EQ(r.read_ints(c.name), narrowed(c)) << c.name;
  EXPECT_EQ(r.read_ints("i32be_deflate"), narrowed(int_cases[4]));
  std::vector<int64_t> clamped;
  for (uint64_t u : big)
    clamped.push_back(u >= uint64_t{1} << 63 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(u));
  EXPECT_EQ(r.read_ints("u64be"), clamped);
  for (const char* name : {"f32be", "f32le"}) {
    const Tensor t = r.read(name);
    EXPECT_EQ(t.dtype(), DType::F32) << name;
    EXPECT_EQ(t.to_vector<float>(), floats) << name;
  }
  for (const char* name : {"f64be", "f64be_deflate"}) {
    const Tensor t = r.read(name);
    EXPECT_EQ(t.dtype(), DType::F64) << name;
    EXPECT_EQ(t.to_vector<double>(), reals) << name;
  }
  EXPECT_EQ(r.type_of("u16le"), "uint16");
  EXPECT_EQ(r.type_of("f64be"), "float64");
}

TEST_F(WeightsFile, SaveToAnUnwritableFolderLeavesNothing) {
  EXPECT_NE(error_of([&] { io::save_weights(*net_, dir_ + "/no/such/folder/w.h5", meta_); }).find("cannot create"),
            std::string::npos);
}

// ---- parity with PyTorch ----------------------------------------------------------------

class Parity : public ::testing::Test {
 protected:
  struct Result {
    Tensor logits, loss, input_grad;
    std::vector<std::pair<std::string, Tensor>> param_grads;
    Tensor logits_no_graph;  // the forward pass without a graph (fused layers in oneDNN's layout)
  };

  // Runs our model on the batch in eval mode and backpropagates the mean cross-entropy;
  // and runs the forward pass again without a graph.
  static Result run_ours(nn::Module& model, const Tensor& x, const std::vector<int64_t>& targets) {
    model.eval();
    model.zero_grad();
    Result r;
    {
      NoGradGuard ng;
      r.logits_no_graph = model(x);
    }
    Tensor xin = x.detach().requires_grad_();
    r.logits = model(xin);
    r.loss = cross_entropy(r.logits, targets);
    r.loss.backward();
    r.input_grad = xin.grad();
    for (const auto& [n, p] : model.named_parameters()) r.param_grads.emplace_back(n, p.grad());
    return r;
  }

  static void compare(const Result& ours, const std::string& ref_path) {
    io::H5Reader ref(ref_path);
    const double logit_err = testing_util::rel_error(ours.logits, ref.read("logits"));
    EXPECT_LT(logit_err, 1e-5) << "logits";
    const double no_graph_err = testing_util::rel_error(ours.logits_no_graph, ref.read("logits"));
    EXPECT_LT(no_graph_err, 1e-5) << "logits without a graph";
    EXPECT_NEAR(ours.loss.item(), ref.read("loss").item(), 1e-5 * std::fabs(ref.read("loss").item()));
    EXPECT_LT(testing_util::rel_error(ours.input_grad, ref.read("input_grad")), 1e-4) << "input gradient";
    double worst = 0;
    std::string worst_name;
    for (const auto& [n, g] : ours.param_grads) {
      ASSERT_TRUE(g.defined()) << n;
      const double e = testing_util::rel_error(g, ref.read("grad." + n));
      EXPECT_LT(e, 1e-4) << "gradient of " << n;
      if (e > worst) {
        worst = e;
        worst_name = n;
      }
    }
    std::cout << "logits rel. error " << logit_err << " (without a graph " << no_graph_err << "); worst parameter gradient rel. error " << worst << " ("
              << worst_name << ")\n";
  }

  static void write_batch(const std::string& path, const Tensor& x, const std::vector<int64_t>& targets) {
    io::H5Writer w(path);
    w.write("x", x);
    w.write_ints("targets", targets);
    w.commit();
  }

  // AlexNet with torchvision's initialisation (seed 7) on `batch` random images.
  static void alexnet_with_random_weights(int64_t batch, uint64_t seed) {
    const std::string dir = testing_util::temp_dir();
    const Tensor x = testing_util::randn({batch, 3, 224, 224}, seed, DType::F32);
    std::vector<int64_t> targets;
    for (int64_t i = 0; i < batch; ++i) targets.push_back((3 + 514 * i) % 1000);
    write_batch(dir + "/in.h5", x, targets);
    ASSERT_EQ(testing_util::run_reference_script("net_reference.py", "make-alexnet --seed 7 --out " + dir + "/a.pth"),
              0);
    ASSERT_EQ(testing_util::run_python("weights/convert_torchvision.py",
                                       "--arch alexnet --pth " + dir + "/a.pth --out " + dir + "/a.h5"),
              0);
    ASSERT_EQ(testing_util::run_reference_script("net_reference.py", "run --arch alexnet --pth " + dir +
                                                                         "/a.pth --input " + dir + "/in.h5 --out " +
                                                                         dir + "/ref.h5"),
              0);
    nets::AlexNet net(1000);
    io::LoadOptions opt;
    opt.expect_architecture = "alexnet";
    const io::WeightsMeta meta = io::load_weights(net, dir + "/a.h5", opt);
    EXPECT_EQ(meta.class_names.size(), 1000u);
    compare(run_ours(net, x, targets), dir + "/ref.h5");
    fs::remove_all(dir);
  }
};

TEST_F(Parity, AlexNetRandomWeightsMatchPyTorch) {
  REQUIRE_TORCH();
  alexnet_with_random_weights(2, 30);
}

// Winograd for conv3-conv5 in all three passes (forced here; oneDNN's own choice at this
// batch on a CPU with AVX-512): still PyTorch's results.
TEST_F(Parity, AlexNetBatch16WithWinogradMatchesPyTorch) {
  REQUIRE_TORCH();
  struct Restore {
    ~Restore() { kernels::set_dnnl_conv_algorithm(kernels::DnnlConvAlgorithm::kAuto); }
  } restore;
  kernels::set_dnnl_conv_algorithm(kernels::DnnlConvAlgorithm::kWinograd);
  alexnet_with_random_weights(16, 32);
}

TEST_F(Parity, SqueezeNetRealWeightsMatchPyTorch) {
  REQUIRE_TORCH();
  std::string data;
  REQUIRE_SHARED_DATA(data);
  const std::string pth = data + "/weights/squeezenet1_1_imagenet.pth";
  const std::string dir = testing_util::temp_dir();
  const Tensor x = testing_util::randn({2, 3, 224, 224}, 31, DType::F32);
  const std::vector<int64_t> targets = {130, 281};
  write_batch(dir + "/in.h5", x, targets);
  ASSERT_EQ(testing_util::run_python("weights/convert_torchvision.py",
                                     "--arch squeezenet1_1 --pth " + pth + " --out " + dir + "/s.h5"),
            0);
  ASSERT_EQ(testing_util::run_reference_script("net_reference.py", "run --arch squeezenet1_1 --pth " + pth +
                                                                       " --input " + dir + "/in.h5 --out " + dir +
                                                                       "/ref.h5"),
            0);
  nets::SqueezeNet net(1000);
  const io::WeightsMeta meta = io::load_weights(net, dir + "/s.h5");
  ASSERT_EQ(meta.class_names.size(), 1000u);
  EXPECT_EQ(meta.class_names[130], "flamingo");
  compare(run_ours(net, x, targets), dir + "/ref.h5");
  fs::remove_all(dir);
}
