// GPU op microbenchmarks on AlexNet's real shapes, each of our kernels beside the library
// it competes with. Every call is timed with CUDA events on the engine's stream
// (kernels::cuda::stream()) and reported as manual time; one untimed call first lets
// cuDNN choose its algorithms and the libraries set up their workspaces.
//   ceiling/   device-to-device copy bandwidth (bytes read + written per second) and
//              cuBLAS SGEMM at 8192^3 in FP32 (no TF32), measured here on this card
//   gemm/      gemm_tiled_cuda against gemm_cuda (cuBLAS) on fc6, fc7 and fc8 at batch
//              1, 64 and 128 (y = x W^T, as linear calls it) and 4096^3
//   conv/      conv2d_forward_im2col_cuda against conv2d_forward_cudnn, conv1..conv5 at batch 64
//   relu/, relu_bwd/, max_pool2d_*/, softmax_fwd/, log_softmax_*/, adaptive_avg_pool2d_*/,
//              dropout_fwd/, mul/   memory-bound kernels against cuDNN's activation,
//              pooling, softmax, dropout and OpTensor on the same shapes
//   cat/, split/   SqueezeNet's Fire concatenation beside cudaMemcpy2DAsync (and the
//              same-bytes copy)
//   axpby/, sum_all/   against cuBLAS's SAXPY and SASUM (the same bytes moved)
//   sgd_step/  the momentum step over AlexNet's parameters (the copy ceiling only)
// Counters: GFLOP/s or GB/s; frac_of_copy (GB/s over the measured copy bandwidth) and
// frac_of_same_copy (the time of a copy moving the same bytes, over ours),
// frac_of_cublas / frac_of_cudnn (the library's time over ours on the same shape, so
// 1 means as fast as the library). Without a CUDA device every row is skipped with
// "no CUDA device" and the program exits 0.
//   build/bin/bench_cuda_ops --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cat.h"
#include "kernels/common.h"
#include "kernels/conv.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda_runtime.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/pool.h"
#include "kernels/reduce.h"
#include "kernels/sgd.h"
#include "kernels/softmax.h"

namespace {

namespace cuda = kernels::cuda;

bool have_gpu() {
  static const bool yes = cuda::device_count() > 0;
  return yes;
}

// Device memory from the engine's allocator, returned on scope exit.
template <typename T> class DeviceArray {
 public:
  explicit DeviceArray(std::size_t n) : n_(n), p_(static_cast<T*>(cuda::malloc_device(n * sizeof(T)))) {}
  ~DeviceArray() { cuda::free_device(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  std::size_t n_;
  T* p_;
};

// Uniform values in [-1, 1) from the engine's counter-based generator.
DeviceArray<float>& randomize(DeviceArray<float>& a, uint64_t seed) {
  kernels::uniform_cuda<float>(a.get(), -1.0f, 1.0f, seed, 0, static_cast<int64_t>(a.size()));
  return a;
}

class EventTimer {
 public:
  EventTimer() {
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventTimer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  // Seconds between events recorded on the engine's stream before and after op().
  template <typename F> double seconds(F&& op) {
    CUDA_CHECK(cudaEventRecord(start_, cuda::stream()));
    op();
    CUDA_CHECK(cudaEventRecord(stop_, cuda::stream()));
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return 1e-3 * static_cast<double>(ms);
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// The benchmark loop: one untimed call, then each iteration timed with events. Returns
// the mean seconds per call.
template <typename F> double run_timed(benchmark::State& state, F&& op) {
  EventTimer timer;
  op();
  cuda::synchronize();
  double total = 0;
  int64_t calls = 0;
  for (auto _ : state) {
    const double s = timer.seconds(op);
    state.SetIterationTime(s);
    total += s;
    ++calls;
  }
  return calls > 0 ? total / static_cast<double>(calls) : 0.0;
}

// Median seconds of `reps` timed calls after one untimed one: the reference beside a row.
template <typename F> double median_seconds(F&& op, int reps = 11) {
  EventTimer timer;
  op();
  cuda::synchronize();
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) s.push_back(timer.seconds(op));
  std::sort(s.begin(), s.end());
  return s[s.size() / 2];
}

// Runs a row's body on a GPU; without one, or when the body throws (a CUDA, cuBLAS or
// cuDNN error, or a kernel this build lacks), the row is skipped with the reason.
template <typename F> void guarded(benchmark::State& state, F&& body) {
  if (!have_gpu()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  try {
    body();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

constexpr std::size_t kCopyBytes = std::size_t(256) << 20;

// Seconds for a device-to-device copy that reads and writes `bytes` in all (bytes / 2
// each way): the same traffic as a kernel's, at its size. Copies of tens of MB may stay
// below the 256 MiB figure (launch and tail, and the 50-60 MB L2), so this is the fairer
// ceiling for one kernel on one shape. Measured once per size (median of 11).
double same_traffic_copy_seconds(double bytes) {
  static std::map<std::size_t, double> memo;
  const std::size_t half = static_cast<std::size_t>(bytes / 2) / 16 * 16;
  auto it = memo.find(half);
  if (it != memo.end()) return it->second;
  DeviceArray<char> a(half), b(half);
  CUDA_CHECK(cudaMemsetAsync(a.get(), 1, half, cuda::stream()));
  const double s = median_seconds(
      [&] { CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), half, cudaMemcpyDeviceToDevice, cuda::stream())); });
  return memo.emplace(half, s).first->second;
}

// Bytes read plus bytes written per second by a 256 MiB device-to-device copy: the
// practical bandwidth ceiling of this card, measured once per run.
double copy_bandwidth() {
  const double bytes = 2.0 * static_cast<double>(kCopyBytes);
  return bytes / same_traffic_copy_seconds(bytes);
}

void set_gbps(benchmark::State& state, double bytes, double seconds) {
  const double bps = bytes / seconds;
  state.counters["GB/s"] = bps * 1e-9;
  state.counters["frac_of_copy"] = bps / copy_bandwidth();
  state.counters["frac_of_same_copy"] = same_traffic_copy_seconds(bytes) / seconds;
}

// ---- ceilings --------------------------------------------------------------------------

void bm_copy(benchmark::State& state) {
  guarded(state, [&] {
    DeviceArray<char> a(kCopyBytes), b(kCopyBytes);
    CUDA_CHECK(cudaMemsetAsync(a.get(), 1, kCopyBytes, cuda::stream()));
    const double s = run_timed(state, [&] {
      CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), kCopyBytes, cudaMemcpyDeviceToDevice, cuda::stream()));
    });
    set_gbps(state, 2.0 * static_cast<double>(kCopyBytes), s);
  });
}

// cuBLAS SGEMM, column-major n x n x n, in FP32 math (the handle's math mode is restored).
void bm_cublas_sgemm(benchmark::State& state, int n) {
  guarded(state, [&] {
    const std::size_t nn = static_cast<std::size_t>(n) * static_cast<std::size_t>(n);
    DeviceArray<float> a(nn), b(nn), c(nn);
    randomize(a, 1);
    randomize(b, 2);
    cublasHandle_t h = cuda::cublas_handle();
    cublasMath_t mode = CUBLAS_DEFAULT_MATH;
    CUBLAS_CHECK(cublasGetMathMode(h, &mode));
    CUBLAS_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
    const float alpha = 1.0f, beta = 0.0f;
    double s = 0;
    try {
      s = run_timed(state, [&] {
        CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.get(), n, b.get(), n, &beta,
                                 c.get(), n));
      });
    } catch (...) {
      cublasSetMathMode(h, mode);
      throw;
    }
    CUBLAS_CHECK(cublasSetMathMode(h, mode));
    state.counters["GFLOP/s"] = 2.0 * static_cast<double>(n) * static_cast<double>(nn) / s * 1e-9;
  });
}

