// The engine's operations, named as in PyTorch. Each runs on the device of its inputs
// (all inputs on one device, of one dtype) and records its backward when an input
// requires a gradient. Shape errors throw engine::Error naming the shapes involved.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace engine {

class Generator;

// A (height, width) pair; one number means both.
struct Size2 {
  int64_t h, w;
  Size2(int64_t v) : h(v), w(v) {}  // NOLINT(google-explicit-constructor)
  Size2(int64_t h_, int64_t w_) : h(h_), w(w_) {}
  bool operator==(const Size2& o) const { return h == o.h && w == o.w; }
};

// ---- layers ------------------------------------------------------------------------
// x [N, C, H, W], weight [Co, C, kh, kw], bias [Co] or undefined.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              Size2 stride = 1, Size2 padding = 0);
// relu(conv2d(...)); without a graph, on the CPU in float32, in one pass (the convolution
// applies the ReLU as it writes). nn::Sequential uses it for a Conv2d followed by a ReLU.
Tensor conv2d_relu(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                   Size2 stride = 1, Size2 padding = 0);
// A run of layers as nn::Sequential runs them: convolutions, each followed by a ReLU, and
// max-pools, each after a convolution. The same results as conv2d_relu and max_pool2d one
// after the other; without a graph, on the CPU in float32, in one call that keeps the
// intermediate results in oneDNN's blocked layout.
struct ConvReluPoolLayer {
  bool pool = false;
  Tensor weight, bias;  // convolution (bias may be undefined)
  Size2 stride = 1, padding = 0;
  Size2 kernel = 1;  // max-pool (with stride and padding above; stride 0: the kernel)
  bool ceil_mode = false;
};
Tensor conv_relu_pool(const Tensor& x, const std::vector<ConvReluPoolLayer>& layers);
// x [..., in], weight [out, in], bias [out] or undefined: y = x W^T + b.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
Tensor relu(const Tensor& x);
// relu whose backward follows guided backpropagation: dx = dy where x > 0 and dy > 0.
Tensor guided_relu(const Tensor& x);
// stride 0 means stride = kernel, as PyTorch's default.
Tensor max_pool2d(const Tensor& x, Size2 kernel, Size2 stride = 0, Size2 padding = 0,
                  bool ceil_mode = false);
Tensor adaptive_avg_pool2d(const Tensor& x, Size2 output_size);
// Inverted dropout with probability p when training; identity otherwise. Draws from gen
// (the default generator when null).
Tensor dropout(const Tensor& x, double p, bool training, Generator* gen = nullptr);

// ---- shape -------------------------------------------------------------------------
Tensor reshape(const Tensor& x, const Shape& shape);
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor cat(const TensorList& xs, int64_t dim = 1);

// ---- arithmetic (equal shapes) -------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, double s);
Tensor add(const Tensor& a, double s);
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }

// ---- reductions ----------------------------------------------------------------------
Tensor sum(const Tensor& x);  // all elements -> shape []
Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);
// max over dim of |x|, without a gradient (the reduction of a saliency map).
Tensor abs_max(const Tensor& x, int64_t dim, bool keepdim = false);

// ---- probabilities and losses ----------------------------------------------------------
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
// logits [N, K], integer class targets in [0, K); mean over the batch -> shape [].
Tensor cross_entropy(const Tensor& logits, const std::vector<int64_t>& targets);

}  // namespace engine
