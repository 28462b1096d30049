// conv2d and linear: shape checks, then the GEMM-based kernels.
#include <type_traits>

#include "engine/ops/common.h"
#include "kernels/common.h"
#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/reduce.h"

namespace engine {

kernels::Conv2dShape detail::conv2d_shape(const Shape& x, const Tensor& weight, const Tensor& bias, Size2 stride,
                                          Size2 padding) {
  ENGINE_CHECK(x.size() == 4, "conv2d: input must be [N, C, H, W], got shape ", shape_str(x));
  ENGINE_CHECK(weight.dim() == 4, "conv2d: weight must be [C_out, C_in, kH, kW], got shape ",
               shape_str(weight.shape()));
  ENGINE_CHECK(x[1] == weight.size(1), "conv2d: input ", shape_str(x), " has ", x[1],
               " channels but weight ", shape_str(weight.shape()), " expects ", weight.size(1));
  if (bias.defined())
    ENGINE_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "conv2d: bias ",
                 shape_str(bias.shape()), " does not match weight ", shape_str(weight.shape()));
  ENGINE_CHECK(stride.h > 0 && stride.w > 0 && padding.h >= 0 && padding.w >= 0,
               "conv2d: stride must be positive and padding non-negative");
  kernels::Conv2dShape s{};
  s.N = x[0]; s.C = x[1]; s.H = x[2]; s.W = x[3];
  s.Co = weight.size(0); s.kh = weight.size(2); s.kw = weight.size(3);
  s.sh = stride.h; s.sw = stride.w; s.ph = padding.h; s.pw = padding.w;
  ENGINE_CHECK(s.H + 2 * s.ph >= s.kh && s.W + 2 * s.pw >= s.kw, "conv2d: kernel ",
               s.kh, "x", s.kw, " is larger than the padded input ", shape_str(x));
  s.Ho = kernels::pooled_size(s.H, s.kh, s.sh, s.ph, 1, false);
  s.Wo = kernels::pooled_size(s.W, s.kw, s.sw, s.pw, 1, false);
  return s;
}

