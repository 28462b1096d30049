#include "tests/test_util.h"

#include "kernels/common.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <sstream>

#include <sys/wait.h>
#include <unistd.h>

namespace testing_util {

namespace fs = std::filesystem;

Tensor randn(const Shape& shape, uint64_t seed, DType dtype) {
  engine::Generator gen(seed);
  return Tensor::randn(shape, gen, dtype);
}

Tensor rand(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype) {
  engine::Generator gen(seed);
  return Tensor::rand(shape, gen, dtype, engine::Device::cpu(), lo, hi);
}

Tensor distinct(const Shape& shape, uint64_t seed, double gap, DType dtype) {
  const int64_t n = engine::numel_of(shape);
  std::vector<double> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0.0);
  std::mt19937_64 rng(seed);
  std::shuffle(v.begin(), v.end(), rng);
  for (double& x : v) x = (x - static_cast<double>(n) / 2) * gap;
  return Tensor::from_vector(shape, v).to(dtype);
}

engine::ConvReluPoolLayer conv_layer(const Tensor& weight, const Tensor& bias, int64_t stride, int64_t padding) {
  engine::ConvReluPoolLayer l;
  l.weight = weight;
  l.bias = bias;
  l.stride = stride;
  l.padding = padding;
  return l;
}

engine::ConvReluPoolLayer pool_layer(int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode) {
  engine::ConvReluPoolLayer l;
  l.pool = true;
  l.kernel = kernel;
  l.stride = stride;
  l.padding = padding;
  l.ceil_mode = ceil_mode;
  return l;
}

::testing::AssertionResult all_close(const Tensor& a, const Tensor& b, double rtol, double atol) {
  if (a.shape() != b.shape())
    return ::testing::AssertionFailure() << "shapes differ: " << engine::shape_str(a.shape()) << " vs "
                                         << engine::shape_str(b.shape());
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double worst_excess = 0;
  int64_t worst = -1;
  for (size_t i = 0; i < x.size(); ++i) {
    const double tol = atol + rtol * std::fabs(y[i]);
    const double err = std::fabs(x[i] - y[i]);
    if (!(err <= tol)) {  // NaN fails
      const double excess = std::isnan(err) ? INFINITY : err / tol;
      if (worst < 0 || excess > worst_excess) {
        worst_excess = excess;
        worst = static_cast<int64_t>(i);
      }
    }
  }
  if (worst < 0) return ::testing::AssertionSuccess();
  const size_t w = static_cast<size_t>(worst);
  return ::testing::AssertionFailure()
         << "worst element " << worst << " of " << engine::shape_str(a.shape()) << ": got " << x[w]
         << ", expected " << y[w] << ", |diff| " << std::fabs(x[w] - y[w]) << " > tolerance "
         << atol + rtol * std::fabs(y[w]) << " (rtol " << rtol << ", atol " << atol << ")";
}

::testing::AssertionResult bit_identical(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype())
    return ::testing::AssertionFailure() << a.str() << " vs " << b.str();
  const Tensor x = a.device().is_cpu() ? a : a.to(engine::Device::cpu());
  const Tensor y = b.device().is_cpu() ? b : b.to(engine::Device::cpu());
  const size_t size = engine::element_size(a.dtype());
  const auto* p = static_cast<const unsigned char*>(x.raw_data());
  const auto* q = static_cast<const unsigned char*>(y.raw_data());
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(p + i * size, q + i * size, size) != 0) {
      const size_t k = static_cast<size_t>(i);
      return ::testing::AssertionFailure() << "element " << i << " of " << a.str() << ": " << x.to_vector<double>()[k]
                                           << " vs " << y.to_vector<double>()[k];
    }
  return ::testing::AssertionSuccess();
}

double rel_error(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num = std::max(num, std::fabs(x[i] - y[i]));
    den = std::max(den, std::fabs(y[i]));
  }
  return den > 0 ? num / den : num;
}

