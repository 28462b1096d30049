// Bad arguments to the ops end in one engine::Error whose message names what is wrong:
// both shapes for a mismatch, the sample for a bad target, both dtypes for mixed dtypes.
#include <string>

#include "tests/test_util.h"

using namespace engine;
using testing_util::randn;

namespace {

// The message of the engine::Error that f throws; a test failure when f throws
// nothing or something else.
template <typename F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-engine exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "threw nothing";
  return "";
}

::testing::AssertionResult mentions(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& p : parts)
    if (message.find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "message \"" << message << "\" does not mention \"" << p << "\"";
  return ::testing::AssertionSuccess();
}
#define EXPECT_ERROR_MENTIONS(expr, ...) EXPECT_TRUE(mentions(error_of([&] { (void)(expr); }), {__VA_ARGS__}))

}  // namespace

// ---- shape mismatches ----------------------------------------------------------------

TEST(OpsErrors, Conv2dChannelMismatchNamesInputAndWeightShapes) {
  const Tensor x = randn({2, 3, 8, 8}, 1), w = randn({4, 5, 3, 3}, 2);
  EXPECT_ERROR_MENTIONS(conv2d(x, w), "conv2d", "[2, 3, 8, 8]", "[4, 5, 3, 3]");
}

TEST(OpsErrors, Conv2dBadBiasAndRanks) {
  const Tensor x = randn({2, 3, 8, 8}, 3), w = randn({4, 3, 3, 3}, 4);
  EXPECT_ERROR_MENTIONS(conv2d(x, w, randn({5}, 5)), "[5]", "[4, 3, 3, 3]");
  EXPECT_ERROR_MENTIONS(conv2d(randn({3, 8, 8}, 6), w), "[3, 8, 8]");
  EXPECT_ERROR_MENTIONS(conv2d(x, randn({4, 3, 3}, 7)), "[4, 3, 3]");
}

TEST(OpsErrors, Conv2dKernelLargerThanInput) {
  const Tensor x = randn({1, 2, 3, 4}, 8), w = randn({3, 2, 5, 5}, 9);
  EXPECT_ERROR_MENTIONS(conv2d(x, w), "5x5", "[1, 2, 3, 4]");
  EXPECT_NO_THROW(conv2d(x, w, Tensor(), 1, 1));  // fits once padded
}

TEST(OpsErrors, Conv2dBadStrideOrPadding) {
  const Tensor x = randn({1, 2, 5, 5}, 10), w = randn({3, 2, 3, 3}, 11);
  EXPECT_ERROR_MENTIONS(conv2d(x, w, Tensor(), 0), "stride");
  EXPECT_ERROR_MENTIONS(conv2d(x, w, Tensor(), 1, -1), "padding");
}

TEST(OpsErrors, LinearFeatureMismatchNamesBothShapes) {
  const Tensor x = randn({4, 5}, 12), w = randn({3, 6}, 13);
  EXPECT_ERROR_MENTIONS(linear(x, w), "linear", "[4, 5]", "[3, 6]");
  EXPECT_ERROR_MENTIONS(linear(randn({2, 3, 5}, 14), w), "[2, 3, 5]", "[3, 6]");
  EXPECT_ERROR_MENTIONS(linear(randn({4, 6}, 15), w, randn({4}, 16)), "[4]", "[3, 6]");
}

TEST(OpsErrors, ElementwiseShapeMismatchNamesBothShapes) {
  const Tensor a = randn({2, 3}, 17), b = randn({3, 2}, 18);
  EXPECT_ERROR_MENTIONS(add(a, b), "add", "[2, 3]", "[3, 2]");
  EXPECT_ERROR_MENTIONS(sub(a, b), "sub", "[2, 3]", "[3, 2]");
  EXPECT_ERROR_MENTIONS(mul(a, b), "mul", "[2, 3]", "[3, 2]");
  EXPECT_ERROR_MENTIONS(a + randn({6}, 19), "[2, 3]", "[6]");
}

TEST(OpsErrors, CatMismatchOutsideTheCatDimNamesBothShapes) {
  const Tensor a = randn({2, 3, 4}, 20), b = randn({2, 3, 5}, 21);
  EXPECT_ERROR_MENTIONS(cat({a, b}, 1), "cat", "[2, 3, 4]", "[2, 3, 5]");
  EXPECT_NO_THROW(cat({a, b}, -1));
  EXPECT_ERROR_MENTIONS(cat({a, randn({2, 3}, 22)}, 0), "[2, 3, 4]", "[2, 3]");
  EXPECT_ERROR_MENTIONS(cat({a, b}, 3), "dimension 3");
  EXPECT_ERROR_MENTIONS(cat({}, 0), "cat");
}

TEST(OpsErrors, CrossEntropyTargetOutOfRangeNamesTheSample) {
  const Tensor z = randn({3, 7}, 23);
  EXPECT_ERROR_MENTIONS(cross_entropy(z, {0, 7, 2}), "target 7", "sample 1", "7 classes");
  EXPECT_ERROR_MENTIONS(cross_entropy(z, {0, 1, -1}), "target -1", "sample 2");
  EXPECT_ERROR_MENTIONS(cross_entropy(z, {0, 1}), "2 targets", "[3, 7]");
  EXPECT_ERROR_MENTIONS(cross_entropy(randn({3, 7, 1}, 24), {0, 1, 2}), "[3, 7, 1]");
}

