// CUDA conv2d (kernels/conv.h), NCHW, no groups, no dilation. 2*N*Co*C*kh*kw*Ho*Wo flops
// per pass (forward, backward-data, backward-filter), so the convolutions are
// compute-bound; im2col/col2im and the bias are memory-bound (one read and one write of
// the column matrix, kh*kw reads of x per column entry through the cache).
//
// cuDNN path: the legacy convolution API (cudnn_cnn.h, still in cuDNN 9). The algorithm
// for a (shape, dtype, direction, deterministic, TF32) key is chosen once, by
// cudnnFind*AlgorithmEx on the caller's buffers (cudnnGet*_v7 heuristics if Find fails),
// as the fastest one that succeeds, fits the workspace limit, is not a non-fused Winograd
// one (see pick), is deterministic when set_cudnn_deterministic(true), and, for float
// without TF32, uses no tensor-op math; it is cached with its workspace size and math
// type. The execution workspace is one device buffer from the caching allocator, grown
// when a larger algorithm needs it.
// Float convolutions use CUDNN_FMA_MATH (FP32-exact, like gemm_cuda) unless
// kernels::cuda_allow_tf32(), then CUDNN_DEFAULT_MATH (which lets cuDNN use TF32 on
// sm_80+, as PyTorch's allow_tf32 does).
// The legacy descriptors use int sizes: a batch whose tensors pass 2^31 elements runs
// in chunks of images (the filter gradient and bias gradient then accumulate, beta = 1).
//
// im2col path: im2col into a device buffer, gemm_cuda, bias in a small kernel. Several
// images' columns sit side by side ([C*kh*kw, nb*Ho*Wo]) so that each GEMM is wide even
// for small outputs, as on the CPU. col2im gathers: one thread per x element sums the
// column entries that map to it, so it needs no atomics and is deterministic.
#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/conv.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda_runtime.h"
#include "kernels/gemm.h"

namespace kernels {
namespace {

std::atomic<bool> g_deterministic{false};

bool degenerate(const Conv2dShape& s) {
  return s.N <= 0 || s.C <= 0 || s.H <= 0 || s.W <= 0 || s.Co <= 0 || s.kh <= 0 || s.kw <= 0 ||
         s.Ho <= 0 || s.Wo <= 0;
}

bool is_pointwise(const Conv2dShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
}

// Device memory from the caching allocator, released (in stream order) when it goes out of
// scope, so an exception on the way leaks nothing.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) { reset(bytes); }
  ~DeviceBuffer() { cuda::free_device(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // Releases the current block and allocates `bytes` (none for 0); throws when out of memory.
  void reset(std::size_t bytes) {
    cuda::free_device(p_);
    p_ = nullptr;
    bytes_ = 0;
    if (bytes > 0) {
      p_ = cuda::malloc_device(bytes);
      bytes_ = bytes;
    }
  }
  void* get() const { return p_; }
  std::size_t bytes() const { return bytes_; }
  template <typename T> T* as() const { return static_cast<T*>(p_); }

 private:
  void* p_ = nullptr;
  std::size_t bytes_ = 0;
};

// ---- small kernels ---------------------------------------------------------------------------

// y[r, p] += b[r % Co] over rows r = n*Co + o of P elements (b may be null: then y = 0 when
// `assign`). One block row per grid step: the bias is read once per row, y is coalesced.
template <typename T>
__global__ void bias_rows_kernel(T* __restrict__ y, const T* __restrict__ b, int64_t rows, int64_t Co,
                                 int64_t P, bool assign) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T bias = b != nullptr ? b[r % Co] : T(0);
    T* yr = y + r * P;
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x) yr[p] = assign ? bias : yr[p] + bias;
  }
}

template <typename T> void bias_rows(T* y, const T* b, int64_t rows, int64_t Co, int64_t P, bool assign) {
  if (rows <= 0 || P <= 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(rows, 65535 * 16));
  bias_rows_kernel<T><<<blocks, kThreads, 0, cuda::stream()>>>(y, b, rows, Co, P, assign);
  CUDA_CHECK_LAUNCH();
}

