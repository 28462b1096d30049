// float32 conv2d through oneDNN (Debian's libdnnl), the CPU counterpart of cuDNN on the
// GPU: forward (optionally with a ReLU post-op), backward-data and backward-weights (with
// the bias gradient). The primitives choose their own blocked layouts (format "any");
// activations and weights are reordered from and to the engine's NCHW / OIHW around each
// call. A run of layers (chain_forward_dnnl: convolutions and max-pools, forward only)
// stays in the blocked layout between its layers. The data gradient of a convolution
// with few input channels goes to im2col + GEMM, which is faster there.
//
// Everything a call needs besides the data is made once per shape and kept: the
// primitive descriptors, the primitives and the reorders (oneDNN would find the compiled
// kernels in its own cache, but a primitive descriptor is searched for anew each time it
// is made). The blocked copies live in three scratch buffers that grow to the largest
// shape seen and are reused by every call: fresh buffers of tens of MB per call cost a
// page fault per 4 KiB page, every time. Calls are serialised by one lock (the scratch
// buffers and caches are shared), which costs nothing here: each call already uses every
// core.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/conv.h"
#include "kernels/cpu/dnnl_context.h"

namespace kernels {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;
using Fwd = dnnl::convolution_forward;
using Bwd = dnnl::convolution_backward_data;
using Bww = dnnl::convolution_backward_weights;

DnnlContext& ctx() { return dnnl_context(); }

struct Descs {
  memory::dims src, wei, bia, dst, strides, pad_l, pad_r;
};
Descs descs(const Conv2dShape& s) {
  // Symmetric padding: oneDNN's output size is then floor((H + 2p - k) / s) + 1, as here.
  return {{s.N, s.C, s.H, s.W}, {s.Co, s.C, s.kh, s.kw}, {s.Co}, {s.N, s.Co, s.Ho, s.Wo},
          {s.sh, s.sw},         {s.ph, s.pw},           {s.ph, s.pw}};
}
// The algorithm (set_dnnl_conv_algorithm). By default oneDNN picks it by shape (auto):
// Winograd F(4x4, 3x3) for 3x3 stride-1 layers where its heuristics expect it to win
// (AlexNet's conv3-conv5 from batch 16 on, 1.5-2x the direct kernels' rate in all three
// passes; absolute error about 5x the direct sum's, ~1e-6 of the output's scale), the
// direct kernels everywhere else. A prepared call is kept per shape and algorithm.
std::atomic<int> g_algorithm{static_cast<int>(DnnlConvAlgorithm::kAuto)};
DnnlConvAlgorithm current_algorithm() { return static_cast<DnnlConvAlgorithm>(g_algorithm.load()); }

// make(algorithm) -> a primitive descriptor, with `a`'s oneDNN algorithm; kWinograd falls
// back to the direct one for a shape oneDNN has no Winograd kernel for.
template <typename Make> auto with_algorithm(DnnlConvAlgorithm a, Make&& make) {
  switch (a) {
    case DnnlConvAlgorithm::kDirect:
      return make(dnnl::algorithm::convolution_direct);
    case DnnlConvAlgorithm::kWinograd:
      try {
        return make(dnnl::algorithm::convolution_winograd);
      } catch (const dnnl::error&) {
        return make(dnnl::algorithm::convolution_direct);
      }
    case DnnlConvAlgorithm::kAuto:
      break;
  }
  return make(dnnl::algorithm::convolution_auto);
}

memory::desc any(const memory::dims& d) { return memory::desc(d, dt::f32, tag::any); }
memory::desc nchw(const memory::dims& d) { return memory::desc(d, dt::f32, tag::nchw); }
memory::desc oihw(const memory::dims& d) { return memory::desc(d, dt::f32, tag::oihw); }

// One scratch buffer, 64-byte aligned, grown (never shrunk) to the largest request.
class Scratch {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      const size_t rounded = (bytes + 4095) / 4096 * 4096;
      void* p = std::aligned_alloc(64, rounded);
      if (p == nullptr) throw std::bad_alloc();
      data_.reset(p);
      size_ = rounded;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> data_;
  size_t size_ = 0;
};
// The blocked copies of one call: the input-side activation (src or diff_src), the
// weights (or their gradient) and the output-side activation (dst or diff_dst).
enum Slot { kSrc, kWei, kDst, kSlots };
Scratch& scratch(Slot slot) {
  static Scratch s[kSlots];
  return s[slot];
}

// A tensor in the engine's layout (`user`), and the primitive's layout for it: when they
// differ, a reorder between them (into the primitive's layout for an input, out of it for
// an output) and the scratch slot that holds the blocked copy.
struct Operand {
  memory::desc user, want;
  std::optional<dnnl::reorder> convert;
  Slot slot = kSrc;

