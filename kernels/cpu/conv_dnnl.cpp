// float32 conv2d through oneDNN (Debian's libdnnl), the CPU counterpart of cuDNN on the
// GPU: forward, backward-data and backward-weights (with the bias gradient). The
// primitives choose their own blocked layouts (format "any"); activations and weights
// are reordered from and to the engine's NCHW / OIHW around each call. oneDNN caches the
// compiled primitives itself, keyed by shape.
#include <oneapi/dnnl/dnnl.hpp>

#include <mutex>
#include <unordered_map>

#include "kernels/conv.h"

namespace kernels {
namespace {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Context {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
};
Context& ctx() {
  static Context c;
  return c;
}

struct Descs {
  memory::dims src, wei, bia, dst, strides, pad_l, pad_r;
};
Descs descs(const Conv2dShape& s) {
  // Symmetric padding: oneDNN's output size is then floor((H + 2p - k) / s) + 1, as here.
  return {{s.N, s.C, s.H, s.W}, {s.Co, s.C, s.kh, s.kw}, {s.Co}, {s.N, s.Co, s.Ho, s.Wo},
          {s.sh, s.sw},         {s.ph, s.pw},           {s.ph, s.pw}};
}
memory::desc any(const memory::dims& d) { return memory::desc(d, dt::f32, tag::any); }

// `user` in the layout `want`: the same memory when it already is, else a reordered copy.
memory in_layout(const memory& user, const memory::desc& want) {
  if (user.get_desc() == want) return user;
  memory m(want, ctx().eng);
  dnnl::reorder(user, m).execute(ctx().strm, const_cast<memory&>(user), m);
  return m;
}

dnnl::convolution_forward::primitive_desc forward_pd(const Descs& d, bool bias) {
  using cf = dnnl::convolution_forward;
  const auto desc = bias ? cf::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                    any(d.src), any(d.wei), memory::desc(d.bia, dt::f32, tag::x), any(d.dst),
                                    d.strides, d.pad_l, d.pad_r)
                         : cf::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                    any(d.src), any(d.wei), any(d.dst), d.strides, d.pad_l, d.pad_r);
  return cf::primitive_desc(desc, ctx().eng);
}

std::mutex& mu() {
  static std::mutex m;
  return m;
}

}  // namespace

bool conv2d_dnnl_available() { return true; }

void conv2d_forward_dnnl(const float* x, const float* w, const float* b, float* y, const Conv2dShape& s) {
  std::lock_guard<std::mutex> lock(mu());
  const Descs d = descs(s);
  auto& eng = ctx().eng;
  const auto pd = forward_pd(d, b != nullptr);
  memory src_u({d.src, dt::f32, tag::nchw}, eng, const_cast<float*>(x));
  memory wei_u({d.wei, dt::f32, tag::oihw}, eng, const_cast<float*>(w));
  memory dst_u({d.dst, dt::f32, tag::nchw}, eng, y);
  memory src = in_layout(src_u, pd.src_desc()), wei = in_layout(wei_u, pd.weights_desc());
  memory dst = pd.dst_desc() == dst_u.get_desc() ? dst_u : memory(pd.dst_desc(), eng);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}};
  if (b != nullptr) args[DNNL_ARG_BIAS] = memory({d.bia, dt::f32, tag::x}, eng, const_cast<float*>(b));
  dnnl::convolution_forward(pd).execute(ctx().strm, args);
  if (dst != dst_u) dnnl::reorder(dst, dst_u).execute(ctx().strm, dst, dst_u);
  ctx().strm.wait();
}

void conv2d_backward_dnnl(const float* x, const float* w, const float* gy, float* gx, float* gw, float* gb,
                          const Conv2dShape& s) {
  std::lock_guard<std::mutex> lock(mu());
  const Descs d = descs(s);
  auto& eng = ctx().eng;
  auto& strm = ctx().strm;
  const auto fwd = forward_pd(d, gb != nullptr);
  memory gy_u({d.dst, dt::f32, tag::nchw}, eng, const_cast<float*>(gy));

  if (gx != nullptr) {
    using bd = dnnl::convolution_backward_data;
    const bd::primitive_desc pd(bd::desc(dnnl::algorithm::convolution_direct, any(d.src), any(d.wei), any(d.dst),
                                         d.strides, d.pad_l, d.pad_r),
                                eng, fwd);
    memory wei_u({d.wei, dt::f32, tag::oihw}, eng, const_cast<float*>(w));
    memory gx_u({d.src, dt::f32, tag::nchw}, eng, gx);
    memory wei = in_layout(wei_u, pd.weights_desc()), gyy = in_layout(gy_u, pd.diff_dst_desc());
    memory gxx = pd.diff_src_desc() == gx_u.get_desc() ? gx_u : memory(pd.diff_src_desc(), eng);
    bd(pd).execute(strm, {{DNNL_ARG_DIFF_DST, gyy}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, gxx}});
    if (gxx != gx_u) dnnl::reorder(gxx, gx_u).execute(strm, gxx, gx_u);
  }
  if (gw != nullptr) {
    using bw = dnnl::convolution_backward_weights;
    const auto desc = gb != nullptr
                          ? bw::desc(dnnl::algorithm::convolution_direct, any(d.src), any(d.wei),
                                     memory::desc(d.bia, dt::f32, tag::x), any(d.dst), d.strides, d.pad_l, d.pad_r)
                          : bw::desc(dnnl::algorithm::convolution_direct, any(d.src), any(d.wei), any(d.dst),
                                     d.strides, d.pad_l, d.pad_r);
    const bw::primitive_desc pd(desc, eng, fwd);
    memory src_u({d.src, dt::f32, tag::nchw}, eng, const_cast<float*>(x));
    memory gw_u({d.wei, dt::f32, tag::oihw}, eng, gw);
    memory src = in_layout(src_u, pd.src_desc()), gyy = in_layout(gy_u, pd.diff_dst_desc());
    memory gww = pd.diff_weights_desc() == gw_u.get_desc() ? gw_u : memory(pd.diff_weights_desc(), eng);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, gyy}, {DNNL_ARG_DIFF_WEIGHTS, gww}};
    if (gb != nullptr) args[DNNL_ARG_DIFF_BIAS] = memory({d.bia, dt::f32, tag::x}, eng, gb);
    bw(pd).execute(strm, args);
    if (gww != gw_u) dnnl::reorder(gww, gw_u).execute(strm, gww, gw_u);
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