// y[(n0+k)*Co + o, p] = out[o, k*P + p] + b[o]: a chunk's GEMM result [Co, nb*P] back to NCHW.
template <typename T>
__global__ void scatter_bias_kernel(const T* __restrict__ out, T* __restrict__ y, const T* __restrict__ b,
                                    int64_t nb, int64_t Co, int64_t P) {
  const int64_t rows = nb * Co, ld = nb * P;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t k = r / Co, o = r % Co;
    const T bias = b != nullptr ? b[o] : T(0);
    const T* src = out + o * ld + k * P;
    T* dst = y + r * P;
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x) dst[p] = src[p] + bias;
  }
}

// gb[o] = sum over n, p of gy[n, o, p], one thread per channel: only for degenerate shapes
// (C, H or W zero), where cuDNN descriptors cannot be built.
template <typename T> void bias_grad_simple(const T* gy, T* gb, int64_t N, int64_t Co, int64_t P) {
  cuda::parallel_for(Co, [=] __device__(int64_t o) {
    double acc = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t p = 0; p < P; ++p) acc += static_cast<double>(gy[(n * Co + o) * P + p]);
    gb[o] = static_cast<T>(acc);
  });
}

template <typename T> void zero_device(T* p, int64_t n) {
  if (p != nullptr && n > 0)
    CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof(T) * static_cast<std::size_t>(n), cuda::stream()));
}

// The shapes cuDNN cannot describe (a zero extent): y = b broadcast (every tap reads
// padding or there are no channels), gx = 0, gW = 0, gb = sum of gy.
template <typename T> void forward_degenerate(const T* b, T* y, const Conv2dShape& s) {
  const int64_t P = std::max<int64_t>(s.Ho, 0) * std::max<int64_t>(s.Wo, 0);
  if (s.N > 0 && s.Co > 0 && P > 0) bias_rows(y, b, s.N * s.Co, s.Co, P, /*assign=*/true);
}
template <typename T> void backward_degenerate(const T* gy, T* gx, T* gw, T* gb, const Conv2dShape& s) {
  const int64_t P = std::max<int64_t>(s.Ho, 0) * std::max<int64_t>(s.Wo, 0);
  zero_device(gx, std::max<int64_t>(s.N, 0) * s.C * s.H * s.W);
  zero_device(gw, s.Co * s.C * s.kh * s.kw);
  if (gb != nullptr && s.Co > 0) {
    if (s.N > 0 && P > 0)
      bias_grad_simple(gy, gb, s.N, s.Co, P);
    else
      zero_device(gb, s.Co);
  }
}

// ---- im2col / col2im ---------------------------------------------------------------------------

// col[r*ld + k*P + p] for rows r = (c*kh + i)*kw + j, images k < nb of the chunk, p = oh*Wo + ow:
// x[k][c][oh*sh - ph + i][ow*sw - pw + j], 0 outside. Consecutive threads walk p, so the
// writes are coalesced. I is int when every index fits (64-bit division is slow).
template <typename T, typename I>
__global__ void im2col_kernel(const T* __restrict__ x, T* __restrict__ col, I C, I H, I W, I kh, I kw, I sh,
                              I sw, I ph, I pw, I Ho, I Wo, I nb, I ld) {
  const I P = Ho * Wo, cols = nb * P, total = C * kh * kw * cols;
  const I image = C * H * W;
  for (I idx = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<I>(blockDim.x) * gridDim.x) {
    const I r = idx / cols, q = idx - r * cols;
    const I k = q / P, p = q - k * P;
    const I oh = p / Wo, ow = p - oh * Wo;
    const I j = r % kw, i = (r / kw) % kh, c = r / (kw * kh);
    const I ih = oh * sh - ph + i, iw = ow * sw - pw + j;
    col[r * ld + q] = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? x[k * image + (c * H + ih) * W + iw] : T(0);
  }
}