// ---- GEMM -------------------------------------------------------------------------------

struct GemmShape {
  std::string name;
  int64_t M, N, K;
  bool trans_b;  // true: B is a [N, K] weight, as linear multiplies by W^T
};

void bm_gemm(benchmark::State& state, const GemmShape& g, bool tiled) {
  guarded(state, [&] {
    DeviceArray<float> a(static_cast<std::size_t>(g.M * g.K)), b(static_cast<std::size_t>(g.K * g.N));
    DeviceArray<float> c(static_cast<std::size_t>(g.M * g.N));
    randomize(a, 3);
    randomize(b, 4);
    const int64_t ldb = g.trans_b ? g.K : g.N;
    auto call = [&](bool use_tiled) {
      return [&, use_tiled] {
        if (use_tiled)
          kernels::gemm_tiled_cuda<float>(false, g.trans_b, g.M, g.N, g.K, 1.0f, a.get(), g.K, b.get(), ldb, 0.0f,
                                          c.get(), g.N);
        else
          kernels::gemm_cuda<float>(false, g.trans_b, g.M, g.N, g.K, 1.0f, a.get(), g.K, b.get(), ldb, 0.0f,
                                    c.get(), g.N);
      };
    };
    const double s = run_timed(state, call(tiled));
    state.counters["GFLOP/s"] = 2.0 * static_cast<double>(g.M * g.N) * static_cast<double>(g.K) / s * 1e-9;
    state.counters["frac_of_cublas"] = tiled ? median_seconds(call(false)) / s : 1.0;
  });
}

// ---- convolution --------------------------------------------------------------------------

struct ConvLayer {
  std::string name;
  int64_t C, H, Co, k, s, p;
};