  Operand() = default;
  Operand(const memory::desc& user_desc, const memory::desc& want_desc, Slot s, bool input)
      : user(user_desc), want(want_desc), slot(s) {
    if (user == want) return;
    auto& eng = ctx().eng;
    convert = input ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, user, eng, want))
                    : dnnl::reorder(dnnl::reorder::primitive_desc(eng, want, eng, user));
  }
  // The memory the primitive reads or writes; an input is converted into it first, unless
  // `converted` (its slot already holds it, converted by the call before).
  memory prepare(void* data, bool input, bool converted = false) const {
    auto& eng = ctx().eng;
    memory u(user, eng, data);
    if (!convert) return u;
    memory m(want, eng, scratch(slot).get(want.get_size()));
    if (input && !converted) convert->execute(ctx().strm, u, m);
    return m;
  }
  // After the primitive ran: an output in a blocked layout is converted into `data`.
  void finish(const memory& m, void* data) const {
    if (!convert) return;
    memory u(user, ctx().eng, data);
    convert->execute(ctx().strm, const_cast<memory&>(m), u);
  }
};

struct Key {
  Conv2dShape s;
  bool bias;
  bool relu = false;  // forward only: ReLU applied to the output as a post-op
  DnnlConvAlgorithm algo = current_algorithm();
  bool operator==(const Key& o) const {
    return bias == o.bias && relu == o.relu && algo == o.algo &&
           std::memcmp(&s, &o.s, sizeof(s)) == 0;  // all int64_t: no padding
  }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    const auto* v = reinterpret_cast<const int64_t*>(&k.s);
    size_t h = (k.bias ? 0x9e3779b97f4a7c15ull : 0) ^ (k.relu ? 0x85ebca6bull : 0) ^
               (static_cast<size_t>(k.algo) << 40);
    for (size_t i = 0; i < sizeof(k.s) / sizeof(int64_t); ++i) h = (h ^ static_cast<size_t>(v[i])) * 0x100000001b3ull;
    return h;
  }
};
static_assert(sizeof(Conv2dShape) % sizeof(int64_t) == 0, "Conv2dShape is compared and hashed as int64_t words");

Fwd::primitive_desc forward_pd(const Descs& d, bool bias, bool relu, dnnl::algorithm alg) {
  const auto desc = bias ? Fwd::desc(dnnl::prop_kind::forward_training, alg, any(d.src), any(d.wei),
                                     memory::desc(d.bia, dt::f32, tag::x), any(d.dst), d.strides, d.pad_l, d.pad_r)
                         : Fwd::desc(dnnl::prop_kind::forward_training, alg, any(d.src), any(d.wei), any(d.dst),
                                     d.strides, d.pad_l, d.pad_r);
  dnnl::primitive_attr attr;
  if (relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    attr.set_post_ops(ops);
  }
  return Fwd::primitive_desc(desc, attr, ctx().eng);
}

struct Forward {
  Fwd prim;
  Operand src, wei, dst;
  std::string impl;  // oneDNN's name for the kernel it chose
  explicit Forward(const Key& k) {
    const Descs d = descs(k.s);
    const auto pd = with_algorithm(k.algo, [&](dnnl::algorithm a) { return forward_pd(d, k.bias, k.relu, a); });
    prim = Fwd(pd);
    impl = pd.impl_info_str();
    src = Operand(nchw(d.src), pd.src_desc(), kSrc, true);
    wei = Operand(oihw(d.wei), pd.weights_desc(), kWei, true);
    dst = Operand(nchw(d.dst), pd.dst_desc(), kDst, false);
  }
};

struct BackwardData {
  Bwd prim;
  Operand wei, gy, gx;
  std::string impl;
  explicit BackwardData(const Key& k) {
    const Descs d = descs(k.s);
    const auto pd = with_algorithm(k.algo, [&](dnnl::algorithm a) {
      return Bwd::primitive_desc(Bwd::desc(a, any(d.src), any(d.wei), any(d.dst), d.strides, d.pad_l, d.pad_r),
                                 ctx().eng, forward_pd(d, k.bias, false, a));
    });
    prim = Bwd(pd);
    impl = pd.impl_info_str();
    wei = Operand(oihw(d.wei), pd.weights_desc(), kWei, true);
    gy = Operand(nchw(d.dst), pd.diff_dst_desc(), kDst, true);
    gx = Operand(nchw(d.src), pd.diff_src_desc(), kSrc, false);
  }
};

