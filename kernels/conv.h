// conv2d by im2col + GEMM, NCHW, no groups, no dilation.
//   im2col: col[(c*kh + i)*kw + j, oh*Wo + ow] = x[c, oh*sh - ph + i, ow*sw - pw + j] (0 outside)
//   forward:         y[n]  = W[Co, C*kh*kw] * col(x[n]) + b
//   backward input:  dx[n] = col2im(W^T * dy[n])
//   backward weight: dW   += dy[n] * col(x[n])^T,   db += sum over n, h, w of dy
// The GEMMs bound it: 2*N*Co*C*kh*kw*Ho*Wo flops per pass. The CPU version puts the
// columns of several images side by side, so each GEMM is wide even where Ho*Wo is small.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/pool.h"

namespace kernels {

struct Conv2dShape {
  int64_t N, C, H, W;   // input
  int64_t Co, kh, kw;   // weight [Co, C, kh, kw]
  int64_t sh, sw, ph, pw;
  int64_t Ho, Wo;       // output
};

// One image. ld is the row stride of col (Ho*Wo for a single image's matrix; larger
// when several images' columns sit side by side in one matrix).
template <typename T> void im2col_cpu(const T* x, T* col, const Conv2dShape& s, int64_t ld);
// Adds (scatters) col back into x: x += col2im(col). x must be initialised.
template <typename T> void col2im_cpu(const T* col, T* x, const Conv2dShape& s, int64_t ld);

template <typename T>
void conv2d_forward_cpu(const T* x, const T* w, const T* b, T* y, const Conv2dShape& s);
// Any of gx, gw, gb may be null: that gradient is not computed.
template <typename T>
void conv2d_backward_cpu(const T* x, const T* w, const T* gy, T* gx, T* gw, T* gb,
                         const Conv2dShape& s);

// float32 through oneDNN (kernels/cpu/conv_dnnl.cpp). Available only in builds with
// oneDNN (conv2d_dnnl_available()); the other functions then throw. Same contract as
// the im2col versions above: null gradient pointers are not computed. With relu, the
// forward writes max(y, 0) (a oneDNN post-op; NaN as relu_fwd in kernels/common.h).
bool conv2d_dnnl_available();
void conv2d_forward_dnnl(const float* x, const float* w, const float* b, float* y, const Conv2dShape& s,
                         bool relu = false);
void conv2d_backward_dnnl(const float* x, const float* w, const float* gy, float* gx, float* gw, float* gb,
                          const Conv2dShape& s);
// The algorithm of oneDNN's convolutions (forward, both gradients, conv_relu_pool's
// chain), from the next call on: kAuto (the default: oneDNN picks it per shape, Winograd
// F(4x4, 3x3) for AlexNet's 3x3 layers from a batch of 16 on), kDirect (the direct sum
// everywhere, as PyTorch's CPU convolutions), kWinograd (Winograd wherever oneDNN has a
// kernel for the shape, direct elsewhere). Builds without oneDNN keep it and ignore it.
enum class DnnlConvAlgorithm { kAuto, kDirect, kWinograd };
void set_dnnl_conv_algorithm(DnnlConvAlgorithm a);
DnnlConvAlgorithm dnnl_conv_algorithm();
// oneDNN's names for the kernels it chose for a shape's three passes ("jit:avx512_core",
// "jit_wino_4x3:avx512_core", ...) under the current algorithm setting.
struct DnnlConvImplementations {
  std::string forward, backward_data, backward_weights;
};
DnnlConvImplementations conv2d_dnnl_implementations(const Conv2dShape& s, bool bias);

// A run of convolutions (each with or without a ReLU post-op) and max-pools, float32,
// forward only, through oneDNN: the NCHW input is reordered once into oneDNN's blocked
// layout, every layer reads and writes that layout, and only the last result is
// reordered back to NCHW. oneDNN's max does not propagate NaN as max_pool2d does: a
// max-pool's input must hold none (the engine chains a max-pool only after a ReLU).
struct DnnlChainLayer {
  bool pool = false;          // a max-pool (pool_shape), else a convolution (conv, w, b, relu)
  Conv2dShape conv{};
  const float* w = nullptr;   // [Co, C, kh, kw]
  const float* b = nullptr;   // [Co] or null
  bool relu = false;
  Pool2dShape pool_shape{};
};
void chain_forward_dnnl(const float* x, const std::vector<DnnlChainLayer>& layers, float* y);

// CUDA (kernels/cuda/conv.cu). cuDNN for the convolution itself: forward, backward-data,
// backward-filter and the bias gradient, float and double; the algorithm is chosen once
// per shape (cudnnFind*) and cached with its workspace. set_cudnn_deterministic(true)
// restricts the choice to deterministic algorithms. Null gradient pointers are skipped.
template <typename T>
void conv2d_forward_cudnn(const T* x, const T* w, const T* b, T* y, const Conv2dShape& s);
template <typename T>
void conv2d_backward_cudnn(const T* x, const T* w, const T* gy, T* gx, T* gw, T* gb,
                           const Conv2dShape& s);
void set_cudnn_deterministic(bool deterministic);
bool cudnn_deterministic();
// Whether the algorithm choice may take cuDNN algorithm `algo` (a cudnnConvolutionFwdAlgo_t,
// cudnnConvolutionBwdDataAlgo_t or cudnnConvolutionBwdFilterAlgo_t value, by direction):
// every one but the non-fused Winograd ones, whose float32 results are far off.
enum class CudnnDirection { kForward, kData, kFilter };
bool cudnn_may_pick(CudnnDirection direction, int algo);
// Handwritten im2col/col2im (col2im gathers: deterministic, no atomics) and the
// im2col + GEMM convolution built on them, benchmarked against cuDNN and tested against it.
template <typename T> void im2col_cuda(const T* x, T* col, const Conv2dShape& s, int64_t ld);
template <typename T> void col2im_cuda(const T* col, T* x, const Conv2dShape& s, int64_t ld);
template <typename T>
void conv2d_forward_im2col_cuda(const T* x, const T* w, const T* b, T* y, const Conv2dShape& s);

}  // namespace kernels
