// float32 row-major GEMM through oneDNN's matmul primitive (Debian's libdnnl). On
// AlexNet's fully connected layers at batch 64 its brgemm kernels beat OpenBLAS 0.3.21 in
// all three products of a training step (fc6 forward 167 against 128 GFLOP/s, data
// gradient 146 against 130, weight gradient 139 against 107; bench/RESULTS.md), on the
// engine's own layouts: the transposes and leading dimensions become the strides of
// oneDNN's plain memory descriptors, so nothing is reordered. alpha is an output scale, beta a sum post-op
// (beta = 0: C is written, never read, as in BLAS).
//
// One primitive per (transposes, sizes, leading dimensions, alpha, beta), made once and
// kept; calls are serialised by one lock (each call already uses every core).
#include <oneapi/dnnl/dnnl.hpp>

#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "kernels/cpu/dnnl_context.h"
#include "kernels/gemm.h"

namespace kernels {
namespace {

using dnnl::memory;
using dt = memory::data_type;

DnnlContext& ctx() { return dnnl_context(); }

struct Key {
  int64_t v[8];  // ta, tb, M, N, K, lda, ldb, ldc
  uint32_t alpha, beta;
  bool operator==(const Key& o) const { return std::memcmp(this, &o, sizeof(Key)) == 0; }
};
static_assert(sizeof(Key) == 8 * sizeof(int64_t) + 2 * sizeof(uint32_t), "Key is compared as bytes: no padding");
struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = (static_cast<size_t>(k.alpha) << 32) ^ k.beta;
    for (int64_t x : k.v) h = (h ^ static_cast<size_t>(x)) * 0x100000001b3ull;
    return h;
  }
};
uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

struct Prepared {
  memory::desc a, b, c;
  dnnl::matmul prim;
  explicit Prepared(const Key& k, float alpha, float beta) {
    const bool ta = k.v[0] != 0, tb = k.v[1] != 0;
    const int64_t M = k.v[2], N = k.v[3], K = k.v[4], lda = k.v[5], ldb = k.v[6], ldc = k.v[7];
    // Element (i, k) of op(A) is at i*lda + k, or at k*lda + i when A is stored transposed.
    a = memory::desc({M, K}, dt::f32, ta ? memory::dims{1, lda} : memory::dims{lda, 1});
    b = memory::desc({K, N}, dt::f32, tb ? memory::dims{1, ldb} : memory::dims{ldb, 1});
    c = memory::desc({M, N}, dt::f32, memory::dims{ldc, 1});
    dnnl::primitive_attr attr;
    if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
    if (beta != 0.0f) {
      dnnl::post_ops ops;
      ops.append_sum(beta);
      attr.set_post_ops(ops);
    }
    prim = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, ctx().eng));
  }
};

constexpr size_t kMaxShapes = 256;  // emptied if a program ever cycles through more
struct Cache {
  std::unordered_map<Key, std::unique_ptr<Prepared>, KeyHash> map;
  std::mutex mu;
};
// Made after the engine (ctx()), so destroyed before it at exit.
Cache& cache() {
  ctx();
  static Cache c;
  return c;
}

}  // namespace

bool gemm_dnnl_available() { return true; }

void gemm_dnnl(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  Cache& cc = cache();
  std::lock_guard<std::mutex> lock(cc.mu);
  const Key key{{ta, tb, M, N, K, lda, ldb, ldc}, bits(alpha), bits(beta)};
  auto it = cc.map.find(key);
  if (it == cc.map.end()) {
    if (cc.map.size() >= kMaxShapes) cc.map.clear();
    it = cc.map.emplace(key, std::make_unique<Prepared>(key, alpha, beta)).first;
  }
  const Prepared& p = *it->second;
  auto& eng = ctx().eng;
  memory ma(p.a, eng, const_cast<float*>(A)), mb(p.b, eng, const_cast<float*>(B)), mc(p.c, eng, C);
  p.prim.execute(ctx().strm, {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}});
  ctx().strm.wait();
}

}  // namespace kernels