namespace {

// conv2d, then ReLU when relu_after. In float32 through oneDNN the convolution applies
// the ReLU as it writes its output (a oneDNN post-op): one pass over the output instead
// of two; with a graph, one node whose backward masks the gradient by the output first,
// as relu's does. Otherwise relu() follows conv2d() as two ops.
Tensor conv2d_impl(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride, Size2 padding,
                   bool relu_after) {
  detail::check_compatible("conv2d", x, weight);
  if (bias.defined()) detail::check_compatible("conv2d", x, bias);
  const kernels::Conv2dShape s = detail::conv2d_shape(x.shape(), weight, bias, stride, padding);

  // CUDA: cuDNN. CPU: float32 through oneDNN where the build has it; float64 (gradient
  // checks) and builds without it through im2col + GEMM.
  const bool cuda = x.device().is_cuda();
  const bool dnnl = !cuda && x.dtype() == DType::F32 && kernels::conv2d_dnnl_available();
  const bool graph = needs_graph({x, weight, bias});
  const bool fused = relu_after && dnnl;
  Tensor y = Tensor::empty({s.N, s.Co, s.Ho, s.Wo}, x.dtype(), x.device());
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* b = bias.defined() ? bias.data<T>() : nullptr;
    if (cuda) return kernels::conv2d_forward_cudnn<T>(x.data<T>(), weight.data<T>(), b, y.data<T>(), s);
    if constexpr (std::is_same_v<T, float>) {
      if (dnnl) return kernels::conv2d_forward_dnnl(x.data<T>(), weight.data<T>(), b, y.data<T>(), s, fused);
    }
    kernels::conv2d_forward_cpu<T>(x.data<T>(), weight.data<T>(), b, y.data<T>(), s);
  });
  if (!graph) return relu_after && !fused ? relu(y) : y;
  // Save only what the needed gradients read: x for the weight gradient, w for the input's.
  const Tensor sx = weight.requires_grad() ? x.detach() : Tensor();
  const Tensor sw = x.requires_grad() ? weight.detach() : Tensor();
  const Tensor mask = fused ? y.detach() : Tensor();  // the ReLU's output, for its gradient
  Tensor out = record(y, {x, weight, bias}, fused ? "conv2d_relu" : "conv2d",
                      [sx, sw, s, cuda, dnnl, mask](const Tensor& gy, const std::vector<bool>& needs) {
    Tensor g = gy;
    if (mask.defined()) {  // float32 on the CPU
      g = Tensor::empty(gy.shape(), gy.dtype(), gy.device());
      kernels::relu_backward_cpu<float>(gy.data<float>(), mask.data<float>(), g.data<float>(), gy.numel());
    }
    Tensor gx = needs[0] ? Tensor::empty({s.N, s.C, s.H, s.W}, g.dtype(), g.device()) : Tensor();
    Tensor gw = needs[1] ? Tensor::empty({s.Co, s.C, s.kh, s.kw}, g.dtype(), g.device()) : Tensor();
    Tensor gb = needs[2] ? Tensor::empty({s.Co}, g.dtype(), g.device()) : Tensor();
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* xp = needs[1] ? sx.data<T>() : nullptr;
      const T* wp = needs[0] ? sw.data<T>() : nullptr;
      T* gxp = needs[0] ? gx.data<T>() : nullptr;
      T* gwp = needs[1] ? gw.data<T>() : nullptr;
      T* gbp = needs[2] ? gb.data<T>() : nullptr;
      if (cuda) return kernels::conv2d_backward_cudnn<T>(xp, wp, g.data<T>(), gxp, gwp, gbp, s);
      if constexpr (std::is_same_v<T, float>) {
        if (dnnl) return kernels::conv2d_backward_dnnl(xp, wp, g.data<T>(), gxp, gwp, gbp, s);
      }
      kernels::conv2d_backward_cpu<T>(xp, wp, g.data<T>(), gxp, gwp, gbp, s);
    });
    return TensorList{gx, gw, gb};
  });
  return relu_after && !fused ? relu(out) : out;
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride, Size2 padding) {
  return conv2d_impl(x, weight, bias, stride, padding, false);
}

Tensor conv2d_relu(const Tensor& x, const Tensor& weight, const Tensor& bias, Size2 stride, Size2 padding) {
  return conv2d_impl(x, weight, bias, stride, padding, true);
}