// x[c][ih][iw] += sum of col[((c*kh + i)*kw + j)*ld + oh*Wo + ow] over the (i, j, oh, ow) with
// ih = oh*sh - ph + i, iw = ow*sw - pw + j. For a fixed ih the valid oh are those with
// 0 <= ih + ph - oh*sh < kh, i.e. oh in [oh_lo, oh_hi), and likewise ow.
template <typename T, typename I>
__global__ void col2im_kernel(const T* __restrict__ col, T* __restrict__ x, I C, I H, I W, I kh, I kw, I sh,
                              I sw, I ph, I pw, I Ho, I Wo, I ld) {
  const I total = C * H * W;
  for (I idx = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<I>(blockDim.x) * gridDim.x) {
    const I iw = idx % W, ih = (idx / W) % H, c = idx / (W * H);
    const I hp = ih + ph, wp = iw + pw;
    const I oh_lo = hp < kh ? 0 : (hp - kh) / sh + 1, oh_hi = min(hp / sh + 1, Ho);
    const I ow_lo = wp < kw ? 0 : (wp - kw) / sw + 1, ow_hi = min(wp / sw + 1, Wo);
    T sum = T(0);
    for (I oh = oh_lo; oh < oh_hi; ++oh) {
      const I i = hp - oh * sh;
      const T* row = col + ((c * kh + i) * kw) * ld + oh * Wo;
      for (I ow = ow_lo; ow < ow_hi; ++ow) sum += row[(wp - ow * sw) * ld + ow];
    }
    x[idx] += sum;
  }
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// Whether a grid-stride loop over `total` items, and every index it forms (each bounded by
// one of `extents`), can use int: the loop index itself reaches total + the grid's threads.
bool int_indexable(int64_t total, unsigned blocks, int threads, std::initializer_list<int64_t> extents) {
  if (!fits_int(total + static_cast<int64_t>(blocks) * threads)) return false;
  for (int64_t e : extents)
    if (!fits_int(e)) return false;
  return true;
}

// im2col of nb consecutive images x[0..nb) into col, image k's columns at k*Ho*Wo, rows ld apart.
template <typename T> void im2col_batch(const T* x, T* col, const Conv2dShape& s, int64_t ld, int64_t nb) {
  const int64_t rows = s.C * s.kh * s.kw, P = s.Ho * s.Wo, total = rows * nb * P;
  if (total <= 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = cuda::grid_for(total, kThreads);
  const bool small = int_indexable(total, blocks, kThreads,
                                   {(rows - 1) * ld + nb * P, nb * s.C * s.H * s.W, s.Ho * s.sh + s.kh + s.ph + s.H,
                                    s.Wo * s.sw + s.kw + s.pw + s.W});
  if (small)
    im2col_kernel<T, int><<<blocks, kThreads, 0, cuda::stream()>>>(
        x, col, int(s.C), int(s.H), int(s.W), int(s.kh), int(s.kw), int(s.sh), int(s.sw), int(s.ph), int(s.pw),
        int(s.Ho), int(s.Wo), int(nb), int(ld));
  else
    im2col_kernel<T, int64_t><<<blocks, kThreads, 0, cuda::stream()>>>(x, col, s.C, s.H, s.W, s.kh, s.kw, s.sh,
                                                                        s.sw, s.ph, s.pw, s.Ho, s.Wo, nb, ld);
  CUDA_CHECK_LAUNCH();
}

// ---- cuDNN -------------------------------------------------------------------------------------

template <typename T> constexpr cudnnDataType_t cudnn_type() {
  return std::is_same_v<T, float> ? CUDNN_DATA_FLOAT : CUDNN_DATA_DOUBLE;
}

int checked_int(int64_t v, const char* what) {
  if (!fits_int(v))
    throw std::runtime_error(std::string("conv2d (cuDNN): ") + what + " = " + std::to_string(v) +
                             " is outside the int range of cuDNN's descriptors");
  return static_cast<int>(v);
}

class TensorDesc {
 public:
  TensorDesc() { CUDNN_CHECK(cudnnCreateTensorDescriptor(&d_)); }
  ~TensorDesc() { cudnnDestroyTensorDescriptor(d_); }
  TensorDesc(const TensorDesc&) = delete;
  TensorDesc& operator=(const TensorDesc&) = delete;
  void set(cudnnDataType_t type, int n, int c, int h, int w) {
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(d_, CUDNN_TENSOR_NCHW, type, n, c, h, w));
  }
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

class FilterDesc {
 public:
  FilterDesc() { CUDNN_CHECK(cudnnCreateFilterDescriptor(&d_)); }
  ~FilterDesc() { cudnnDestroyFilterDescriptor(d_); }
  FilterDesc(const FilterDesc&) = delete;
  FilterDesc& operator=(const FilterDesc&) = delete;
  void set(cudnnDataType_t type, int k, int c, int h, int w) {
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(d_, type, CUDNN_TENSOR_NCHW, k, c, h, w));
  }
  cudnnFilterDescriptor_t get() const { return d_; }

 private:
  cudnnFilterDescriptor_t d_ = nullptr;
};

class ConvDesc {
 public:
  ConvDesc() { CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d_)); }
  ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d_); }
  ConvDesc(const ConvDesc&) = delete;
  ConvDesc& operator=(const ConvDesc&) = delete;
  void set(cudnnDataType_t type, int ph, int pw, int sh, int sw) {
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d_, ph, pw, sh, sw, 1, 1, CUDNN_CROSS_CORRELATION, type));
  }
  void set_math(cudnnMathType_t math) { CUDNN_CHECK(cudnnSetConvolutionMathType(d_, math)); }
  cudnnConvolutionDescriptor_t get() const { return d_; }

 private:
  cudnnConvolutionDescriptor_t d_ = nullptr;
};