void bm_conv(benchmark::State& state, const ConvLayer& l, int64_t batch, bool im2col) {
  guarded(state, [&] {
    kernels::Conv2dShape s{};
    s.N = batch; s.C = l.C; s.H = l.H; s.W = l.H; s.Co = l.Co; s.kh = l.k; s.kw = l.k;
    s.sh = l.s; s.sw = l.s; s.ph = l.p; s.pw = l.p;
    s.Ho = kernels::pooled_size(s.H, s.kh, s.sh, s.ph, 1, false);
    s.Wo = kernels::pooled_size(s.W, s.kw, s.sw, s.pw, 1, false);
    DeviceArray<float> x(static_cast<std::size_t>(s.N * s.C * s.H * s.W));
    DeviceArray<float> w(static_cast<std::size_t>(s.Co * s.C * s.kh * s.kw)), b(static_cast<std::size_t>(s.Co));
    DeviceArray<float> y(static_cast<std::size_t>(s.N * s.Co * s.Ho * s.Wo));
    randomize(x, 5);
    randomize(w, 6);
    randomize(b, 7);
    auto call = [&](bool use_im2col) {
      return [&, use_im2col] {
        if (use_im2col) kernels::conv2d_forward_im2col_cuda<float>(x.get(), w.get(), b.get(), y.get(), s);
        else kernels::conv2d_forward_cudnn<float>(x.get(), w.get(), b.get(), y.get(), s);
      };
    };
    const double sec = run_timed(state, call(im2col));
    const double flops = 2.0 * static_cast<double>(s.N * s.Co * s.Ho * s.Wo) * static_cast<double>(s.C * s.kh * s.kw);
    state.counters["GFLOP/s"] = flops / sec * 1e-9;
    state.counters["frac_of_cudnn"] = im2col ? median_seconds(call(false)) / sec : 1.0;
  });
}

// ---- memory-bound kernels against cuDNN --------------------------------------------------------

struct TensorDesc {
  cudnnTensorDescriptor_t d = nullptr;
  TensorDesc(int64_t n, int64_t c, int64_t h, int64_t w) {
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&d));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, static_cast<int>(n),
                                           static_cast<int>(c), static_cast<int>(h), static_cast<int>(w)));
  }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
};

struct PoolDesc {
  cudnnPoolingDescriptor_t d = nullptr;
  PoolDesc(int k, int s, int p, cudnnPoolingMode_t mode = CUDNN_POOLING_MAX) {
    CUDNN_CHECK(cudnnCreatePoolingDescriptor(&d));
    CUDNN_CHECK(cudnnSetPooling2dDescriptor(d, mode, CUDNN_NOT_PROPAGATE_NAN, k, k, p, p, s, s));
  }
  ~PoolDesc() { cudnnDestroyPoolingDescriptor(d); }
  PoolDesc(const PoolDesc&) = delete;
  PoolDesc& operator=(const PoolDesc&) = delete;
};

struct ReluDesc {
  cudnnActivationDescriptor_t d = nullptr;
  ReluDesc() {
    CUDNN_CHECK(cudnnCreateActivationDescriptor(&d));
    CUDNN_CHECK(cudnnSetActivationDescriptor(d, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  }
  ~ReluDesc() { cudnnDestroyActivationDescriptor(d); }
  ReluDesc(const ReluDesc&) = delete;
  ReluDesc& operator=(const ReluDesc&) = delete;
};

// A cuDNN descriptor created on construction and destroyed on scope exit.
template <typename D, cudnnStatus_t (*Create)(D*), cudnnStatus_t (*Destroy)(D)> struct CudnnDescriptor {
  D d = nullptr;
  CudnnDescriptor() { CUDNN_CHECK(Create(&d)); }
  ~CudnnDescriptor() { Destroy(d); }
  CudnnDescriptor(const CudnnDescriptor&) = delete;
  CudnnDescriptor& operator=(const CudnnDescriptor&) = delete;
};

const float kOne = 1.0f, kZero = 0.0f;

// relu over AlexNet's conv1 output at batch 64 ([64, 64, 55, 55]): reads and writes once.
void bm_relu(benchmark::State& state, bool ours) {
  guarded(state, [&] {
    const int64_t N = 64, C = 64, H = 55, W = 55, n = N * C * H * W;
    DeviceArray<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    randomize(x, 8);
    const TensorDesc t(N, C, H, W);
    const ReluDesc act;
    auto ours_fwd = [&] { kernels::relu_forward_cuda<float>(x.get(), y.get(), n); };
    auto cudnn_fwd = [&] {
      CUDNN_CHECK(cudnnActivationForward(cuda::cudnn_handle(), act.d, &kOne, t.d, x.get(), &kZero, t.d, y.get()));
    };
    const double s = ours ? run_timed(state, ours_fwd) : run_timed(state, cudnn_fwd);
    state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_fwd) / s : 1.0;
    set_gbps(state, 2.0 * 4.0 * static_cast<double>(n), s);
  });
}

// max_pool2d 3x3 stride 2 on AlexNet's pooling inputs at batch 64: [64, 64, 55, 55] ->
// [64, 64, 27, 27] (pool1), [64, 192, 27, 27] -> 13 x 13 (pool2), [64, 256, 13, 13] ->
// 6 x 6 (pool3). Ours also writes (forward, but for the no_argmax row) or reads
// (backward) the int64 argmax; cuDNN's backward instead reads x and y to find the maxima
// again.
kernels::Pool2dShape alexnet_pool_shape(int64_t C, int64_t H, int64_t N = 64) {
  kernels::Pool2dShape p{};
  p.N = N; p.C = C; p.H = H; p.W = H; p.kh = 3; p.kw = 3; p.sh = 2; p.sw = 2; p.ph = 0; p.pw = 0;
  p.Ho = kernels::pooled_size(p.H, p.kh, p.sh, p.ph, 1, false);
  p.Wo = kernels::pooled_size(p.W, p.kw, p.sw, p.pw, 1, false);
  return p;
}

// with_argmax false: the forward of a pass without a graph, which writes y alone, as
// cuDNN's does.
void bm_max_pool(benchmark::State& state, const kernels::Pool2dShape& p, bool backward, bool ours,
                 bool with_argmax = true) {
  guarded(state, [&] {
    const int64_t nx = p.N * p.C * p.H * p.W, ny = p.N * p.C * p.Ho * p.Wo;
    DeviceArray<float> x(static_cast<std::size_t>(nx)), y(static_cast<std::size_t>(ny));
    DeviceArray<float> gy(static_cast<std::size_t>(ny)), gx(static_cast<std::size_t>(nx));
    DeviceArray<int64_t> argmax(static_cast<std::size_t>(ny));
    randomize(x, 9);
    randomize(gy, 10);
    const TensorDesc xd(p.N, p.C, p.H, p.W), yd(p.N, p.C, p.Ho, p.Wo);
    const PoolDesc pool(static_cast<int>(p.kh), static_cast<int>(p.sh), 0);
    int64_t* am = with_argmax || backward ? argmax.get() : nullptr;
    auto ours_fwd = [&] { kernels::max_pool2d_forward_cuda<float>(x.get(), y.get(), am, p); };
    auto ours_bwd = [&] { kernels::max_pool2d_backward_cuda<float>(gy.get(), argmax.get(), gx.get(), p); };
    auto cudnn_fwd = [&] {
      CUDNN_CHECK(cudnnPoolingForward(cuda::cudnn_handle(), pool.d, &kOne, xd.d, x.get(), &kZero, yd.d, y.get()));
    };
    auto cudnn_bwd = [&] {
      CUDNN_CHECK(cudnnPoolingBackward(cuda::cudnn_handle(), pool.d, &kOne, yd.d, y.get(), yd.d, gy.get(), xd.d,
                                       x.get(), &kZero, xd.d, gx.get()));
    };
    const double fx = static_cast<double>(nx) * 4, fy = static_cast<double>(ny) * 4, iy = static_cast<double>(ny) * 8;
    double s = 0, bytes = 0;
    if (!backward) {
      s = ours ? run_timed(state, ours_fwd) : run_timed(state, cudnn_fwd);
      bytes = ours && am != nullptr ? fx + fy + iy : fx + fy;
      state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_fwd) / s : 1.0;
    } else {
      ours_fwd();  // argmax for our backward, y for cuDNN's
      cudnn_fwd();
      s = ours ? run_timed(state, ours_bwd) : run_timed(state, cudnn_bwd);
      bytes = ours ? fy + iy + fx : 2 * fy + 2 * fx;
      state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_bwd) / s : 1.0;
    }
    set_gbps(state, bytes, s);
  });
}