Tensor conv_relu_pool(const Tensor& x, const std::vector<ConvReluPoolLayer>& layers) {
  ENGINE_CHECK(x.defined(), "conv_relu_pool: undefined input");
  ENGINE_CHECK(layers.empty() || !layers[0].pool, "conv_relu_pool: the first layer is a max-pool, with no "
               "convolution before it");
  TensorList inputs{x};
  for (const ConvReluPoolLayer& l : layers) {
    if (l.pool) continue;
    detail::check_compatible("conv_relu_pool", x, l.weight);
    if (l.bias.defined()) detail::check_compatible("conv_relu_pool", x, l.bias);
    inputs.push_back(l.weight);
    inputs.push_back(l.bias);
  }
  const bool chain = x.device().is_cpu() && x.dtype() == DType::F32 && kernels::conv2d_dnnl_available() &&
                     layers.size() > 1 && !needs_graph(inputs);
  if (!chain) {  // one op after another
    Tensor h = x;
    for (const ConvReluPoolLayer& l : layers)
      h = l.pool ? max_pool2d(h, l.kernel, l.stride, l.padding, l.ceil_mode)
                 : conv2d_relu(h, l.weight, l.bias, l.stride, l.padding);
    return h;
  }
  std::vector<kernels::DnnlChainLayer> ks(layers.size());
  Shape shape = x.shape();
  for (size_t i = 0; i < layers.size(); ++i) {
    const ConvReluPoolLayer& l = layers[i];
    kernels::DnnlChainLayer& k = ks[i];
    k.pool = l.pool;
    if (l.pool) {
      k.pool_shape = detail::max_pool2d_shape(shape, l.kernel, l.stride, l.padding, l.ceil_mode);
      shape = {k.pool_shape.N, k.pool_shape.C, k.pool_shape.Ho, k.pool_shape.Wo};
    } else {
      k.conv = detail::conv2d_shape(shape, l.weight, l.bias, l.stride, l.padding);
      k.w = l.weight.data<float>();
      k.b = l.bias.defined() ? l.bias.data<float>() : nullptr;
      k.relu = true;
      shape = {k.conv.N, k.conv.Co, k.conv.Ho, k.conv.Wo};
    }
  }
  Tensor y = Tensor::empty(shape, DType::F32, x.device());
  kernels::chain_forward_dnnl(x.data<float>(), ks, y.data<float>());
  return y;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::check_compatible("linear", x, weight);
  ENGINE_CHECK(weight.dim() == 2, "linear: weight must be [out, in], got shape ",
               shape_str(weight.shape()));
  ENGINE_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "linear: input ",
               shape_str(x.shape()), " has ", x.dim() >= 1 ? x.size(-1) : 0,
               " features but weight ", shape_str(weight.shape()), " expects ", weight.size(1));
  if (bias.defined()) {
    detail::check_compatible("linear", x, bias);
    ENGINE_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), "linear: bias ",
                 shape_str(bias.shape()), " does not match weight ", shape_str(weight.shape()));
  }
  const int64_t in = weight.size(1), out = weight.size(0), M = x.numel() / in;
  Shape yshape = x.shape();
  yshape.back() = out;
  Tensor y = Tensor::empty(yshape, x.dtype(), x.device());
  const bool cuda = x.device().is_cuda();
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yp = y.data<T>();
    // Row-major: y[M, out] = x[M, in] * W[out, in]^T, then + b per row.
    if (cuda) {
      kernels::gemm_cuda<T>(false, true, M, out, in, T(1), x.data<T>(), in, weight.data<T>(), in,
                            T(0), yp, out);
      if (bias.defined()) kernels::add_bias_cuda<T>(yp, bias.data<T>(), M, out, 1);
      return;
    }
    if (bias.defined()) {  // y = b, then the GEMM accumulates into it (beta = 1)
      const T* b = bias.data<T>();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t o = 0; o < out; ++o) yp[m * out + o] = b[o];
    }
    kernels::gemm_cpu<T>(false, true, M, out, in, T(1), x.data<T>(), in, weight.data<T>(), in,
                         bias.defined() ? T(1) : T(0), yp, out);
  });
  if (!needs_graph({x, weight, bias})) return y;
  const Tensor sx = weight.requires_grad() ? x.detach() : Tensor();
  const Tensor sw = x.requires_grad() ? weight.detach() : Tensor();
  const Shape xshape = x.shape();
  return record(y, {x, weight, bias}, "linear",
                [sx, sw, xshape, M, in, out, cuda](const Tensor& g, const std::vector<bool>& needs) {
    TensorList grads(3);
    dispatch_dtype(g.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const auto gemm = cuda ? kernels::gemm_cuda<T> : kernels::gemm_cpu<T>;
      if (needs[0]) {  // gx[M, in] = g[M, out] * W[out, in]
        grads[0] = Tensor::empty(xshape, g.dtype(), g.device());
        gemm(false, false, M, in, out, T(1), g.data<T>(), out, sw.data<T>(), in, T(0),
             grads[0].data<T>(), in);
      }
      if (needs[1]) {  // gW[out, in] = g[M, out]^T * x[M, in]
        grads[1] = Tensor::empty({out, in}, g.dtype(), g.device());
        gemm(true, false, out, in, M, T(1), g.data<T>(), out, sx.data<T>(), in, T(0),
             grads[1].data<T>(), in);
      }
      if (needs[2]) {  // gb[out] = sum over rows of g
        grads[2] = Tensor::empty({out}, g.dtype(), g.device());
        if (cuda) kernels::bias_grad_cuda<T>(g.data<T>(), grads[2].data<T>(), M, out, 1);
        else kernels::sum_dim_cpu<T>(g.data<T>(), grads[2].data<T>(), 1, M, out);
      }
    });
    return grads;
  });
}

}  // namespace engine