// Float without TF32 must stay FP32-exact.
cudnnMathType_t exact_fp32_math() {
#if CUDNN_VERSION >= 8000
  return CUDNN_FMA_MATH;
#else
  return CUDNN_DEFAULT_MATH;
#endif
}

// The descriptors of one chunk of nb images. `exact`: float without TF32.
template <typename T> struct ConvDescs {
  TensorDesc x, y, bias;
  FilterDesc w;
  ConvDesc conv;
  bool exact = false;

  ConvDescs(const Conv2dShape& s, int64_t nb) {
    constexpr cudnnDataType_t type = cudnn_type<T>();
    const int n = checked_int(nb, "N"), c = checked_int(s.C, "C"), h = checked_int(s.H, "H"),
              wd = checked_int(s.W, "W"), co = checked_int(s.Co, "Co"), kh = checked_int(s.kh, "kh"),
              kw = checked_int(s.kw, "kw");
    checked_int(s.Co * s.C * s.kh * s.kw, "Co*C*kh*kw");
    x.set(type, n, c, h, wd);
    w.set(type, co, c, kh, kw);
    conv.set(type, checked_int(s.ph, "ph"), checked_int(s.pw, "pw"), checked_int(s.sh, "sh"),
             checked_int(s.sw, "sw"));
    exact = std::is_same_v<T, float> && !cuda_allow_tf32();
    conv.set_math(exact ? exact_fp32_math() : CUDNN_DEFAULT_MATH);
    int on = 0, oc = 0, oh = 0, ow = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv.get(), x.get(), w.get(), &on, &oc, &oh, &ow));
    if (on != n || oc != co || oh != s.Ho || ow != s.Wo)
      throw std::runtime_error("conv2d (cuDNN): output " + std::to_string(s.Ho) + "x" + std::to_string(s.Wo) +
                               " does not match the shape's " + std::to_string(oh) + "x" + std::to_string(ow));
    y.set(type, n, co, oh, ow);
    bias.set(type, 1, co, 1, 1);
  }
};

enum class Dir { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };

struct Algo {
  int algo = 0;
  std::size_t workspace = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

// Shape of the chunk, dtype, direction, deterministic, TF32.
using AlgoKey = std::tuple<std::array<int64_t, 11>, int, int, bool, bool>;

std::mutex& algo_mutex() {
  static std::mutex mu;
  return mu;
}
std::map<AlgoKey, Algo>& algo_cache() {
  static auto* cache = new std::map<AlgoKey, Algo>();  // never destroyed, like the handles
  return *cache;
}

// Find gets at most this much workspace to try algorithms with: one needing more is rarely
// the fastest and would pin that much memory for the rest of the run.
constexpr std::size_t kMaxWorkspace = std::size_t(1) << 30;

// The scratch workspace for cudnnFind*Ex: as large as the largest heuristic request
// (capped), halved until the allocation succeeds.
void allocate_find_workspace(DeviceBuffer& buf, std::size_t want) {
  want = std::min(want, kMaxWorkspace);
  while (want > 0) {
    try {
      buf.reset(want);
      return;
    } catch (const std::runtime_error&) {  // out of memory: try with less
      want = want < (std::size_t(1) << 20) ? 0 : want / 2;
    }
  }
  buf.reset(0);
}

// The non-fused Winograd algorithms lose accuracy well beyond float's: measured on an
// H200 with cuDNN 9.19 against a double reference, AlexNet's 5x5 conv2 at batch 64 is
// off by 1.0e-3 (forward), 1.5e-3 (backward-data) and 2.6e-3 (backward-filter) in norm,
// and its 3x3 layers by 3e-6 to 6e-6, where every other algorithm stays within 1.2e-6
// (the FFT ones within 4e-7, at about the same speed). They are never picked.
bool is_winograd_nonfused(cudnnConvolutionFwdAlgo_t a) { return a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED; }
bool is_winograd_nonfused(cudnnConvolutionBwdDataAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
}
bool is_winograd_nonfused(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
}

// The first usable result: perf arrays from Find are sorted by time, from _v7 by expected speed.
template <typename Perf>
bool pick(const std::vector<Perf>& perf, int n, std::size_t limit, bool deterministic, bool exact, Algo* out) {
  for (int i = 0; i < n && i < static_cast<int>(perf.size()); ++i) {
    const Perf& p = perf[i];
    if (p.status != CUDNN_STATUS_SUCCESS || p.memory > limit || is_winograd_nonfused(p.algo)) continue;
    if (deterministic && p.determinism != CUDNN_DETERMINISTIC) continue;
    if (exact && (p.mathType == CUDNN_TENSOR_OP_MATH || p.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
      continue;
    out->algo = static_cast<int>(p.algo);
    out->workspace = p.memory;
    out->math = p.mathType;
    return true;
  }
  return false;
}

// Runs the heuristics (for the Find workspace size, and as the fallback), then Find with
// that workspace, and picks. Find and the heuristics may each fail (the other is the
// fallback), so their statuses are kept rather than CUDNN_CHECKed; when nothing usable
// comes out of either, the error names both.
//   heuristics(count, &returned, perf*) -> cudnnStatus_t   (cudnnGet*Algorithm_v7)
//   find(count, &returned, perf*, workspace, bytes) -> cudnnStatus_t   (cudnnFind*AlgorithmEx)
template <typename Perf, typename Heuristics, typename Find>
Algo choose_algo(const char* dir, int max_count, bool det, bool exact, Heuristics heuristics, Find find) {
  max_count = std::max(max_count, 1);
  std::vector<Perf> heur(max_count), found(max_count);
  int n_heur = 0, n_found = 0;
  const cudnnStatus_t hs = heuristics(max_count, &n_heur, heur.data());
  if (hs != CUDNN_STATUS_SUCCESS) n_heur = 0;
  std::size_t want = 0;
  for (int i = 0; i < n_heur; ++i)
    if (heur[i].status == CUDNN_STATUS_SUCCESS) want = std::max(want, heur[i].memory);
  cudnnStatus_t fs;
  std::size_t limit;
  {
    DeviceBuffer ws;
    allocate_find_workspace(ws, want);
    fs = find(max_count, &n_found, found.data(), ws.get(), ws.bytes());
    limit = ws.bytes();
  }
  Algo a;
  if (fs == CUDNN_STATUS_SUCCESS && pick(found, n_found, limit, det, exact, &a)) return a;
  if (pick(heur, n_heur, kMaxWorkspace, det, exact, &a)) return a;
  throw std::runtime_error(std::string("cuDNN: no usable ") + dir + " convolution algorithm (Find: " +
                           cudnnGetErrorString(fs) + ", heuristics: " + cudnnGetErrorString(hs) +
                           (det ? ", deterministic algorithms only)" : ")"));
}

// Chooses the algorithm of one direction. Find runs the candidates on the given buffers and
// overwrites `out` (callers pass an output that is written afterwards).
template <typename T>
Algo find_algo(Dir dir, const ConvDescs<T>& d, const T* x, const T* w, const T* y, T* out, bool det) {
  const cudnnHandle_t h = cuda::cudnn_handle();
  int max_count = 0;
  switch (dir) {
    case Dir::kForward:
      CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &max_count));
      return choose_algo<cudnnConvolutionFwdAlgoPerf_t>(
          "forward", max_count, det, d.exact,
          [&](int count, int* returned, cudnnConvolutionFwdAlgoPerf_t* perf) {
            return cudnnGetConvolutionForwardAlgorithm_v7(h, d.x.get(), d.w.get(), d.conv.get(), d.y.get(), count,
                                                          returned, perf);
          },
          [&](int count, int* returned, cudnnConvolutionFwdAlgoPerf_t* perf, void* ws, std::size_t bytes) {
            return cudnnFindConvolutionForwardAlgorithmEx(h, d.x.get(), x, d.w.get(), w, d.conv.get(), d.y.get(),
                                                          out, count, returned, perf, ws, bytes);
          });
    case Dir::kBackwardData:
      CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &max_count));
      return choose_algo<cudnnConvolutionBwdDataAlgoPerf_t>(
          "backward-data", max_count, det, d.exact,
          [&](int count, int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf) {
            return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w.get(), d.y.get(), d.conv.get(), d.x.get(),
                                                               count, returned, perf);
          },
          [&](int count, int* returned, cudnnConvolutionBwdDataAlgoPerf_t* perf, void* ws, std::size_t bytes) {
            return cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w.get(), w, d.y.get(), y, d.conv.get(),
                                                               d.x.get(), out, count, returned, perf, ws, bytes);
          });
    case Dir::kBackwardFilter:
    default:
      CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &max_count));
      return choose_algo<cudnnConvolutionBwdFilterAlgoPerf_t>(
          "backward-filter", max_count, det, d.exact,
          [&](int count, int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
            return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x.get(), d.y.get(), d.conv.get(), d.w.get(),
                                                                 count, returned, perf);
          },
          [&](int count, int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf, void* ws, std::size_t bytes) {
            return cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x.get(), x, d.y.get(), y, d.conv.get(),
                                                                 d.w.get(), out, count, returned, perf, ws, bytes);
          });
  }
}