struct BackwardWeights {
  Bww prim;
  Operand src, gy, gw;
  std::string impl;
  explicit BackwardWeights(const Key& k) {
    const Descs d = descs(k.s);
    const auto pd = with_algorithm(k.algo, [&](dnnl::algorithm a) {
      const auto desc = k.bias ? Bww::desc(a, any(d.src), any(d.wei), memory::desc(d.bia, dt::f32, tag::x),
                                           any(d.dst), d.strides, d.pad_l, d.pad_r)
                               : Bww::desc(a, any(d.src), any(d.wei), any(d.dst), d.strides, d.pad_l, d.pad_r);
      return Bww::primitive_desc(desc, ctx().eng, forward_pd(d, k.bias, false, a));
    });
    prim = Bww(pd);
    impl = pd.impl_info_str();
    src = Operand(nchw(d.src), pd.src_desc(), kSrc, true);
    gy = Operand(nchw(d.dst), pd.diff_dst_desc(), kDst, true);
    gw = Operand(oihw(d.wei), pd.diff_weights_desc(), kWei, false);
  }
};

// The prepared calls of each shape. A program sees a handful of shapes; a cache is
// emptied if it ever holds more than kMaxShapes (a caller cycling through many sizes).
constexpr size_t kMaxShapes = 256;
template <typename T> using Cache = std::unordered_map<Key, std::unique_ptr<T>, KeyHash>;
template <typename T> T& prepared(Cache<T>& cache, const Key& k) {
  auto it = cache.find(k);
  if (it != cache.end()) return *it->second;
  if (cache.size() >= kMaxShapes) cache.clear();
  return *cache.emplace(k, std::make_unique<T>(k)).first->second;
}
struct Caches {
  Cache<Forward> forward;
  Cache<BackwardData> data;
  Cache<BackwardWeights> weights;
};
// Made after the engine (ctx()), so destroyed before it at exit: the primitives go first.
Caches& caches() {
  ctx();
  static Caches c;
  return c;
}

// Input channels up to which the data gradient goes to im2col + GEMM instead.
constexpr int64_t kFewChannels = 4;

std::mutex& mu() {
  static std::mutex m;
  return m;
}

// ---- a run of layers in the blocked layout ----------------------------------------------

// The shapes of a run, as words: what a prepared run is found by.
std::vector<int64_t> chain_key(const std::vector<DnnlChainLayer>& layers, DnnlConvAlgorithm algo) {
  std::vector<int64_t> k{static_cast<int64_t>(algo)};
  for (const DnnlChainLayer& l : layers) {
    k.push_back(l.pool ? 1 : (2 + (l.b != nullptr) + 2 * l.relu));
    const auto* v = l.pool ? reinterpret_cast<const int64_t*>(&l.pool_shape) : reinterpret_cast<const int64_t*>(&l.conv);
    const size_t n = (l.pool ? sizeof(l.pool_shape) : sizeof(l.conv)) / sizeof(int64_t);
    k.insert(k.end(), v, v + n);
  }
  return k;
}
static_assert(sizeof(Pool2dShape) % sizeof(int64_t) == 0, "Pool2dShape is read as int64_t words");
struct ChainKeyHash {
  size_t operator()(const std::vector<int64_t>& k) const {
    size_t h = 0xcbf29ce484222325ull;
    for (int64_t v : k) h = (h ^ static_cast<size_t>(v)) * 0x100000001b3ull;
    return h;
  }
};

struct ChainStep {
  std::optional<dnnl::reorder> to_src;  // the previous result into this layer's layout
  memory::desc src, dst;
  dnnl::primitive prim;
  Operand wei;  // a convolution's weights, from OIHW
};

struct Chain {
  memory::desc in, out;  // NCHW
  std::vector<ChainStep> steps;
  dnnl::reorder to_out;
  size_t bytes = 0;  // the largest blocked activation