// softmax over rows of [rows, 1000] (ImageNet's classes): reads and writes once.
void bm_softmax(benchmark::State& state, int64_t rows, bool ours) {
  guarded(state, [&] {
    const int64_t K = 1000, n = rows * K;
    DeviceArray<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    randomize(x, 11);
    const TensorDesc t(rows, K, 1, 1);
    auto ours_fwd = [&] { kernels::softmax_forward_cuda<float>(x.get(), y.get(), rows, K, 1, false); };
    auto cudnn_fwd = [&] {
      CUDNN_CHECK(cudnnSoftmaxForward(cuda::cudnn_handle(), CUDNN_SOFTMAX_ACCURATE, CUDNN_SOFTMAX_MODE_INSTANCE, &kOne,
                                      t.d, x.get(), &kZero, t.d, y.get()));
    };
    const double s = ours ? run_timed(state, ours_fwd) : run_timed(state, cudnn_fwd);
    state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_fwd) / s : 1.0;
    set_gbps(state, 2.0 * 4.0 * static_cast<double>(n), s);
  });
}

// relu's backward on the same shape: gx = gy where y > 0. Ours reads gy and y and writes
// gx; cuDNN's also takes x (given y, which it may read too), so both are counted at 12
// bytes an element and compared by time.
void bm_relu_backward(benchmark::State& state, bool ours) {
  guarded(state, [&] {
    const int64_t N = 64, C = 64, H = 55, W = 55, n = N * C * H * W;
    DeviceArray<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    DeviceArray<float> gy(static_cast<std::size_t>(n)), gx(static_cast<std::size_t>(n));
    randomize(x, 12);
    randomize(gy, 13);
    kernels::relu_forward_cuda<float>(x.get(), y.get(), n);
    const TensorDesc t(N, C, H, W);
    const ReluDesc act;
    auto ours_bwd = [&] { kernels::relu_backward_cuda<float>(gy.get(), y.get(), gx.get(), n); };
    auto cudnn_bwd = [&] {
      CUDNN_CHECK(cudnnActivationBackward(cuda::cudnn_handle(), act.d, &kOne, t.d, y.get(), t.d, gy.get(), t.d,
                                          y.get(), &kZero, t.d, gx.get()));
    };
    const double s = ours ? run_timed(state, ours_bwd) : run_timed(state, cudnn_bwd);
    state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_bwd) / s : 1.0;
    set_gbps(state, 3.0 * 4.0 * static_cast<double>(n), s);
  });
}