// The cached algorithm for this chunk shape and direction, found on first use.
template <typename T>
Algo get_algo(Dir dir, const Conv2dShape& s, int64_t nb, const ConvDescs<T>& d, const T* x, const T* w,
              const T* y, T* out) {
  const bool det = g_deterministic.load();
  const AlgoKey key{{nb, s.C, s.H, s.W, s.Co, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw},
                    static_cast<int>(cudnn_type<T>()),
                    static_cast<int>(dir),
                    det,
                    !d.exact && std::is_same_v<T, float>};
  {
    std::lock_guard<std::mutex> lock(algo_mutex());
    auto it = algo_cache().find(key);
    if (it != algo_cache().end()) return it->second;
  }
  const Algo a = find_algo<T>(dir, d, x, w, y, out, det);  // slow: not under the lock
  std::lock_guard<std::mutex> lock(algo_mutex());
  return algo_cache().emplace(key, a).first->second;
}

// The execution workspace: one buffer, grown to the largest request so far. The lock is
// held while a call that uses it is enqueued; the stream orders the uses themselves.
class Workspace {
 public:
  template <typename F> void run(std::size_t bytes, F&& f) {
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes > bytes_) {
      cuda::free_device(ptr_);  // stream-ordered: earlier queued users finish first
      ptr_ = nullptr;
      bytes_ = 0;
      ptr_ = cuda::malloc_device(bytes);
      bytes_ = bytes;
    }
    f(bytes > 0 ? ptr_ : nullptr, bytes);
  }

 private:
  std::mutex mu_;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};
Workspace& workspace() {
  static auto* ws = new Workspace();
  return *ws;
}

// Images per cuDNN call: every tensor of the call stays under 2^31 elements.
int64_t cudnn_chunk(const Conv2dShape& s) {
  const int64_t per_image = std::max(s.C * s.H * s.W, s.Co * s.Ho * s.Wo);
  const int64_t nb = std::min<int64_t>(s.N, INT_MAX / std::max<int64_t>(per_image, 1));
  if (nb < 1)
    throw std::runtime_error("conv2d (cuDNN): one image has " + std::to_string(per_image) +
                             " elements, beyond cuDNN's int range");
  return nb;
}

}  // namespace

void set_cudnn_deterministic(bool deterministic) { g_deterministic.store(deterministic); }
bool cudnn_deterministic() { return g_deterministic.load(); }

bool cudnn_may_pick(CudnnDirection direction, int algo) {
  switch (direction) {
    case CudnnDirection::kForward: return !is_winograd_nonfused(static_cast<cudnnConvolutionFwdAlgo_t>(algo));
    case CudnnDirection::kData: return !is_winograd_nonfused(static_cast<cudnnConvolutionBwdDataAlgo_t>(algo));
    case CudnnDirection::kFilter: return !is_winograd_nonfused(static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo));
  }
  return false;
}