::testing::AssertionResult gradcheck(const std::function<Tensor(const TensorList&)>& f,
                                     const TensorList& inputs, const GradcheckOptions& opt) {
  for (const Tensor& t : inputs)
    if (t.defined() && t.dtype() != DType::F64)
      return ::testing::AssertionFailure() << "gradcheck needs float64 inputs, got " << t.str();
  for (const Tensor& t : inputs)
    if (t.defined()) const_cast<Tensor&>(t).zero_grad();

  // Analytic: gradient of sum(f(x) * R).
  Tensor y = f(inputs);
  const Tensor R = randn(y.shape(), opt.projection_seed, DType::F64);
  engine::sum(engine::mul(y, R)).backward();

  auto loss = [&]() {
    engine::NoGradGuard ng;
    return engine::sum(engine::mul(f(inputs), R)).item();
  };
  const double l0 = loss();

  for (size_t k = 0; k < inputs.size(); ++k) {
    const Tensor& x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    const Tensor g = x.grad();
    if (!g.defined()) return ::testing::AssertionFailure() << "input " << k << " received no gradient";
    const std::vector<double> analytic = g.to_vector<double>();
    double* xp = x.data<double>();
    int64_t skipped = 0, worst = -1;
    double worst_excess = 0, worst_a = 0, worst_n = 0, worst_tol = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double orig = xp[i];
      xp[i] = orig + opt.eps;
      const double lp = loss();
      xp[i] = orig - opt.eps;
      const double lm = loss();
      xp[i] = orig;
      const double fwd = (lp - l0) / opt.eps, bwd = (l0 - lm) / opt.eps;
      const double scale = std::max({1.0, std::fabs(fwd), std::fabs(bwd)});
      if (std::fabs(fwd - bwd) > opt.kink_tol * scale) {
        ++skipped;
        continue;
      }
      const double numeric = (lp - lm) / (2 * opt.eps);
      const double a = analytic[static_cast<size_t>(i)];
      const double tol = opt.atol + opt.rtol * std::max(std::fabs(a), std::fabs(numeric));
      const double err = std::fabs(a - numeric);
      if (!(err <= tol)) {
        const double excess = std::isnan(err) ? INFINITY : err / tol;
        if (worst < 0 || excess > worst_excess) {
          worst_excess = excess;
          worst = i;
          worst_a = a;
          worst_n = numeric;
          worst_tol = tol;
        }
      }
    }
    if (worst >= 0)
      return ::testing::AssertionFailure()
             << "input " << k << " " << engine::shape_str(x.shape()) << ": worst element " << worst
             << ": analytic " << worst_a << ", numeric " << worst_n << ", |diff| "
             << std::fabs(worst_a - worst_n) << " > tolerance " << worst_tol;
    if (static_cast<double>(skipped) > opt.max_skip_fraction * static_cast<double>(x.numel()))
      return ::testing::AssertionFailure() << "input " << k << ": " << skipped << " of " << x.numel()
                                           << " elements sit on kinks; choose inputs away from them";
  }
  return ::testing::AssertionSuccess();
}

bool under_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

std::string shared_data_dir() {
  const fs::path p = fs::path(ENGINE_SOURCE_DIR) / ".." / "shared" / "data";
  return fs::is_directory(p) ? fs::canonical(p).string() : std::string();
}

int run_python(const std::string& script_from_source_root, const std::string& args) {
  const std::string cmd = std::string(ENGINE_REFERENCE_PYTHON) + " " + ENGINE_SOURCE_DIR + "/" +
                          script_from_source_root + " " + args;
  const int rc = std::system(cmd.c_str());
  return rc == -1 ? -1 : WEXITSTATUS(rc);
}

int run_reference_script(const std::string& script, const std::string& args) {
  return run_python("tests/reference/" + script, args);
}

bool torch_available() {
  static const bool ok = [] {
    const std::string cmd = std::string(ENGINE_REFERENCE_PYTHON) +
                            " -c 'import torch, torchvision, h5py, numpy' > /dev/null 2>&1";
    return std::system(cmd.c_str()) == 0;
  }();
  return ok;
}