TEST(OpsErrors, MaxPool2dPaddingMoreThanHalfTheKernel) {
  const Tensor x = randn({1, 2, 9, 9}, 25);
  EXPECT_ERROR_MENTIONS(max_pool2d(x, 3, 2, 2), "max_pool2d", "padding (2, 2)", "kernel (3, 3)");
  EXPECT_ERROR_MENTIONS(max_pool2d(x, Size2(4, 2), 1, Size2(2, 2)), "padding (2, 2)", "kernel (4, 2)");
  EXPECT_NO_THROW(max_pool2d(x, 3, 2, 1));
}

TEST(OpsErrors, MaxPool2dKernelLargerThanInputNamesTheInput) {
  const Tensor x = randn({2, 3, 4, 6}, 26);
  EXPECT_ERROR_MENTIONS(max_pool2d(x, 5), "max_pool2d", "5x5", "[2, 3, 4, 6]");
  EXPECT_ERROR_MENTIONS(max_pool2d(x, Size2(2, 7), 1), "2x7", "[2, 3, 4, 6]");
  EXPECT_ERROR_MENTIONS(max_pool2d(randn({3, 4, 6}, 27), 2), "[3, 4, 6]");
  EXPECT_ERROR_MENTIONS(max_pool2d(x, 0), "positive");
}

TEST(OpsErrors, AdaptiveAvgPool2dBadArguments) {
  EXPECT_ERROR_MENTIONS(adaptive_avg_pool2d(randn({3, 4, 6}, 28), 2), "[3, 4, 6]");
  EXPECT_ERROR_MENTIONS(adaptive_avg_pool2d(randn({1, 3, 4, 6}, 29), Size2(0, 2)), "positive");
}

TEST(OpsErrors, DimensionOutOfRange) {
  const Tensor x = randn({2, 3}, 30);
  EXPECT_ERROR_MENTIONS(softmax(x, 2), "softmax", "dimension 2");
  EXPECT_ERROR_MENTIONS(log_softmax(x, -3), "log_softmax", "dimension -3");
  EXPECT_ERROR_MENTIONS(sum(x, 5), "sum", "dimension 5");
  EXPECT_ERROR_MENTIONS(mean(x, -3), "mean", "dimension -3");
  EXPECT_ERROR_MENTIONS(abs_max(x, 2), "abs_max", "dimension 2");
}

TEST(OpsErrors, ReshapeAndFlattenNameTheShapes) {
  const Tensor x = randn({2, 3}, 31);
  EXPECT_ERROR_MENTIONS(reshape(x, {4, 2}), "[2, 3]", "[4, 2]");
  EXPECT_ERROR_MENTIONS(reshape(x, {-1, 4}), "[2, 3]", "[-1, 4]");
  EXPECT_ERROR_MENTIONS(flatten(x, 2), "[2, 3]");
}

TEST(OpsErrors, DropoutProbabilityOutOfRange) {
  const Tensor x = randn({2, 3}, 32);
  EXPECT_ERROR_MENTIONS(dropout(x, 1.5, true), "dropout", "1.5");
  EXPECT_ERROR_MENTIONS(dropout(x, -0.1, false), "dropout");
}

// ---- mixed dtypes ---------------------------------------------------------------------

TEST(OpsErrors, MixedDtypesAreRejected) {
  const Tensor a32 = randn({2, 3}, 33, DType::F32), b64 = randn({2, 3}, 34, DType::F64);
  EXPECT_ERROR_MENTIONS(add(a32, b64), "add", "float32", "float64");
  EXPECT_ERROR_MENTIONS(sub(b64, a32), "sub", "float32", "float64");
  EXPECT_ERROR_MENTIONS(mul(a32, b64), "mul", "float32", "float64");
  EXPECT_ERROR_MENTIONS(cat({a32, b64}, 0), "cat", "float32", "float64");
  EXPECT_ERROR_MENTIONS(linear(a32, randn({4, 3}, 35, DType::F64)), "linear", "float32", "float64");
  EXPECT_ERROR_MENTIONS(linear(a32, randn({4, 3}, 36, DType::F32), randn({4}, 37, DType::F64)), "linear",
                        "float32", "float64");
  const Tensor x32 = randn({1, 2, 5, 5}, 38, DType::F32);
  EXPECT_ERROR_MENTIONS(conv2d(x32, randn({3, 2, 3, 3}, 39, DType::F64)), "conv2d", "float32", "float64");
  EXPECT_ERROR_MENTIONS(conv2d(x32, randn({3, 2, 3, 3}, 40, DType::F32), randn({3}, 41, DType::F64)), "conv2d",
                        "float32", "float64");
}

// A failed check leaves nothing behind: no graph node, the inputs' gradients untouched.
TEST(OpsErrors, FailedOpRecordsNothing) {
  Tensor a = randn({2, 3}, 42).requires_grad_();
  const Tensor b = randn({3, 2}, 43);
  EXPECT_THROW(add(a, b), Error);
  sum(a).backward();
  EXPECT_ALL_CLOSE(a.grad(), Tensor::full({2, 3}, 1.0, DType::F64), 0, 0);
}