template <typename T>
void conv2d_forward_cudnn(const T* x, const T* w, const T* b, T* y, const Conv2dShape& s) {
  if (degenerate(s)) {
    forward_degenerate(b, y, s);
    return;
  }
  const cudnnHandle_t h = cuda::cudnn_handle();
  const int64_t in_size = s.C * s.H * s.W, out_size = s.Co * s.Ho * s.Wo;
  const int64_t chunk = cudnn_chunk(s);
  const T one = T(1), zero = T(0);
  for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
    const int64_t nb = std::min(chunk, s.N - n0);
    ConvDescs<T> d(s, nb);
    const T* xc = x + n0 * in_size;
    T* yc = y + n0 * out_size;
    const Algo a = get_algo<T>(Dir::kForward, s, nb, d, xc, w, nullptr, yc);
    if (!d.exact) d.conv.set_math(a.math);
    workspace().run(a.workspace, [&](void* ws, std::size_t bytes) {
      CUDNN_CHECK(cudnnConvolutionForward(h, &one, d.x.get(), xc, d.w.get(), w, d.conv.get(),
                                          static_cast<cudnnConvolutionFwdAlgo_t>(a.algo), ws, bytes, &zero,
                                          d.y.get(), yc));
    });
    if (b != nullptr) CUDNN_CHECK(cudnnAddTensor(h, &one, d.bias.get(), b, &one, d.y.get(), yc));
  }
}

template <typename T>
void conv2d_backward_cudnn(const T* x, const T* w, const T* gy, T* gx, T* gw, T* gb, const Conv2dShape& s) {
  if (gx == nullptr && gw == nullptr && gb == nullptr) return;
  if (degenerate(s)) {
    backward_degenerate(gy, gx, gw, gb, s);
    return;
  }
  const cudnnHandle_t h = cuda::cudnn_handle();
  const int64_t in_size = s.C * s.H * s.W, out_size = s.Co * s.Ho * s.Wo;
  const int64_t chunk = cudnn_chunk(s);
  // Resolve every algorithm before computing anything: Find writes into the output it is
  // given, and gW accumulates over chunks (at most two chunk sizes: full and the last).
  if (gx != nullptr || gw != nullptr) {
    const int64_t sizes[2] = {chunk, s.N - (s.N - 1) / chunk * chunk};
    for (int64_t nb : sizes) {
      ConvDescs<T> d(s, nb);
      if (gx != nullptr) get_algo<T>(Dir::kBackwardData, s, nb, d, nullptr, w, gy, gx);
      if (gw != nullptr) get_algo<T>(Dir::kBackwardFilter, s, nb, d, x, nullptr, gy, gw);
    }
  }
  const T one = T(1), zero = T(0);
  for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
    const int64_t nb = std::min(chunk, s.N - n0);
    const T* beta = n0 == 0 ? &zero : &one;  // gW and gb sum over the chunks
    ConvDescs<T> d(s, nb);
    const T* xc = x + n0 * in_size;
    const T* gyc = gy + n0 * out_size;
    if (gb != nullptr) CUDNN_CHECK(cudnnConvolutionBackwardBias(h, &one, d.y.get(), gyc, beta, d.bias.get(), gb));
    if (gw != nullptr) {
      const Algo a = get_algo<T>(Dir::kBackwardFilter, s, nb, d, xc, nullptr, gyc, gw);
      if (!d.exact) d.conv.set_math(a.math);
      workspace().run(a.workspace, [&](void* ws, std::size_t bytes) {
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, d.x.get(), xc, d.y.get(), gyc, d.conv.get(),
                                                   static_cast<cudnnConvolutionBwdFilterAlgo_t>(a.algo), ws, bytes,
                                                   beta, d.w.get(), gw));
      });
    }
    if (gx != nullptr) {
      T* gxc = gx + n0 * in_size;
      const Algo a = get_algo<T>(Dir::kBackwardData, s, nb, d, nullptr, w, gyc, gxc);
      if (!d.exact) d.conv.set_math(a.math);
      workspace().run(a.workspace, [&](void* ws, std::size_t bytes) {
        CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, d.w.get(), w, d.y.get(), gyc, d.conv.get(),
                                                 static_cast<cudnnConvolutionBwdDataAlgo_t>(a.algo), ws, bytes, &zero,
                                                 d.x.get(), gxc));
      });
    }
  }
}

template <typename T> void im2col_cuda(const T* x, T* col, const Conv2dShape& s, int64_t ld) {
  im2col_batch(x, col, s, ld, 1);
}

