// Every legacy cuDNN convolution algorithm on AlexNet's five layers, in float32: its time
// and its error against cuDNN in float64, forward, data gradient and filter gradient, so
// that the rule kernels/cuda/conv.cu picks by (Find's fastest, no tensor-op math for
// exact FP32, never the non-fused Winograd algorithms) can be checked on any card and
// cuDNN version. Inputs: x ~ N(0, 1), w ~ N(0, 0.05^2), dy ~ N(0, 1), rounded to float
// and used in both precisions. Reference: IMPLICIT_GEMM / ALGO_0 in float64 (the
// algorithms the engine's float64 path is tested with against the CPU).
// Columns: workspace, median of 5 timed calls (CUDA events), the error relative to the
// reference's largest magnitude (as testing_util::rel_error) and in norm (||e|| / ||ref||),
// and whether the engine may pick it (Find then picks the fastest of those).
//   build/bin/cudnn_conv_algos [--batch 64] [--tf32]
// --tf32 runs float with CUDNN_DEFAULT_MATH (tensor-op TF32 allowed) instead of
// CUDNN_FMA_MATH. Without a CUDA device it says so and exits 0.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/conv.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda_runtime.h"

namespace {

namespace cuda = kernels::cuda;

struct Layer {
  const char* name;
  int c, hw, co, k, stride, pad;
};
const Layer kLayers[] = {{"conv1", 3, 224, 64, 11, 4, 2},
                         {"conv2", 64, 27, 192, 5, 1, 2},
                         {"conv3", 192, 13, 384, 3, 1, 1},
                         {"conv4", 384, 13, 256, 3, 1, 1},
                         {"conv5", 256, 13, 256, 3, 1, 1}};

// Device memory from the engine's allocator, returned on scope exit.
class Buffer {
 public:
  explicit Buffer(std::size_t bytes) : p_(bytes > 0 ? cuda::malloc_device(bytes) : nullptr) {}
  ~Buffer() { cuda::free_device(p_); }
  Buffer(Buffer&& other) noexcept : p_(other.p_) { other.p_ = nullptr; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&&) = delete;
  void* get() const { return p_; }

 private:
  void* p_;
};

// The descriptors of one layer in one precision and math type.
struct Descs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  Descs(const Layer& l, int n, int ho, cudnnDataType_t t, cudnnMathType_t math) {
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, t, n, l.c, l.hw, l.hw));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, t, CUDNN_TENSOR_NCHW, l.co, l.c, l.k, l.k));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, l.pad, l.pad, l.stride, l.stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, t));
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv, math));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, t, n, l.co, ho, ho));
  }
  ~Descs() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
  Descs(const Descs&) = delete;
  Descs& operator=(const Descs&) = delete;
};

enum Dir { kForward = 0, kData = 1, kFilter = 2 };
const char* const kDirNames[] = {"forward", "data gradient", "filter gradient"};

const char* algo_name(Dir d, int a) {
  static const char* const fwd[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                                    "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static const char* const data[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static const char* const filter[] = {"ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD", "WINOGRAD_NONFUSED",
                                       "FFT_TILING"};
  if (d == kForward) return a < 8 ? fwd[a] : "?";
  if (d == kData) return a < 6 ? data[a] : "?";
  return a < 7 ? filter[a] : "?";
}
int algo_count(Dir d) { return d == kForward ? 8 : d == kData ? 6 : 7; }
bool engine_may_pick(Dir d, int a) {
  const kernels::CudnnDirection direction = d == kForward ? kernels::CudnnDirection::kForward
                                            : d == kData  ? kernels::CudnnDirection::kData
                                                          : kernels::CudnnDirection::kFilter;
  return kernels::cudnn_may_pick(direction, a);
}

// Workspace of algorithm a in direction d; false when cuDNN does not support it here.
bool workspace_size(Dir d, int a, const Descs& g, std::size_t* bytes) {
  const cudnnHandle_t h = cuda::cudnn_handle();
  cudnnStatus_t st;
  if (d == kForward)
    st = cudnnGetConvolutionForwardWorkspaceSize(h, g.x, g.w, g.conv, g.y, cudnnConvolutionFwdAlgo_t(a), bytes);
  else if (d == kData)
    st = cudnnGetConvolutionBackwardDataWorkspaceSize(h, g.w, g.y, g.conv, g.x, cudnnConvolutionBwdDataAlgo_t(a),
                                                      bytes);
  else
    st = cudnnGetConvolutionBackwardFilterWorkspaceSize(h, g.x, g.y, g.conv, g.w,
                                                        cudnnConvolutionBwdFilterAlgo_t(a), bytes);
  return st == CUDNN_STATUS_SUCCESS;
}

// One call of algorithm a: out = conv(x, w) / data gradient of dy / filter gradient.
template <typename T>
cudnnStatus_t run(Dir d, int a, const Descs& g, const void* x, const void* w, const void* dy, void* out, void* ws,
                  std::size_t ws_bytes) {
  const cudnnHandle_t h = cuda::cudnn_handle();
  const T one = 1, zero = 0;
  if (d == kForward)
    return cudnnConvolutionForward(h, &one, g.x, x, g.w, w, g.conv, cudnnConvolutionFwdAlgo_t(a), ws, ws_bytes,
                                   &zero, g.y, out);
  if (d == kData)
    return cudnnConvolutionBackwardData(h, &one, g.w, w, g.y, dy, g.conv, cudnnConvolutionBwdDataAlgo_t(a), ws,
                                        ws_bytes, &zero, g.x, out);
  return cudnnConvolutionBackwardFilter(h, &one, g.x, x, g.y, dy, g.conv, cudnnConvolutionBwdFilterAlgo_t(a), ws,
                                        ws_bytes, &zero, g.w, out);
}

