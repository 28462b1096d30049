// Elementwise kernels: relu, add/mul/axpby, fill, dtype conversion, random fills and
// dropout. Memory-bound: each reads its inputs once and writes its output once.
// Every function is a template over float and double, defined for both in the backend
// files; `n` is the number of elements of contiguous arrays.
#pragma once

#include <cstdint>

namespace kernels {

template <typename T> void relu_forward_cpu(const T* x, T* y, int64_t n);
template <typename T> void relu_backward_cpu(const T* gy, const T* y, T* gx, int64_t n);
template <typename T> void guided_relu_backward_cpu(const T* gy, const T* y, T* gx, int64_t n);
// y = a * x + b * z (z may be null when b == 0; y may alias x or z).
template <typename T> void axpby_cpu(T a, const T* x, T b, const T* z, T* y, int64_t n);
template <typename T> void mul_cpu(const T* a, const T* b, T* y, int64_t n);
template <typename T> void fill_cpu(T* y, T value, int64_t n);
template <typename From, typename To> void convert_cpu(const From* x, To* y, int64_t n);
// y[i] = uniform in [lo, hi) / normal(mean, std), from Philox(seed, offset + i).
template <typename T> void uniform_cpu(T* y, T lo, T hi, uint64_t seed, uint64_t offset, int64_t n);
template <typename T> void normal_cpu(T* y, T mean, T std, uint64_t seed, uint64_t offset, int64_t n);
// Inverted dropout: mask[i] = (u_i >= p) / (1 - p); y = x * mask. The uniforms u_i take
// every word of the Philox blocks of counters [offset, offset + dropout_counters<T>(n))
// (kernels/common.h: four floats or two doubles a counter).
template <typename T>
void dropout_forward_cpu(const T* x, T* mask, T* y, T p, uint64_t seed, uint64_t offset, int64_t n);

template <typename T> void relu_forward_cuda(const T* x, T* y, int64_t n);
template <typename T> void relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n);
template <typename T> void guided_relu_backward_cuda(const T* gy, const T* y, T* gx, int64_t n);
template <typename T> void axpby_cuda(T a, const T* x, T b, const T* z, T* y, int64_t n);
template <typename T> void mul_cuda(const T* a, const T* b, T* y, int64_t n);
// The float maps' per-thread code (four elements at a time, several float4s in flight)
// run on the host, thread by thread over the grid the launch uses (blocks 0) or over
// `blocks` blocks (fewer, so that threads take several strides), so tests check it
// without a GPU. op "relu": y = relu(a) (b unused); "relu_backward": y = relu_backward(gy
// = a, y = b). a, b and y must be 16-byte aligned.
void map2_float4_cuda_on_host(const char* op, const float* a, const float* b, float* y, int64_t n,
                              unsigned blocks = 0);
// Dropout's float kernel (four elements at a time, the CPU's draws) the same way, over
// float arrays that must be 16-byte aligned.
void dropout_float4_cuda_on_host(const float* x, float* mask, float* y, float p, uint64_t seed, uint64_t offset,
                                 int64_t n, unsigned blocks = 0);
template <typename T> void fill_cuda(T* y, T value, int64_t n);
template <typename From, typename To> void convert_cuda(const From* x, To* y, int64_t n);
template <typename T> void uniform_cuda(T* y, T lo, T hi, uint64_t seed, uint64_t offset, int64_t n);
template <typename T> void normal_cuda(T* y, T mean, T std, uint64_t seed, uint64_t offset, int64_t n);
template <typename T>
void dropout_forward_cuda(const T* x, T* mask, T* y, T p, uint64_t seed, uint64_t offset, int64_t n);

}  // namespace kernels