  Chain(const std::vector<DnnlChainLayer>& layers, DnnlConvAlgorithm algo) {
    auto& eng = ctx().eng;
    const DnnlChainLayer& first = layers.front();
    in = first.pool ? nchw({first.pool_shape.N, first.pool_shape.C, first.pool_shape.H, first.pool_shape.W})
                    : nchw({first.conv.N, first.conv.C, first.conv.H, first.conv.W});
    memory::desc prev = in;
    for (const DnnlChainLayer& l : layers) {
      ChainStep st;
      if (l.pool) {
        const Pool2dShape& p = l.pool_shape;
        // oneDNN's output size is floor((H + pad_l + pad_r - k) / s) + 1: pad_r makes it
        // the engine's (ceil_mode included); padding never wins a max in oneDNN either.
        const int64_t rh = std::max<int64_t>(0, (p.Ho - 1) * p.sh + p.kh - p.H - p.ph);
        const int64_t rw = std::max<int64_t>(0, (p.Wo - 1) * p.sw + p.kw - p.W - p.pw);
        const dnnl::pooling_forward::primitive_desc pd(
            dnnl::pooling_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::pooling_max, prev,
                                        any({p.N, p.C, p.Ho, p.Wo}), {p.sh, p.sw}, {p.kh, p.kw}, {p.ph, p.pw},
                                        {rh, rw}),
            eng);
        st.src = pd.src_desc();
        st.dst = pd.dst_desc();
        st.prim = dnnl::pooling_forward(pd);
      } else {
        const Descs d = descs(l.conv);
        const auto pd = with_algorithm(algo, [&](dnnl::algorithm a) { return forward_pd(d, l.b != nullptr, l.relu, a); });
        st.src = pd.src_desc();
        st.dst = pd.dst_desc();
        st.wei = Operand(oihw(d.wei), pd.weights_desc(), kWei, true);
        st.prim = Fwd(pd);
      }
      if (st.src != prev) st.to_src = dnnl::reorder(dnnl::reorder::primitive_desc(eng, prev, eng, st.src));
      bytes = std::max({bytes, st.src.get_size(), st.dst.get_size()});
      prev = st.dst;
      steps.push_back(std::move(st));
    }
    out = nchw(prev.dims());
    to_out = dnnl::reorder(dnnl::reorder::primitive_desc(eng, prev, eng, out));
  }
};

// Two buffers for the blocked activations, used in turn.
Scratch& chain_buffer(int i) {
  static Scratch s[2];
  return s[i];
}

struct ChainCache {
  std::unordered_map<std::vector<int64_t>, std::unique_ptr<Chain>, ChainKeyHash> map;
};
ChainCache& chain_cache() {
  ctx();
  static ChainCache c;
  return c;
}

}  // namespace

void chain_forward_dnnl(const float* x, const std::vector<DnnlChainLayer>& layers, float* y) {
  if (layers.empty()) throw std::invalid_argument("chain_forward_dnnl: no layers");
  std::lock_guard<std::mutex> lock(mu());
  auto& map = chain_cache().map;
  const DnnlConvAlgorithm algo = current_algorithm();
  std::vector<int64_t> key = chain_key(layers, algo);
  auto it = map.find(key);
  if (it == map.end()) {
    if (map.size() >= kMaxShapes) map.clear();
    it = map.emplace(std::move(key), std::make_unique<Chain>(layers, algo)).first;
  }
  const Chain& c = *it->second;
  auto& eng = ctx().eng;
  auto& strm = ctx().strm;
  memory cur(c.in, eng, const_cast<float*>(x));
  int held = -1;  // the buffer that holds cur (-1: the caller's x)
  auto other = [&held] { return held == 0 ? 1 : 0; };
  for (size_t i = 0; i < c.steps.size(); ++i) {
    const ChainStep& st = c.steps[i];
    if (st.to_src) {
      const int t = other();
      memory m(st.src, eng, chain_buffer(t).get(c.bytes));
      st.to_src->execute(strm, cur, m);
      cur = m;
      held = t;
    }
    const int o = other();
    memory dst(st.dst, eng, chain_buffer(o).get(c.bytes));
    if (layers[i].pool) {
      st.prim.execute(strm, {{DNNL_ARG_SRC, cur}, {DNNL_ARG_DST, dst}});
    } else {
      const DnnlChainLayer& l = layers[i];
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, cur},
                                           {DNNL_ARG_WEIGHTS, st.wei.prepare(const_cast<float*>(l.w), true)},
                                           {DNNL_ARG_DST, dst}};
      if (l.b != nullptr) args[DNNL_ARG_BIAS] = memory({{l.conv.Co}, dt::f32, tag::x}, eng, const_cast<float*>(l.b));
      st.prim.execute(strm, args);
    }
    cur = dst;
    held = o;
  }
  memory out(c.out, eng, y);
  c.to_out.execute(strm, cur, out);
  strm.wait();
}