template <typename T> std::vector<double> fetch(const void* p, std::size_t n) {
  std::vector<T> v(n);
  CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return std::vector<double>(v.begin(), v.end());
}

template <typename T> Buffer upload(const std::vector<float>& v) {
  const std::vector<T> t(v.begin(), v.end());
  Buffer b(t.size() * sizeof(T));
  CUDA_CHECK(cudaMemcpy(b.get(), t.data(), t.size() * sizeof(T), cudaMemcpyHostToDevice));
  return b;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void measure_layer(const Layer& l, int n, bool tf32) {
  const int ho = (l.hw + 2 * l.pad - l.k) / l.stride + 1;
  const std::size_t nx = std::size_t(n) * l.c * l.hw * l.hw, nw = std::size_t(l.co) * l.c * l.k * l.k,
                    ny = std::size_t(n) * l.co * ho * ho;
  std::mt19937_64 gen(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> hx(nx), hw(nw), hy(ny);
  for (float& v : hx) v = normal(gen);
  for (float& v : hw) v = 0.05f * normal(gen);
  for (float& v : hy) v = normal(gen);
  const std::size_t sizes[] = {ny, nx, nw};  // each direction's output

  // The float64 references.
  std::vector<double> ref[3];
  {
    const Descs g(l, n, ho, CUDNN_DATA_DOUBLE, CUDNN_DEFAULT_MATH);
    const Buffer x = upload<double>(hx), w = upload<double>(hw), dy = upload<double>(hy);
    for (Dir d : {kForward, kData, kFilter}) {
      std::size_t ws_bytes = 0;
      if (!workspace_size(d, 0, g, &ws_bytes)) throw std::runtime_error("no float64 reference algorithm");
      Buffer ws(ws_bytes), out(sizes[d] * sizeof(double));
      CUDNN_CHECK(run<double>(d, 0, g, x.get(), w.get(), dy.get(), out.get(), ws.get(), ws_bytes));
      ref[d] = fetch<double>(out.get(), sizes[d]);
    }
  }

  const Descs g(l, n, ho, CUDNN_DATA_FLOAT, tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH);
  const Buffer x = upload<float>(hx), w = upload<float>(hw), dy = upload<float>(hy);
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  for (Dir d : {kForward, kData, kFilter}) {
    for (int a = 0; a < algo_count(d); ++a) {
      std::size_t ws_bytes = 0;
      if (!workspace_size(d, a, g, &ws_bytes) || ws_bytes > (std::size_t(4) << 30)) continue;
      Buffer ws(ws_bytes), out(sizes[d] * sizeof(float));
      if (run<float>(d, a, g, x.get(), w.get(), dy.get(), out.get(), ws.get(), ws_bytes) != CUDNN_STATUS_SUCCESS)
        continue;
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<double> got = fetch<float>(out.get(), sizes[d]);
      double max_err = 0, max_ref = 0, sq_err = 0, sq_ref = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        const double e = got[i] - ref[d][i];
        max_err = std::max(max_err, std::fabs(e));
        max_ref = std::max(max_ref, std::fabs(ref[d][i]));
        sq_err += e * e;
        sq_ref += ref[d][i] * ref[d][i];
      }
      std::vector<double> ms;
      for (int r = 0; r < 5; ++r) {
        CUDA_CHECK(cudaEventRecord(start, cuda::stream()));
        CUDNN_CHECK(run<float>(d, a, g, x.get(), w.get(), dy.get(), out.get(), ws.get(), ws_bytes));
        CUDA_CHECK(cudaEventRecord(stop, cuda::stream()));
        CUDA_CHECK(cudaEventSynchronize(stop));
        float t = 0;
        CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
        ms.push_back(t);
      }
      std::printf("| %s | %s | %s | %.1f | %.4f | %.2e | %.2e | %s |\n", l.name, kDirNames[d], algo_name(d, a),
                  ws_bytes / 1048576.0, median(ms), max_ref > 0 ? max_err / max_ref : max_err,
                  sq_ref > 0 ? std::sqrt(sq_err / sq_ref) : std::sqrt(sq_err), engine_may_pick(d, a) ? "yes" : "no");
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Every cuDNN convolution algorithm on AlexNet's layers: time and float32 error against float64"};
  int batch = 64;
  bool tf32 = false;
  app.add_option("--batch", batch, "images per call")->check(CLI::Range(1, 1024));
  app.add_flag("--tf32", tf32, "float32 with CUDNN_DEFAULT_MATH (TF32 tensor ops allowed), not CUDNN_FMA_MATH");
  CLI11_PARSE(app, argc, argv);
  if (cuda::device_count() == 0) {
    std::printf("no CUDA device: nothing measured\n");
    return 0;
  }
  try {
    std::printf("%s, cuDNN %zu (run time), batch %d, float32 %s\n\n", cuda::device_name(0).c_str(), cudnnGetVersion(),
                batch, tf32 ? "CUDNN_DEFAULT_MATH" : "CUDNN_FMA_MATH");
    std::printf("| layer | direction | algorithm | workspace MiB | ms | error / max | error in norm | engine may pick |\n");
    std::printf("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |\n");
    for (const Layer& l : kLayers) measure_layer(l, batch, tf32);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cudnn_conv_algos: %s\n", e.what());
    return 1;
  }
  return 0;
}