// log-softmax over rows of 1000, forward (x read, y written) or backward (gy and y read,
// gx written), beside cuDNN's CUDNN_SOFTMAX_LOG.
void bm_log_softmax(benchmark::State& state, int64_t rows, bool backward, bool ours) {
  guarded(state, [&] {
    const int64_t K = 1000, n = rows * K;
    DeviceArray<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    DeviceArray<float> gy(static_cast<std::size_t>(n)), gx(static_cast<std::size_t>(n));
    randomize(x, 14);
    randomize(gy, 15);
    kernels::softmax_forward_cuda<float>(x.get(), y.get(), rows, K, 1, true);
    const TensorDesc t(rows, K, 1, 1);
    const cudnnHandle_t h = cuda::cudnn_handle();
    std::function<void()> ours_op, cudnn_op;
    if (backward) {
      ours_op = [&] { kernels::softmax_backward_cuda<float>(gy.get(), y.get(), gx.get(), rows, K, 1, true); };
      cudnn_op = [&] {
        CUDNN_CHECK(cudnnSoftmaxBackward(h, CUDNN_SOFTMAX_LOG, CUDNN_SOFTMAX_MODE_INSTANCE, &kOne, t.d, y.get(), t.d,
                                         gy.get(), &kZero, t.d, gx.get()));
      };
    } else {
      ours_op = [&] { kernels::softmax_forward_cuda<float>(x.get(), y.get(), rows, K, 1, true); };
      cudnn_op = [&] {
        CUDNN_CHECK(cudnnSoftmaxForward(h, CUDNN_SOFTMAX_LOG, CUDNN_SOFTMAX_MODE_INSTANCE, &kOne, t.d, x.get(), &kZero,
                                        t.d, y.get()));
      };
    }
    const double s = ours ? run_timed(state, ours_op) : run_timed(state, cudnn_op);
    state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_op) / s : 1.0;
    set_gbps(state, (backward ? 12.0 : 8.0) * static_cast<double>(n), s);
  });
}

// adaptive_avg_pool2d at batch 64: SqueezeNet's global pool ([64, 1000, 13, 13] -> 1 x 1)
// and AlexNet's ([64, 256, 6, 6] -> 6 x 6, windows of one element), beside cuDNN's average
// pooling with the same windows (13 x 13 stride 13; 1 x 1 stride 1). Forward: x read, y
// written; backward: gy read, gx written (cuDNN's backward is also handed x and y).
void bm_adaptive_avg_pool(benchmark::State& state, int64_t C, int64_t H, int64_t Ho, bool backward, bool ours) {
  guarded(state, [&] {
    const int64_t N = 64, nx = N * C * H * H, ny = N * C * Ho * Ho;
    DeviceArray<float> x(static_cast<std::size_t>(nx)), y(static_cast<std::size_t>(ny));
    DeviceArray<float> gy(static_cast<std::size_t>(ny)), gx(static_cast<std::size_t>(nx));
    randomize(x, 22);
    randomize(gy, 23);
    const TensorDesc xd(N, C, H, H), yd(N, C, Ho, Ho);
    const int k = static_cast<int>(H / Ho);
    const PoolDesc pool(k, k, 0, CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING);
    const cudnnHandle_t h = cuda::cudnn_handle();
    std::function<void()> ours_op, cudnn_op;
    if (backward) {
      ours_op = [&] { kernels::adaptive_avg_pool2d_backward_cuda<float>(gy.get(), gx.get(), N * C, H, H, Ho, Ho); };
      cudnn_op = [&] {
        CUDNN_CHECK(cudnnPoolingBackward(h, pool.d, &kOne, yd.d, y.get(), yd.d, gy.get(), xd.d, x.get(), &kZero, xd.d,
                                         gx.get()));
      };
    } else {
      ours_op = [&] { kernels::adaptive_avg_pool2d_forward_cuda<float>(x.get(), y.get(), N * C, H, H, Ho, Ho); };
      cudnn_op = [&] {
        CUDNN_CHECK(cudnnPoolingForward(h, pool.d, &kOne, xd.d, x.get(), &kZero, yd.d, y.get()));
      };
    }
    kernels::adaptive_avg_pool2d_forward_cuda<float>(x.get(), y.get(), N * C, H, H, Ho, Ho);
    const double s = ours ? run_timed(state, ours_op) : run_timed(state, cudnn_op);
    state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_op) / s : 1.0;
    set_gbps(state, 4.0 * static_cast<double>(nx + ny), s);
  });
}

