// CUDA elementwise kernels (kernels/elementwise.h). Memory-bound: one read of each
// input and one write per element (float maps four at a time, several float4s in flight
// per thread, see map2); the per-element math is kernels/common.h's, so the CPU and CUDA
// backends compute the same values (random draws included).
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/common.h"
#include "kernels/cuda/check.cuh"
#include "kernels/elementwise.h"

namespace kernels {

using cuda::parallel_for;

namespace {

// The maps' per-element operations, op(a[i], b[i]) (a unary map ignores its second
// argument). Functors rather than lambdas, so that the float4 kernel's per-thread code
// also runs on the host (map2_float4_cuda_on_host).
struct ReluFwd {
  template <typename T> ENGINE_HD T operator()(T v, T) const { return relu_fwd(v); }
};
struct ReluBwd {
  template <typename T> ENGINE_HD T operator()(T g, T v) const { return relu_bwd(g, v); }
};
struct GuidedReluBwd {
  template <typename T> ENGINE_HD T operator()(T g, T v) const { return guided_relu_bwd(g, v); }
};
template <typename T> struct Scale {
  T a;
  ENGINE_HD T operator()(T u, T) const { return a * u; }
};
template <typename T> struct Axpby {
  T a, b;
  ENGINE_HD T operator()(T u, T v) const { return a * u + b * v; }
};
struct Mul {
  template <typename T> ENGINE_HD T operator()(T u, T v) const { return u * v; }
};

// Float4s a thread of the float4 kernel takes per trip of its grid-stride loop, all
// loaded before the first is stored (cuda::strided_unrolled).
constexpr int kMapUnroll = 4;
constexpr int kMapThreads = 256;

struct Float4Pair {
  float4 u, v;
};

// Thread `first` of `stride` threads: y[i] = op(a[i], b[i]) over float arrays, four
// elements at a time with 16-byte loads and stores (one instruction each instead of
// four), then its share of the last n % 4 one at a time. Binary false: a unary map,
// op(a[i], a[i]), reading a once (b unused). In-place use (y == a or y == b) is fine:
// each element is read before it is written, by the same thread.
template <bool Binary, typename Op>
ENGINE_HD void map2_float4_thread(const float* a, const float* b, float* y, int64_t n, const Op& op, int64_t first,
                                  int64_t stride) {
  const float4* a4 = reinterpret_cast<const float4*>(a);
  const float4* b4 = reinterpret_cast<const float4*>(b);
  float4* y4 = reinterpret_cast<float4*>(y);
  if constexpr (Binary) {
    cuda::strided_unrolled<kMapUnroll>(
        first, stride, n >> 2, [&](int64_t i) { return Float4Pair{a4[i], b4[i]}; },
        [&](int64_t i, const Float4Pair& p) {
          y4[i] = make_float4(op(p.u.x, p.v.x), op(p.u.y, p.v.y), op(p.u.z, p.v.z), op(p.u.w, p.v.w));
        });
    for (int64_t i = ((n >> 2) << 2) + first; i < n; i += stride) y[i] = op(a[i], b[i]);
  } else {
    cuda::strided_unrolled<kMapUnroll>(
        first, stride, n >> 2, [&](int64_t i) { return a4[i]; },
        [&](int64_t i, const float4& u) {
          y4[i] = make_float4(op(u.x, u.x), op(u.y, u.y), op(u.z, u.z), op(u.w, u.w));
        });
    for (int64_t i = ((n >> 2) << 2) + first; i < n; i += stride) y[i] = op(a[i], a[i]);
  }
}

template <bool Binary, typename Op>
__global__ void map2_float4_kernel(const float* a, const float* b, float* y, int64_t n, Op op) {
  map2_float4_thread<Binary>(a, b, y, n, op, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                             static_cast<int64_t>(blockDim.x) * gridDim.x);
}

// Blocks of the float4 kernel for n floats: kMapUnroll float4s a thread.
unsigned map2_float4_blocks(int64_t n) { return cuda::grid_for((n / 4 + kMapUnroll - 1) / kMapUnroll, kMapThreads); }

bool map2_float4_path(const float* a, const float* b, const float* y) {
  return cuda::aligned16(a) && (b == nullptr || cuda::aligned16(b)) && cuda::aligned16(y);
}

// y[i] = op(a[i], b[i]); b null for a unary map (op(a[i], a[i])). The float4 kernel where
// T is float and every pointer is 16-byte aligned (cached device blocks are; views into a
// tensor may not be), else one element per thread.
template <typename T, typename Op> void map2(const T* a, const T* b, T* y, int64_t n, Op op) {
  if (n <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (map2_float4_path(a, b, y)) {
      const unsigned blocks = map2_float4_blocks(n);
      if (b != nullptr)
        map2_float4_kernel<true><<<blocks, kMapThreads, 0, cuda::stream()>>>(a, b, y, n, op);
      else
        map2_float4_kernel<false><<<blocks, kMapThreads, 0, cuda::stream()>>>(a, b, y, n, op);
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  if (b == nullptr)
    parallel_for(n, [=] __device__(int64_t i) { y[i] = op(a[i], a[i]); });
  else
    parallel_for(n, [=] __device__(int64_t i) { y[i] = op(a[i], b[i]); });
}

// Dropout's float form, thread `first` of `stride` threads: a group of four elements
// (one Philox block, counter offset + g: the CPU's stream) a float4, the kMapUnroll
// loads of a trip in flight before the first draw; thread 0 also takes the last n % 4.
// A block's four words serve four elements, so the draws cost a quarter of what a draw
// an element would.
ENGINE_HD void dropout_float4_thread(const float* x, float* mask, float* y, float p, uint64_t seed, uint64_t offset,
                                     int64_t n, int64_t first, int64_t stride) {
  const float scale = dropout_scale(p);
  const float4* x4 = reinterpret_cast<const float4*>(x);
  float4* m4 = reinterpret_cast<float4*>(mask);
  float4* y4 = reinterpret_cast<float4*>(y);
  cuda::strided_unrolled<kMapUnroll>(
      first, stride, n >> 2, [&](int64_t g) { return x4[g]; },
      [&](int64_t g, const float4& u) {
        float k[4];
        dropout_keep_group(p, scale, seed, offset + static_cast<uint64_t>(g), k);
        m4[g] = make_float4(k[0], k[1], k[2], k[3]);
        y4[g] = make_float4(u.x * k[0], u.y * k[1], u.z * k[2], u.w * k[3]);
      });
  if (first == 0 && (n & 3) != 0) dropout_apply_group(x, mask, y, p, scale, seed, offset, n, n >> 2);
}

__global__ void dropout_float4_kernel(const float* x, float* mask, float* y, float p, uint64_t seed, uint64_t offset,
                                      int64_t n) {
  dropout_float4_thread(x, mask, y, p, seed, offset, n, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                        static_cast<int64_t>(blockDim.x) * gridDim.x);
}

}  // namespace

template <typename T> void relu_forward_cuda(const T* x, T* y, int64_t n) {
  map2(x, static_cast<const T*>(nullptr), y, n, ReluFwd{});
}
template <typename T> void relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n) {
  map2(gy, y, gx, n, ReluBwd{});
}
template <typename T> void guided_relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n) {
  map2(gy, y, gx, n, GuidedReluBwd{});
}
template <typename T> void axpby_cuda(T a, const T* x, T b, const T* z, T* y, int64_t n) {
  if (b == T(0) || z == nullptr)
    map2(x, static_cast<const T*>(nullptr), y, n, Scale<T>{a});
  else
    map2(x, z, y, n, Axpby<T>{a, b});
}
template <typename T> void mul_cuda(const T* a, const T* b, T* y, int64_t n) {
  map2(a, b, y, n, Mul{});
}

void map2_float4_cuda_on_host(const char* op, const float* a, const float* b, float* y, int64_t n, unsigned blocks) {
  if (!map2_float4_path(a, b, y)) throw std::invalid_argument("map2_float4_cuda_on_host: arrays not 16-byte aligned");
  if (n <= 0) return;
  const int64_t threads = static_cast<int64_t>(blocks != 0 ? blocks : map2_float4_blocks(n)) * kMapThreads;
  auto each_thread = [&](auto binary, const auto& f) {
    for (int64_t t = 0; t < threads; ++t) map2_float4_thread<decltype(binary)::value>(a, b, y, n, f, t, threads);
  };
  const std::string name = op;
  if (name == "relu") each_thread(std::false_type{}, ReluFwd{});
  else if (name == "relu_backward") each_thread(std::true_type{}, ReluBwd{});
  else throw std::invalid_argument("map2_float4_cuda_on_host: unknown op " + name);
}

void dropout_float4_cuda_on_host(const float* x, float* mask, float* y, float p, uint64_t seed, uint64_t offset,
                                 int64_t n, unsigned blocks) {
  if (!map2_float4_path(x, mask, y))
    throw std::invalid_argument("dropout_float4_cuda_on_host: arrays not 16-byte aligned");
  if (n <= 0) return;
  const int64_t threads = static_cast<int64_t>(blocks != 0 ? blocks : map2_float4_blocks(n)) * kMapThreads;
  for (int64_t t = 0; t < threads; ++t) dropout_float4_thread(x, mask, y, p, seed, offset, n, t, threads);
}

template <typename T> void fill_cuda(T* y, T value, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { y[i] = value; });
}
template <typename From, typename To> void convert_cuda(const From* x, To* y, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) { y[i] = static_cast<To>(x[i]); });
}
template <typename T>
void uniform_cuda(T* y, T lo, T hi, uint64_t seed, uint64_t offset, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) {
    y[i] = ::fma(hi - lo, philox_uniform<T>(seed, offset + static_cast<uint64_t>(i)), lo);  // as on the CPU
  });
}
template <typename T>
void normal_cuda(T* y, T mean, T std, uint64_t seed, uint64_t offset, int64_t n) {
  parallel_for(n, [=] __device__(int64_t i) {
    y[i] = mean + std * philox_normal<T>(seed, offset + static_cast<uint64_t>(i));
  });
}
template <typename T>
void dropout_forward_cuda(const T* x, T* mask, T* y, T p, uint64_t seed, uint64_t offset,
                          int64_t n) {
  if (n <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (map2_float4_path(x, mask, y)) {
      dropout_float4_kernel<<<map2_float4_blocks(n), kMapThreads, 0, cuda::stream()>>>(x, mask, y, p, seed, offset, n);
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  const T scale = dropout_scale(p);
  parallel_for(static_cast<int64_t>(dropout_counters<T>(n)), [=] __device__(int64_t g) {
    dropout_apply_group(x, mask, y, p, scale, seed, offset, n, g);
  });
}

#define INSTANTIATE(T)                                                                   \
  template void relu_forward_cuda<T>(const T*, T*, int64_t);                             \
  template void relu_backward_cuda<T>(const T*, const T*, T*, int64_t);                  \
  template void guided_relu_backward_cuda<T>(const T*, const T*, T*, int64_t);           \
  template void axpby_cuda<T>(T, const T*, T, const T*, T*, int64_t);                    \
  template void mul_cuda<T>(const T*, const T*, T*, int64_t);                            \
  template void fill_cuda<T>(T*, T, int64_t);                                            \
  template void uniform_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                  \
  template void normal_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                   \
  template void dropout_forward_cuda<T>(const T*, T*, T*, T, uint64_t, uint64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE
template void convert_cuda<float, double>(const float*, double*, int64_t);
template void convert_cuda<double, float>(const double*, float*, int64_t);

}  // namespace kernels
