// CUDA SGD step (kernels/sgd.h), the same per-element update as the CPU loop. Memory-
// bound: reads p, g and the momentum buffer, writes p and the buffer; float arrays go
// four elements at a time (16-byte loads and stores) where every pointer allows.
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda/check.cuh"
#include "kernels/sgd.h"
#include "kernels/sgd_math.h"

namespace kernels {
namespace {

ENGINE_HD void sgd_update4(float4& p, const float4& g, float4* b, const SgdParams& h) {
  sgd_update(p.x, g.x, b ? &b->x : nullptr, h);
  sgd_update(p.y, g.y, b ? &b->y : nullptr, h);
  sgd_update(p.z, g.z, b ? &b->z : nullptr, h);
  sgd_update(p.w, g.w, b ? &b->w : nullptr, h);
}

// Float4s a thread takes per trip of its grid-stride loop, all loaded before the first
// is updated (cuda::strided_unrolled).
constexpr int kSgdUnroll = 2;

struct SgdFloat4s {
  float4 p, g, b;
};

// Thread `first` of a grid of `stride` threads: the float4s first, first + stride, ...,
// then its share of the last n % 4 elements. p, g and buf 16-byte aligned; buf may be
// null (no momentum); on the first step its old contents are not read.
ENGINE_HD void sgd_step_float4_thread(float* p, const float* g, float* buf, const SgdParams& h, int64_t n,
                                      int64_t first, int64_t stride) {
  const int64_t n4 = n >> 2;
  float4* p4 = reinterpret_cast<float4*>(p);
  const float4* g4 = reinterpret_cast<const float4*>(g);
  float4* b4 = reinterpret_cast<float4*>(buf);
  const bool read_buf = buf != nullptr && !h.first_step;
  cuda::strided_unrolled<kSgdUnroll>(
      first, stride, n4,
      [&](int64_t i) { return SgdFloat4s{p4[i], g4[i], read_buf ? b4[i] : make_float4(0.f, 0.f, 0.f, 0.f)}; },
      [&](int64_t i, SgdFloat4s v) {
        sgd_update4(v.p, v.g, buf ? &v.b : nullptr, h);
        p4[i] = v.p;
        if (buf) b4[i] = v.b;
      });
  for (int64_t i = (n4 << 2) + first; i < n; i += stride) sgd_update(p[i], g[i], buf ? &buf[i] : nullptr, h);
}

__global__ void sgd_step_float4_kernel(float* p, const float* g, float* buf, SgdParams h, int64_t n) {
  sgd_step_float4_thread(p, g, buf, h, n, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                         static_cast<int64_t>(blockDim.x) * gridDim.x);
}

constexpr int kThreads = 256;

bool float4_path(const float* p, const float* g, const float* buf) {
  return cuda::aligned16(p) && cuda::aligned16(g) && (buf == nullptr || cuda::aligned16(buf));
}

// Blocks of the float4 kernel for n floats: kSgdUnroll float4s a thread.
unsigned float4_blocks(int64_t n) { return cuda::grid_for((n / 4 + kSgdUnroll - 1) / kSgdUnroll, kThreads); }

}  // namespace

template <typename T> void sgd_step_cuda(T* p, const T* g, T* buf, const SgdParams& h, int64_t n) {
  if (n <= 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (float4_path(p, g, buf)) {
      sgd_step_float4_kernel<<<float4_blocks(n), kThreads, 0, cuda::stream()>>>(p, g, buf, h, n);
      CUDA_CHECK_LAUNCH();
      return;
    }
  }
  const SgdParams hp = h;
  cuda::parallel_for(n, [=] __device__(int64_t i) {
    sgd_update(p[i], g[i], buf ? &buf[i] : nullptr, hp);
  });
}

void sgd_step_float4_cuda_on_host(float* p, const float* g, float* buf, const SgdParams& h, int64_t n) {
  if (!float4_path(p, g, buf)) throw std::invalid_argument("sgd_step_float4_cuda_on_host: arrays not 16-byte aligned");
  if (n <= 0) return;
  const int64_t threads = static_cast<int64_t>(float4_blocks(n)) * kThreads;
  for (int64_t t = 0; t < threads; ++t) sgd_step_float4_thread(p, g, buf, h, n, t, threads);
}

template void sgd_step_cuda<float>(float*, const float*, float*, const SgdParams&, int64_t);
template void sgd_step_cuda<double>(double*, const double*, double*, const SgdParams&, int64_t);

}  // namespace kernels