template <typename T> void col2im_cuda(const T* col, T* x, const Conv2dShape& s, int64_t ld) {
  const int64_t total = s.C * s.H * s.W;
  if (total <= 0 || s.Ho <= 0 || s.Wo <= 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = cuda::grid_for(total, kThreads);
  const bool small = int_indexable(total, blocks, kThreads,
                                   {(s.C * s.kh * s.kw - 1) * ld + s.Ho * s.Wo, s.H + s.ph + s.kh + s.sh * s.Ho,
                                    s.W + s.pw + s.kw + s.sw * s.Wo});
  if (small)
    col2im_kernel<T, int><<<blocks, kThreads, 0, cuda::stream()>>>(
        col, x, int(s.C), int(s.H), int(s.W), int(s.kh), int(s.kw), int(s.sh), int(s.sw), int(s.ph), int(s.pw),
        int(s.Ho), int(s.Wo), int(ld));
  else
    col2im_kernel<T, int64_t><<<blocks, kThreads, 0, cuda::stream()>>>(col, x, s.C, s.H, s.W, s.kh, s.kw, s.sh,
                                                                        s.sw, s.ph, s.pw, s.Ho, s.Wo, ld);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void conv2d_forward_im2col_cuda(const T* x, const T* w, const T* b, T* y, const Conv2dShape& s) {
  if (degenerate(s)) {
    forward_degenerate(b, y, s);
    return;
  }
  const int64_t K = s.C * s.kh * s.kw, P = s.Ho * s.Wo, in_size = s.C * s.H * s.W;
  const bool pointwise = is_pointwise(s);
  // Images per GEMM: the column matrix stays around 32M elements, and its width (the GEMM's
  // N) within int.
  int64_t nb_max = std::min<int64_t>(s.N, (int64_t(1) << 25) / std::max<int64_t>(K * P, 1));
  nb_max = std::max<int64_t>(1, std::min<int64_t>(nb_max, INT_MAX / P));
  DeviceBuffer col(pointwise && nb_max == 1 ? 0 : sizeof(T) * static_cast<std::size_t>(K * P * nb_max));
  DeviceBuffer out(nb_max > 1 ? sizeof(T) * static_cast<std::size_t>(s.Co * P * nb_max) : 0);
  for (int64_t n0 = 0; n0 < s.N; n0 += nb_max) {
    const int64_t nb = std::min(nb_max, s.N - n0), ld = nb * P;
    const T* xn = x + n0 * in_size;
    if (nb_max == 1) {  // one image: y[n] = W * col(x[n]) straight into y, bias below
      const T* cols = xn;  // pointwise: x[n] is its own column matrix
      if (!pointwise) {
        im2col_batch(xn, col.as<T>(), s, P, 1);
        cols = col.as<T>();
      }
      gemm_cuda<T>(false, false, s.Co, P, K, T(1), w, K, cols, P, T(0), y + n0 * s.Co * P, P);
    } else {  // [Co, nb*P] = W * [K, nb*P], then back to NCHW with the bias
      im2col_batch(xn, col.as<T>(), s, ld, nb);
      gemm_cuda<T>(false, false, s.Co, ld, K, T(1), w, K, col.as<T>(), ld, T(0), out.as<T>(), ld);
      constexpr int kThreads = 256;
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(nb * s.Co, 65535 * 16));
      scatter_bias_kernel<T><<<blocks, kThreads, 0, cuda::stream()>>>(out.as<T>(), y + n0 * s.Co * P, b, nb, s.Co,
                                                                      P);
      CUDA_CHECK_LAUNCH();
    }
  }
  if (nb_max == 1 && b != nullptr) bias_rows(y, b, s.N * s.Co, s.Co, P, /*assign=*/false);
}

#define INSTANTIATE(T)                                                                          \
  template void conv2d_forward_cudnn<T>(const T*, const T*, const T*, T*, const Conv2dShape&);  \
  template void conv2d_backward_cudnn<T>(const T*, const T*, const T*, T*, T*, T*,              \
                                         const Conv2dShape&);                                   \
  template void im2col_cuda<T>(const T*, T*, const Conv2dShape&, int64_t);                      \
  template void col2im_cuda<T>(const T*, T*, const Conv2dShape&, int64_t);                      \
  template void conv2d_forward_im2col_cuda<T>(const T*, const T*, const T*, T*, const Conv2dShape&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace kernels