// Dropout's forward (p = 0.5) on n elements: ours draws a Philox block per four elements
// and writes the mask and y (12 bytes an element counted); cuDNN's keeps its generator's
// state on the device and writes y and a reserve space of its own. Compared by time.
void bm_dropout(benchmark::State& state, int64_t n, bool ours) {
  guarded(state, [&] {
    DeviceArray<float> x(static_cast<std::size_t>(n)), mask(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    randomize(x, 24);
    const cudnnHandle_t h = cuda::cudnn_handle();
    const TensorDesc t(n, 1, 1, 1);
    const CudnnDescriptor<cudnnDropoutDescriptor_t, cudnnCreateDropoutDescriptor, cudnnDestroyDropoutDescriptor> dd;
    std::size_t state_bytes = 0, reserve_bytes = 0;
    CUDNN_CHECK(cudnnDropoutGetStatesSize(h, &state_bytes));
    CUDNN_CHECK(cudnnDropoutGetReserveSpaceSize(t.d, &reserve_bytes));
    DeviceArray<char> states(state_bytes), reserve(reserve_bytes);
    CUDNN_CHECK(cudnnSetDropoutDescriptor(dd.d, h, 0.5f, states.get(), state_bytes, 1234));
    uint64_t offset = 0;
    auto ours_op = [&] {
      kernels::dropout_forward_cuda<float>(x.get(), mask.get(), y.get(), 0.5f, 1234, offset, n);
      offset += static_cast<uint64_t>(n);
    };
    auto cudnn_op = [&] {
      CUDNN_CHECK(cudnnDropoutForward(h, dd.d, t.d, x.get(), t.d, y.get(), reserve.get(), reserve_bytes));
    };
    const double s = ours ? run_timed(state, ours_op) : run_timed(state, cudnn_op);
    state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_op) / s : 1.0;
    set_gbps(state, 12.0 * static_cast<double>(n), s);
  });
}

// The elementwise product (dropout's backward, gy * mask) over n floats, beside cuDNN's
// OpTensor multiply: both read two arrays and write one (12 bytes an element).
void bm_mul(benchmark::State& state, int64_t n, bool ours) {
  guarded(state, [&] {
    DeviceArray<float> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    randomize(a, 25);
    randomize(b, 26);
    const cudnnHandle_t h = cuda::cudnn_handle();
    const TensorDesc t(n, 1, 1, 1);
    const CudnnDescriptor<cudnnOpTensorDescriptor_t, cudnnCreateOpTensorDescriptor, cudnnDestroyOpTensorDescriptor> od;
    CUDNN_CHECK(cudnnSetOpTensorDescriptor(od.d, CUDNN_OP_TENSOR_MUL, CUDNN_DATA_FLOAT, CUDNN_NOT_PROPAGATE_NAN));
    auto ours_op = [&] { kernels::mul_cuda<float>(a.get(), b.get(), y.get(), n); };
    auto cudnn_op = [&] {
      CUDNN_CHECK(cudnnOpTensor(h, od.d, &kOne, t.d, a.get(), &kOne, t.d, b.get(), &kZero, t.d, y.get()));
    };
    const double s = ours ? run_timed(state, ours_op) : run_timed(state, cudnn_op);
    state.counters["frac_of_cudnn"] = ours ? median_seconds(cudnn_op) / s : 1.0;
    set_gbps(state, 12.0 * static_cast<double>(n), s);
  });
}

// SqueezeNet's Fire concatenation at batch 64: two [64, 64, 55, 55] expand outputs into
// [64, 128, 55, 55] (cat), or back out (split). Ours (one launch of the copy kernel) or
// a cudaMemcpy2DAsync per input, the runtime's strided copy; frac_of_same_copy compares
// either with a flat copy of the same bytes.
void bm_cat(benchmark::State& state, bool split, bool memcpy2d) {
  guarded(state, [&] {
    const int64_t N = 64, C = 64, HW = 55 * 55, half = N * C * HW;
    DeviceArray<float> a(static_cast<std::size_t>(half)), b(static_cast<std::size_t>(half));
    DeviceArray<float> y(static_cast<std::size_t>(2 * half));
    randomize(a, 27);
    randomize(b, 28);
    randomize(y, 29);
    const std::vector<int64_t> sizes = {C, C};
    const std::size_t block = static_cast<std::size_t>(C * HW) * sizeof(float), row = 2 * block;
    const double s = run_timed(state, [&] {
      if (memcpy2d) {
        float* parts[2] = {a.get(), b.get()};
        for (int k = 0; k < 2; ++k) {
          char* in_y = reinterpret_cast<char*>(y.get()) + k * block;
          if (split)
            CUDA_CHECK(cudaMemcpy2DAsync(parts[k], block, in_y, row, block, N, cudaMemcpyDeviceToDevice,
                                         kernels::cuda::stream()));
          else
            CUDA_CHECK(cudaMemcpy2DAsync(in_y, row, parts[k], block, block, N, cudaMemcpyDeviceToDevice,
                                         kernels::cuda::stream()));
        }
      } else if (split) {
        kernels::split_cuda<float>(y.get(), {a.get(), b.get()}, sizes, N, HW);
      } else {
        kernels::cat_cuda<float>({a.get(), b.get()}, sizes, y.get(), N, HW);
      }
    });
    set_gbps(state, 2.0 * 4.0 * static_cast<double>(2 * half), s);
  });
}

