// Shared test helpers: seeded random tensors, closeness with a worst-element report,
// the f64 central-difference gradient check, and the reference-data locations.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "kernels/conv.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "engine/tensor.h"

namespace testing_util {

using engine::DType;
using engine::Shape;
using engine::Tensor;
using engine::TensorList;

Tensor randn(const Shape& shape, uint64_t seed, DType dtype = DType::F64);
Tensor rand(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype = DType::F64);
// Values in random order, pairwise at least `gap` apart (no ties, no kinks for max).
Tensor distinct(const Shape& shape, uint64_t seed, double gap = 0.01, DType dtype = DType::F64);

// conv_relu_pool's layers: a convolution (followed by its ReLU), and a max-pool.
engine::ConvReluPoolLayer conv_layer(const Tensor& weight, const Tensor& bias = Tensor(), int64_t stride = 1,
                                     int64_t padding = 0);
engine::ConvReluPoolLayer pool_layer(int64_t kernel, int64_t stride, int64_t padding = 0, bool ceil_mode = false);

// Passes when |a - b| <= atol + rtol * |b| everywhere; else reports the worst element.
::testing::AssertionResult all_close(const Tensor& a, const Tensor& b, double rtol, double atol);
#define EXPECT_ALL_CLOSE(a, b, rtol, atol) EXPECT_TRUE(::testing_util::all_close((a), (b), (rtol), (atol)))

// Passes when a and b have one shape and dtype and the same bytes (on any devices); else
// names the first element that differs.
::testing::AssertionResult bit_identical(const Tensor& a, const Tensor& b);

struct GradcheckOptions {
  double eps = 1e-6;
  double rtol = 1e-5;
  double atol = 1e-8;
  // Elements whose one-sided differences disagree by more than this (relative) sit on
  // a kink (relu at 0, a max tie) and are skipped, as Caffe's checker does; at most
  // max_skip_fraction of the elements may be skipped.
  double kink_tol = 1e-3;
  double max_skip_fraction = 0.05;
  uint64_t projection_seed = 1234;
};

// max |a - b| / max |b|: the error relative to the reference tensor's scale.
double rel_error(const Tensor& a, const Tensor& b);

// f64 central-difference check of d(sum(f(inputs) * R))/d(inputs) for a fixed random R,
// against autograd, for every input that requires a gradient.
::testing::AssertionResult gradcheck(const std::function<Tensor(const TensorList&)>& f,
                                     const TensorList& inputs, const GradcheckOptions& opt = {});
#define EXPECT_GRADCHECK(...) EXPECT_TRUE(::testing_util::gradcheck(__VA_ARGS__))

// ../shared/data relative to the source tree, or "" when absent. Under CI (CI=true) a
// missing data folder fails the test instead of skipping it.
std::string shared_data_dir();
#define REQUIRE_SHARED_DATA(dir)                                                      \
  do {                                                                                \
    dir = ::testing_util::shared_data_dir();                                          \
    if (dir.empty()) {                                                                \
      if (::testing_util::under_ci()) FAIL() << "../shared/data is missing under CI"; \
      GTEST_SKIP() << "../shared/data not found next to the project";                \
    }                                                                                 \
  } while (0)
bool under_ci();

// Runs Debian's python3 on a script under tests/reference with arguments; returns its
// exit status. Skips (or fails under CI) when torch is not importable.
int run_reference_script(const std::string& script, const std::string& args);
// Runs Debian's python3 on a script given relative to the source tree.
int run_python(const std::string& script_from_source_root, const std::string& args);
bool torch_available();
#define REQUIRE_TORCH()                                                                   \
  do {                                                                                    \
    if (!::testing_util::torch_available()) {                                             \
      if (::testing_util::under_ci()) FAIL() << "python3 with torch is missing under CI"; \
      GTEST_SKIP() << "Debian's python3-torch is not installed";                         \
    }                                                                                     \
  } while (0)
// A convolution's geometry, as tests list it: input [N, C, H, W], weight [Co, C, kh, kw],
// stride (sh, sw), padding (ph, pw).
struct ConvCase {
  int64_t N, C, H, W, Co, kh, kw, sh, sw, ph, pw;
};
// The kernels' shape for it, output size included.
kernels::Conv2dShape conv_shape(const ConvCase& c);
// "x [N, C, H, W] w [...] stride (sh, sw) pad (ph, pw)", for SCOPED_TRACE.
std::string describe(const ConvCase& c);

// A fresh temporary directory for this test, removed when the test binary exits.
std::string temp_dir();

// Makes the bytes of an HDF5 file written by the engine crash libhdf5 1.10 when it reads
// the variable-length string `value` (an attribute's or a class name's): the string's
// heap ID (its length, the address of the file's first global heap collection, an object
// index) gets the index 2^32 - 16, which that collection does not hold. H5HG_read looks
// the index up in its table of objects without a bound check, far outside the table.
// False when no such heap ID is found.
bool break_string_heap_id(std::vector<uint8_t>& file, const std::string& value);

// Makes libhdf5 1.10 loop forever on the bytes of an HDF5 file written by the engine: the
// free-space entry of the file's first global heap collection gets size 0. Returns the
// collection's offset in the file, or -1 when there is no collection with free space.
int64_t zero_global_heap_free_space(std::vector<uint8_t>& file);

}  // namespace testing_util