bool conv2d_dnnl_available() { return true; }

void set_dnnl_conv_algorithm(DnnlConvAlgorithm a) { g_algorithm.store(static_cast<int>(a)); }
DnnlConvAlgorithm dnnl_conv_algorithm() { return current_algorithm(); }

DnnlConvImplementations conv2d_dnnl_implementations(const Conv2dShape& s, bool bias) {
  std::lock_guard<std::mutex> lock(mu());
  return {prepared(caches().forward, Key{s, bias}).impl, prepared(caches().data, Key{s, false}).impl,
          prepared(caches().weights, Key{s, bias}).impl};
}

void conv2d_forward_dnnl(const float* x, const float* w, const float* b, float* y, const Conv2dShape& s,
                         bool relu) {
  std::lock_guard<std::mutex> lock(mu());
  const Forward& f = prepared(caches().forward, Key{s, b != nullptr, relu});
  const memory src = f.src.prepare(const_cast<float*>(x), true);
  const memory wei = f.wei.prepare(const_cast<float*>(w), true);
  const memory dst = f.dst.prepare(y, false);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (b != nullptr) args[DNNL_ARG_BIAS] = memory({{s.Co}, dt::f32, tag::x}, ctx().eng, const_cast<float*>(b));
  f.prim.execute(ctx().strm, args);
  f.dst.finish(dst, y);
  ctx().strm.wait();
}

void conv2d_backward_dnnl(const float* x, const float* w, const float* gy, float* gx, float* gw, float* gb,
                          const Conv2dShape& s) {
  std::lock_guard<std::mutex> lock(mu());
  auto& strm = ctx().strm;
  const BackwardData* data = nullptr;
  if (gx != nullptr && s.C <= kFewChannels) {
    // oneDNN's data gradient has no blocked kernel for a few input channels (conv1: 3);
    // im2col's GEMM + col2im is 2-3x faster there (3.4 against 1.05 ms for AlexNet's
    // conv1 at batch 1, 241 against 117 ms at batch 64).
    conv2d_backward_cpu<float>(nullptr, w, gy, gx, nullptr, nullptr, s);
  } else if (gx != nullptr) {
    const BackwardData& p = prepared(caches().data, Key{s, false});
    data = &p;
    const memory wei = p.wei.prepare(const_cast<float*>(w), true);
    const memory gyy = p.gy.prepare(const_cast<float*>(gy), true);
    const memory gxx = p.gx.prepare(gx, false);
    p.prim.execute(strm, {{DNNL_ARG_DIFF_DST, gyy}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, gxx}});
    p.gx.finish(gxx, gx);
  }
  if (gw != nullptr) {
    const BackwardWeights& p = prepared(caches().weights, Key{s, gb != nullptr});
    const memory src = p.src.prepare(const_cast<float*>(x), true);
    // The blocked copy of gy that the data gradient made is still in its slot (that call
    // wrote only gx's slot): used again when both want the same layout.
    const bool gy_ready = data != nullptr && data->gy.convert && p.gy.convert && data->gy.want == p.gy.want;
    const memory gyy = p.gy.prepare(const_cast<float*>(gy), true, gy_ready);
    const memory gww = p.gw.prepare(gw, false);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, gyy}, {DNNL_ARG_DIFF_WEIGHTS, gww}};
    if (gb != nullptr) args[DNNL_ARG_DIFF_BIAS] = memory({{s.Co}, dt::f32, tag::x}, ctx().eng, gb);
    p.prim.execute(strm, args);
    p.gw.finish(gww, gw);
  } else if (gb != nullptr) {
    for (int64_t o = 0; o < s.Co; ++o) {
      double acc = 0;
      for (int64_t n = 0; n < s.N; ++n)
        for (int64_t p = 0; p < s.Ho * s.Wo; ++p) acc += gy[(n * s.Co + o) * s.Ho * s.Wo + p];
      gb[o] = static_cast<float>(acc);
    }
  }
  strm.wait();
}

}  // namespace kernels