// Times ours_op (ours) or cublas_op for the row and sets frac_of_cublas; the engine's
// cuBLAS handle is in device pointer mode meanwhile (so that scalars and a reduction's
// result stay on the device and nothing synchronises), restored afterwards. Returns the
// row's seconds per call.
template <typename F, typename G>
double timed_beside_cublas(benchmark::State& state, bool ours, F&& ours_op, G&& cublas_op) {
  const cublasHandle_t h = cuda::cublas_handle();
  cublasPointerMode_t mode = CUBLAS_POINTER_MODE_HOST;
  CUBLAS_CHECK(cublasGetPointerMode(h, &mode));
  CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE));
  double s = 0, ref = 0;
  try {
    s = ours ? run_timed(state, ours_op) : run_timed(state, cublas_op);
    ref = ours ? median_seconds(cublas_op) : s;
  } catch (...) {
    cublasSetPointerMode(h, mode);
    throw;
  }
  CUBLAS_CHECK(cublasSetPointerMode(h, mode));
  state.counters["frac_of_cublas"] = ref / s;
  return s;
}

// y = a x + b z over n floats (add, sub, the gradient sums; 12 bytes an element), beside
// cuBLAS's y = a x + y (SAXPY: the same three streams).
void bm_axpby(benchmark::State& state, int64_t n, bool ours) {
  guarded(state, [&] {
    DeviceArray<float> x(static_cast<std::size_t>(n)), z(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    DeviceArray<float> a(1);
    randomize(x, 16);
    randomize(z, 17);
    kernels::fill_cuda<float>(a.get(), 0.5f, 1);
    const cublasHandle_t h = cuda::cublas_handle();
    const double s = timed_beside_cublas(
        state, ours, [&] { kernels::axpby_cuda<float>(0.5f, x.get(), 1.0f, z.get(), y.get(), n); },
        [&] { CUBLAS_CHECK(cublasSaxpy(h, static_cast<int>(n), a.get(), x.get(), 1, y.get(), 1)); });
    set_gbps(state, 12.0 * static_cast<double>(n), s);
  });
}

// The sum of n floats into one device element (reads 4 bytes an element), beside
// cuBLAS's sum of absolute values (SASUM: the same read).
void bm_sum_all(benchmark::State& state, int64_t n, bool ours) {
  guarded(state, [&] {
    DeviceArray<float> x(static_cast<std::size_t>(n)), y(1);
    randomize(x, 18);
    const cublasHandle_t h = cuda::cublas_handle();
    const double s = timed_beside_cublas(
        state, ours, [&] { kernels::sum_all_cuda<float>(x.get(), y.get(), 1.0f, n); },
        [&] { CUBLAS_CHECK(cublasSasum(h, static_cast<int>(n), x.get(), 1, y.get())); });
    set_gbps(state, 4.0 * static_cast<double>(n), s);
  });
}

// One SGD step with momentum and weight decay over AlexNet's 61.1 M parameters: p, g and
// the momentum buffer read, p and the buffer written (20 bytes a parameter). No library
// does this step; the copy ceiling is the reference.
void bm_sgd(benchmark::State& state) {
  guarded(state, [&] {
    const int64_t n = 61'100'840;
    DeviceArray<float> p(static_cast<std::size_t>(n)), g(static_cast<std::size_t>(n)), buf(static_cast<std::size_t>(n));
    randomize(p, 19);
    randomize(g, 20);
    randomize(buf, 21);
    const kernels::SgdParams hp{0.001, 0.9, 0.0, 0.0005, false, false};
    const double s = run_timed(state, [&] { kernels::sgd_step_cuda<float>(p.get(), g.get(), buf.get(), hp, n); });
    set_gbps(state, 20.0 * static_cast<double>(n), s);
  });
}

// ---- registration ---------------------------------------------------------------------------

template <typename F> void add(const std::string& name, F&& fn, benchmark::TimeUnit unit = benchmark::kMicrosecond) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<F>(fn))->UseManualTime()->Unit(unit);
}