namespace {
// Removes the test's temporary directories when the test binary exits.
struct TempDirs {
  std::vector<fs::path> paths;
  ~TempDirs() {
    std::error_code ec;
    for (const fs::path& p : paths) fs::remove_all(p, ec);
  }
};
TempDirs& temp_dirs() {
  static TempDirs dirs;
  return dirs;
}
}  // namespace

std::string temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "_" + info->name() : "test";
  for (char& c : name)
    if (c == '/') c = '_';
  const fs::path p = fs::temp_directory_path() / ("engine_test_" + std::to_string(::getpid()) + "_" + name + "_" +
                                                   std::to_string(temp_dirs().paths.size()));
  fs::remove_all(p);
  fs::create_directories(p);
  temp_dirs().paths.push_back(p);
  return p.string();
}

bool break_string_heap_id(std::vector<uint8_t>& file, const std::string& value) {
  const std::string gcol = "GCOL";
  const auto collection = std::search(file.begin(), file.end(), gcol.begin(), gcol.end());
  if (collection == file.end()) return false;
  // A heap ID: 4-byte length, 8-byte collection address, 4-byte index (little-endian).
  const uint64_t address = static_cast<uint64_t>(collection - file.begin());
  std::vector<uint8_t> id;
  for (int k = 0; k < 4; ++k) id.push_back(static_cast<uint8_t>(value.size() >> (8 * k)));
  for (int k = 0; k < 8; ++k) id.push_back(static_cast<uint8_t>(address >> (8 * k)));
  const auto hit = std::search(file.begin(), file.end(), id.begin(), id.end());
  if (hit == file.end() || file.end() - hit < 16) return false;
  const uint32_t index = 0xFFFFFFF0u;
  for (int k = 0; k < 4; ++k) hit[12 + k] = static_cast<uint8_t>(index >> (8 * k));
  return true;
}

int64_t zero_global_heap_free_space(std::vector<uint8_t>& file) {
  const std::string gcol = "GCOL";
  const auto at = std::search(file.begin(), file.end(), gcol.begin(), gcol.end());
  if (at == file.end() || file.end() - at < 16) return -1;
  const size_t base = static_cast<size_t>(at - file.begin());
  auto le64 = [&](size_t i) {
    uint64_t v = 0;
    for (int k = 7; k >= 0; --k) v = (v << 8) | file[i + static_cast<size_t>(k)];
    return v;
  };
  const uint64_t size = std::min<uint64_t>(le64(base + 8), file.size() - base);
  // Objects (a 16-byte header each, then the data rounded up to 8 bytes) up to the
  // free-space entry, whose index is 0.
  size_t q = 16;
  while (q + 16 <= size && (file[base + q] | file[base + q + 1]) != 0)
    q += 16 + ((le64(base + q + 8) + 7) & ~uint64_t{7});
  if (q + 16 > size) return -1;
  for (int k = 0; k < 8; ++k) file[base + q + 8 + static_cast<size_t>(k)] = 0;  // its size: 0
  return static_cast<int64_t>(base);
}

kernels::Conv2dShape conv_shape(const ConvCase& c) {
  kernels::Conv2dShape s{};
  s.N = c.N; s.C = c.C; s.H = c.H; s.W = c.W; s.Co = c.Co; s.kh = c.kh; s.kw = c.kw;
  s.sh = c.sh; s.sw = c.sw; s.ph = c.ph; s.pw = c.pw;
  s.Ho = kernels::pooled_size(c.H, c.kh, c.sh, c.ph, 1, false);
  s.Wo = kernels::pooled_size(c.W, c.kw, c.sw, c.pw, 1, false);
  return s;
}

std::string describe(const ConvCase& c) {
  return "x [" + std::to_string(c.N) + ", " + std::to_string(c.C) + ", " + std::to_string(c.H) + ", " +
         std::to_string(c.W) + "] w [" + std::to_string(c.Co) + ", " + std::to_string(c.C) + ", " +
         std::to_string(c.kh) + ", " + std::to_string(c.kw) + "] stride (" + std::to_string(c.sh) + ", " +
         std::to_string(c.sw) + ") pad (" + std::to_string(c.ph) + ", " + std::to_string(c.pw) + ")";
}

}  // namespace testing_util