void register_all() {
  add("ceiling/copy_d2d_256MiB", [](benchmark::State& st) { bm_copy(st); });
  add("ceiling/cublas_sgemm_8192", [](benchmark::State& st) { bm_cublas_sgemm(st, 8192); },
      benchmark::kMillisecond);

  std::vector<GemmShape> gemms;
  for (int64_t b : {1, 64, 128}) {
    const std::string suffix = "_b" + std::to_string(b);
    gemms.push_back({"fc6" + suffix, b, 4096, 9216, true});
    gemms.push_back({"fc7" + suffix, b, 4096, 4096, true});
    gemms.push_back({"fc8" + suffix, b, 1000, 4096, true});
  }
  gemms.push_back({"square_4096", 4096, 4096, 4096, false});
  for (const GemmShape& g : gemms)
    for (bool tiled : {false, true})
      add("gemm/" + g.name + (tiled ? "/tiled" : "/cublas"),
          [g, tiled](benchmark::State& st) { bm_gemm(st, g, tiled); });

  const ConvLayer convs[] = {{"conv1", 3, 224, 64, 11, 4, 2},
                             {"conv2", 64, 27, 192, 5, 1, 2},
                             {"conv3", 192, 13, 384, 3, 1, 1},
                             {"conv4", 384, 13, 256, 3, 1, 1},
                             {"conv5", 256, 13, 256, 3, 1, 1}};
  for (const ConvLayer& l : convs)
    for (bool im2col : {false, true})
      add("conv/" + l.name + "_b64" + (im2col ? "/im2col" : "/cudnn"),
          [l, im2col](benchmark::State& st) { bm_conv(st, l, 64, im2col); }, benchmark::kMillisecond);

  // Each of ours beside cuDNN's.
  auto pair = [](const std::string& name, const std::function<void(benchmark::State&, bool)>& bm) {
    for (bool ours : {false, true})
      add(name + (ours ? "/ours" : "/cudnn"), [bm, ours](benchmark::State& st) { bm(st, ours); });
  };
  pair("relu/64x64x55x55", bm_relu);
  // pool1 also at batch 256 (342 MB through our backward): past the L2, as the copy
  // ceiling's 256 MiB.
  for (const auto& [N, C, H] : {std::tuple<int64_t, int64_t, int64_t>{64, 64, 55}, {64, 192, 27}, {64, 256, 13},
                                {256, 64, 55}}) {
    const kernels::Pool2dShape p = alexnet_pool_shape(C, H, N);
    const std::string shape = "/" + std::to_string(N) + "x" + std::to_string(C) + "x" + std::to_string(H) + "x" +
                              std::to_string(H) + "_k3s2";
    pair("max_pool2d_fwd" + shape, [p](benchmark::State& st, bool ours) { bm_max_pool(st, p, false, ours); });
    pair("max_pool2d_bwd" + shape, [p](benchmark::State& st, bool ours) { bm_max_pool(st, p, true, ours); });
    pair("max_pool2d_fwd_no_argmax" + shape,
         [p](benchmark::State& st, bool ours) { bm_max_pool(st, p, false, ours, false); });
  }
  // 65536 rows (262 MB each way): past the L2, the size of the copy ceiling's.
  for (int64_t rows : {128, 8192, 65536})
    pair("softmax_fwd/" + std::to_string(rows) + "x1000",
         [rows](benchmark::State& st, bool ours) { bm_softmax(st, rows, ours); });
  pair("relu_bwd/64x64x55x55", bm_relu_backward);
  for (int64_t rows : {8192, 65536})
    for (bool backward : {false, true})
      pair(std::string(backward ? "log_softmax_bwd" : "log_softmax_fwd") + "/" + std::to_string(rows) + "x1000",
           [rows, backward](benchmark::State& st, bool ours) { bm_log_softmax(st, rows, backward, ours); });

  for (const auto& [C, H, Ho] : {std::tuple<int64_t, int64_t, int64_t>{1000, 13, 1}, {256, 6, 6}})
    for (bool backward : {false, true}) {
      const std::string shape = "/64x" + std::to_string(C) + "x" + std::to_string(H) + "x" + std::to_string(H) +
                                "_to_" + std::to_string(Ho) + "x" + std::to_string(Ho);
      pair(std::string(backward ? "adaptive_avg_pool2d_bwd" : "adaptive_avg_pool2d_fwd") + shape,
           [C = C, H = H, Ho = Ho, backward](benchmark::State& st, bool ours) {
             bm_adaptive_avg_pool(st, C, H, Ho, backward, ours);
           });
    }
  for (int64_t n : {int64_t(128) * 9216, int64_t(1) << 25})
    pair("dropout_fwd/" + std::to_string(n), [n](benchmark::State& st, bool ours) { bm_dropout(st, n, ours); });
  pair("mul/2^25", [](benchmark::State& st, bool ours) { bm_mul(st, int64_t(1) << 25, ours); });
  add("cat/fire_expand_64x2x64x55x55/memcpy2d", [](benchmark::State& st) { bm_cat(st, false, true); });
  add("cat/fire_expand_64x2x64x55x55/ours", [](benchmark::State& st) { bm_cat(st, false, false); });
  add("split/fire_expand_64x2x64x55x55/memcpy2d", [](benchmark::State& st) { bm_cat(st, true, true); });
  add("split/fire_expand_64x2x64x55x55/ours", [](benchmark::State& st) { bm_cat(st, true, false); });

  // Against cuBLAS's nearest routines, which move the same bytes.
  const int64_t n = int64_t(1) << 25;
  for (bool ours : {false, true})
    add(std::string("axpby/2^25/") + (ours ? "ours" : "cublas_saxpy"),
        [n, ours](benchmark::State& st) { bm_axpby(st, n, ours); });
  for (bool ours : {false, true})
    add(std::string("sum_all/2^25/") + (ours ? "ours" : "cublas_sasum"),
        [n, ours](benchmark::State& st) { bm_sum_all(st, n, ours); });
  add("sgd_step/alexnet_61.1M/ours", [](benchmark::State& st) { bm_sgd(st); });
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::string device = "none (every row is skipped)";
  if (have_gpu()) {
    try {
      device = cuda::device_name(0);
    } catch (const std::exception& e) {
      device = std::string("unknown: ") + e.what();
    }
  }
  benchmark::AddCustomContext("cuda_device", device);
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
