// CPU op microbenchmarks on AlexNet's real shapes, each beside its reference in the same
// run, with the machine's ceilings measured by this program at start-up:
//   - FMA peak: AVX-512 fused multiply-adds (AVX2 where the CPU has no AVX-512) on
//     independent registers, on every OpenMP thread; GFLOP/s.
//   - copy bandwidth: memcpy between two 256 MiB buffers on every thread; bytes read plus
//     bytes written per second.
// Every row reports its rate (FLOP/s or B/s) and `peak`, its share of the ceiling that
// bounds it (compute for convolutions and GEMMs, memory for pooling and ReLU).
//
// Rows, at batch 1, 64 and 128:
//   Conv/<layer>/<impl>: conv1-conv5 forward. impl: `engine` (engine::conv2d: oneDNN with
//     the engine's NCHW tensors, reordered in and out), `im2col_openblas` (OpenBLAS as
//     Caffe used it: per image, the engine's im2col, one cblas_sgemm, the bias),
//     `onednn_direct_blocked` (oneDNN's best direct kernel, for inference) and
//     `onednn_auto_blocked` (the algorithm oneDNN picks for training, as the engine asks),
//     each alone on data already in its blocked layout: what oneDNN can do without the
//     reorders. Labels: the kernel oneDNN chose (Winograd for conv3-conv5 from batch 16 on;
//     `peak` then counts the direct FLOPs, so it can pass 1).
//   ConvBackward/<layer>/<impl>: a training step's backward pass at batch 64 (data
//     gradient but for conv1, weight and bias gradients). impl: `engine`
//     (kernels::conv2d_backward_dnnl, reorders included), `onednn_direct_blocked`.
//   Gemm/<layer>/<impl>: fc6-fc8 forward, y = x W^T + b. impl: `engine`
//     (engine::linear: oneDNN's matmul primitive, GEMV at batch 1), `openblas`
//     (cblas_sgemm alone, no bias), `onednn` (dnnl_sgemm, oneDNN's BLAS-like call).
//   GemvDataGrad/<layer>/<impl>: batch 1's data gradient gx = gy W, the same three.
//   MaxPool/<layer> (the three pools, forward without the argmax), Relu.
//   MaxPoolTrain/<layer>/forward|backward (with the argmax, batch 64), Axpby (y = a x + b z),
//   SumAll, LogSoftmax/forward|backward (rows of 1000), Sgd (a momentum step over
//   AlexNet's 61.1 M parameters), ReluBackward, Mul (dropout's backward), Dropout (its
//   forward: a Philox block per four elements), RandomFill/uniform|normal (weight
//   initialisation), Cat|Split (SqueezeNet's Fire concatenation), AdaptiveAvgPool
//   (SqueezeNet's global pool and AlexNet's 6 x 6): memory-bound, GB/s and share of the memcpy bandwidth.
//
//   build/bin/bench_cpu_ops --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//   (--benchmark_filter=Conv/conv2 and the like for a part)
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#if ENGINE_BENCH_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "kernels/cat.h"
#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/pool.h"
#include "kernels/reduce.h"
#include "kernels/sgd.h"
#include "kernels/softmax.h"

namespace {

using namespace engine;

// ---- ceilings --------------------------------------------------------------------------

double g_fma_peak = 0;  // FLOP/s
double g_copy_bw = 0;   // B/s
const char* g_fma_isa = "";

constexpr int kAcc = 12;  // independent accumulators: covers 2 FMA pipes x 4-6 cycles latency

__attribute__((target("avx512f"))) float fma_loop_avx512(int64_t iters) {
  __m512 acc[kAcc];
  for (int k = 0; k < kAcc; ++k) acc[k] = _mm512_set1_ps(1.0f + 0.01f * static_cast<float>(k));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);  // converges to 1: no overflow
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < kAcc; ++k) acc[k] = _mm512_fmadd_ps(acc[k], a, b);
  __m512 s = acc[0];
  for (int k = 1; k < kAcc; ++k) s = _mm512_add_ps(s, acc[k]);
  float out[16];
  _mm512_storeu_ps(out, s);
  float sum = 0;
  for (float v : out) sum += v;
  return sum;
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
  __m256 acc[kAcc];
  for (int k = 0; k < kAcc; ++k) acc[k] = _mm256_set1_ps(1.0f + 0.01f * static_cast<float>(k));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < kAcc; ++k) acc[k] = _mm256_fmadd_ps(acc[k], a, b);
  float out[8];
  __m256 s = acc[0];
  for (int k = 1; k < kAcc; ++k) s = _mm256_add_ps(s, acc[k]);
  _mm256_storeu_ps(out, s);
  return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

template <typename F> double median_seconds(int runs, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void measure_ceilings() {
  const bool avx512 = __builtin_cpu_supports("avx512f");
  g_fma_isa = avx512 ? "AVX-512" : "AVX2";
  const int lanes = avx512 ? 16 : 8;
  const int64_t iters = 20'000'000;
  volatile float sink = 0;
  const double fma_s = median_seconds(7, [&] {
    float s = 0;
#pragma omp parallel reduction(+ : s)
    s += avx512 ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
    sink = sink + s;
  });
  g_fma_peak = 2.0 * lanes * kAcc * static_cast<double>(iters) * omp_get_max_threads() / fma_s;

  const size_t bytes = size_t{256} << 20;
  std::unique_ptr<char[]> src(new char[bytes]), dst(new char[bytes]);
  std::memset(src.get(), 1, bytes);
  std::memset(dst.get(), 2, bytes);
  const double copy_s = median_seconds(7, [&] {
#pragma omp parallel
    {
      const size_t t = static_cast<size_t>(omp_get_thread_num()), n = static_cast<size_t>(omp_get_num_threads());
      const size_t lo = bytes * t / n, hi = bytes * (t + 1) / n;
      std::memcpy(dst.get() + lo, src.get() + lo, hi - lo);
    }
  });
  g_copy_bw = 2.0 * static_cast<double>(bytes) / copy_s;
  std::printf("ceilings (%d threads): %s FMA peak %.1f GFLOP/s; memcpy %.1f GB/s (read + write); OpenBLAS threads: %s\n",
              omp_get_max_threads(), g_fma_isa, g_fma_peak / 1e9, g_copy_bw / 1e9, kernels::blas_threading());
}

// The timed loop of a row: runs `body` as Google Benchmark asks and returns the wall
// seconds it took, from which the row's share of its ceiling is computed.
template <typename F> double timed(benchmark::State& state, F&& body) {
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) body();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
// The rate (a Google Benchmark rate counter) and `peak`, the share of the ceiling.
void set_flops(benchmark::State& state, double flops_per_iter, double seconds) {
  state.counters["FLOP/s"] = benchmark::Counter(flops_per_iter, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak"] = flops_per_iter * static_cast<double>(state.iterations()) / seconds / g_fma_peak;
}
void set_bytes(benchmark::State& state, double bytes_per_iter, double seconds) {
  state.counters["B/s"] = benchmark::Counter(bytes_per_iter, benchmark::Counter::kIsIterationInvariantRate,
                                             benchmark::Counter::kIs1024);
  state.counters["peak"] = bytes_per_iter * static_cast<double>(state.iterations()) / seconds / g_copy_bw;
}

void BM_Ceiling(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(g_fma_peak);
  state.counters["FMA_GFLOP/s"] = g_fma_peak / 1e9;
  state.counters["copy_GB/s"] = g_copy_bw / 1e9;
  state.SetLabel(g_fma_isa);
}

// ---- convolutions ----------------------------------------------------------------------

struct ConvCase {
  int64_t C, H, Co, k, s, p;
};
// AlexNet's five convolutions (input channels, size, output channels, kernel, stride, pad).
const ConvCase kConvs[] = {{3, 224, 64, 11, 4, 2}, {64, 27, 192, 5, 1, 2}, {192, 13, 384, 3, 1, 1},
                           {384, 13, 256, 3, 1, 1}, {256, 13, 256, 3, 1, 1}};

kernels::Conv2dShape conv_shape(const ConvCase& c, int64_t N) {
  const int64_t Ho = (c.H + 2 * c.p - c.k) / c.s + 1;
  return {N, c.C, c.H, c.H, c.Co, c.k, c.k, c.s, c.s, c.p, c.p, Ho, Ho};
}
double conv_flops(const kernels::Conv2dShape& s) { return 2.0 * s.N * s.Co * s.C * s.kh * s.kw * s.Ho * s.Wo; }

void BM_ConvEngine(benchmark::State& state, int layer) {
  const ConvCase c = kConvs[layer];
  const int64_t N = state.range(0);
  Generator g(1);
  NoGradGuard ng;
  Tensor x = Tensor::randn({N, c.C, c.H, c.H}, g), w = Tensor::randn({c.Co, c.C, c.k, c.k}, g),
         b = Tensor::randn({c.Co}, g);
  const double sec = timed(state, [&] { benchmark::DoNotOptimize(conv2d(x, w, b, c.s, c.p).raw_data()); });
  set_flops(state, conv_flops(conv_shape(c, N)), sec);
#if ENGINE_BENCH_HAVE_DNNL
  state.SetLabel(kernels::conv2d_dnnl_implementations(conv_shape(c, N), true).forward);
#endif
}

// A training step's backward pass of one layer: the weight and bias gradients, and the
// data gradient except for conv1 (its input is the image, which needs none).
bool wants_data_gradient(int layer) { return layer > 0; }
double conv_backward_flops(const kernels::Conv2dShape& s, int layer) {
  return conv_flops(s) * (wants_data_gradient(layer) ? 2 : 1);
}

void BM_ConvBackwardEngine(benchmark::State& state, int layer) {
  const kernels::Conv2dShape s = conv_shape(kConvs[layer], state.range(0));
  Generator g(3);
  Tensor x = Tensor::randn({s.N, s.C, s.H, s.W}, g), w = Tensor::randn({s.Co, s.C, s.kh, s.kw}, g),
         gy = Tensor::randn({s.N, s.Co, s.Ho, s.Wo}, g);
  Tensor gx = Tensor::empty(x.shape()), gw = Tensor::empty(w.shape()), gb = Tensor::empty({s.Co});
  float* gxp = wants_data_gradient(layer) ? gx.data<float>() : nullptr;
  const double sec = timed(state, [&] {
    kernels::conv2d_backward_dnnl(x.data<float>(), w.data<float>(), gy.data<float>(), gxp, gw.data<float>(),
                                  gb.data<float>(), s);
    benchmark::ClobberMemory();
  });
  set_flops(state, conv_backward_flops(s, layer), sec);
  const kernels::DnnlConvImplementations impl = kernels::conv2d_dnnl_implementations(s, true);
  state.SetLabel((wants_data_gradient(layer) ? impl.backward_data + " + " : std::string()) + impl.backward_weights);
}

void BM_ConvIm2col(benchmark::State& state, int layer) {
  const ConvCase c = kConvs[layer];
  const kernels::Conv2dShape s = conv_shape(c, state.range(0));
  Generator g(1);
  Tensor x = Tensor::randn({s.N, s.C, s.H, s.W}, g), w = Tensor::randn({s.Co, s.C, s.kh, s.kw}, g),
         b = Tensor::randn({s.Co}, g), y = Tensor::empty({s.N, s.Co, s.Ho, s.Wo});
  // Caffe's way, with OpenBLAS: per image, the im2col matrix, one cblas_sgemm, the bias.
  kernels::Conv2dShape one = s;
  one.N = 1;
  const int64_t K = s.C * s.kh * s.kw, P = s.Ho * s.Wo;
  std::vector<float> col(static_cast<size_t>(K * P));
  const double sec = timed(state, [&] {
    for (int64_t n = 0; n < s.N; ++n) {
      float* yn = y.data<float>() + n * s.Co * P;
      kernels::im2col_cpu<float>(x.data<float>() + n * s.C * s.H * s.W, col.data(), one, P);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(s.Co), static_cast<int>(P),
                  static_cast<int>(K), 1.0f, w.data<float>(), static_cast<int>(K), col.data(), static_cast<int>(P),
                  0.0f, yn, static_cast<int>(P));
      const float* bp = b.data<float>();
      for (int64_t o = 0; o < s.Co; ++o)
        for (int64_t p = 0; p < P; ++p) yn[o * P + p] += bp[o];
    }
    benchmark::ClobberMemory();
  });
  set_flops(state, conv_flops(s), sec);
}

#if ENGINE_BENCH_HAVE_DNNL
// Fills a oneDNN buffer with a fixed, varied pattern.
void fill(dnnl::memory& m) {
  auto* p = static_cast<float*>(m.get_data_handle());
  const size_t n = m.get_desc().get_size() / sizeof(float);
  for (size_t i = 0; i < n; ++i) p[i] = 0.001f * static_cast<float>(static_cast<int>(i % 2001) - 1000);
}

// oneDNN's forward primitive with algorithm `alg`, for `prop` (inference: the direct
// kernels' best; training: what the engine asks for, with or without a graph), on inputs
// already in the layouts it chose: no reorders.
void BM_ConvOneDnnBlocked(benchmark::State& state, int layer, dnnl::algorithm alg, dnnl::prop_kind prop) {
  using dnnl::convolution_forward;
  using dnnl::memory;
  const ConvCase c = kConvs[layer];
  const kernels::Conv2dShape s = conv_shape(c, state.range(0));
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  auto any = [](memory::dims d) { return memory::desc(d, memory::data_type::f32, memory::format_tag::any); };
  const convolution_forward::desc desc(
      prop, alg, any({s.N, s.C, s.H, s.W}), any({s.Co, s.C, s.kh, s.kw}),
      memory::desc({s.Co}, memory::data_type::f32, memory::format_tag::x), any({s.N, s.Co, s.Ho, s.Wo}),
      {s.sh, s.sw}, {s.ph, s.pw}, {s.ph, s.pw});
  const convolution_forward::primitive_desc pd(desc, eng);
  memory src(pd.src_desc(), eng), wei(pd.weights_desc(), eng), dst(pd.dst_desc(), eng);
  memory bia({{s.Co}, memory::data_type::f32, memory::format_tag::x}, eng);
  for (memory* m : {&src, &wei, &dst, &bia}) fill(*m);
  const convolution_forward prim(pd);
  const std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_BIAS, bia}, {DNNL_ARG_DST, dst}};
  const double sec = timed(state, [&] {
    prim.execute(strm, args);
    strm.wait();
  });
  set_flops(state, conv_flops(s), sec);
  state.SetLabel(pd.impl_info_str());
}

// oneDNN's direct backward primitives (data gradient but for conv1, weight and bias
// gradients) on data already in their layouts: the reference for the engine's backward.
void BM_ConvBackwardOneDnnDirect(benchmark::State& state, int layer) {
  using dnnl::memory;
  using Fwd = dnnl::convolution_forward;
  using Bwd = dnnl::convolution_backward_data;
  using Bww = dnnl::convolution_backward_weights;
  const dnnl::algorithm alg = dnnl::algorithm::convolution_direct;
  const kernels::Conv2dShape s = conv_shape(kConvs[layer], state.range(0));
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream strm(eng);
  auto any = [](memory::dims d) { return memory::desc(d, memory::data_type::f32, memory::format_tag::any); };
  const memory::dims src{s.N, s.C, s.H, s.W}, wei{s.Co, s.C, s.kh, s.kw}, dst{s.N, s.Co, s.Ho, s.Wo},
      st{s.sh, s.sw}, pad{s.ph, s.pw};
  const memory::desc bias({s.Co}, memory::data_type::f32, memory::format_tag::x);
  const Fwd::primitive_desc hint(
      Fwd::desc(dnnl::prop_kind::forward_training, alg, any(src), any(wei), bias, any(dst), st, pad, pad), eng);
  const Bwd::primitive_desc dpd(Bwd::desc(alg, any(src), any(wei), any(dst), st, pad, pad), eng, hint);
  const Bww::primitive_desc wpd(Bww::desc(alg, any(src), any(wei), bias, any(dst), st, pad, pad), eng, hint);
  memory gx(dpd.diff_src_desc(), eng), w(dpd.weights_desc(), eng), gy_d(dpd.diff_dst_desc(), eng);
  memory x(wpd.src_desc(), eng), gw(wpd.diff_weights_desc(), eng), gb(bias, eng), gy_w(wpd.diff_dst_desc(), eng);
  for (memory* m : {&w, &gy_d, &x, &gy_w}) fill(*m);
  const Bwd data(dpd);
  const Bww weights(wpd);
  const std::unordered_map<int, memory> data_args{{DNNL_ARG_DIFF_DST, gy_d}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, gx}};
  const std::unordered_map<int, memory> weight_args{
      {DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, gy_w}, {DNNL_ARG_DIFF_WEIGHTS, gw}, {DNNL_ARG_DIFF_BIAS, gb}};
  const double sec = timed(state, [&] {
    if (wants_data_gradient(layer)) data.execute(strm, data_args);
    weights.execute(strm, weight_args);
    strm.wait();
  });
  set_flops(state, conv_backward_flops(s, layer), sec);
  state.SetLabel(std::string(wants_data_gradient(layer) ? dpd.impl_info_str() + std::string(" + ") : "") +
                 wpd.impl_info_str());
}
#endif

// ---- fully connected layers ------------------------------------------------------------

struct FcCase {
  int64_t in, out;
};
const FcCase kFcs[] = {{9216, 4096}, {4096, 4096}, {4096, 1000}};

void BM_GemmEngine(benchmark::State& state, int layer) {
  const FcCase f = kFcs[layer];
  const int64_t N = state.range(0);
  Generator g(2);
  NoGradGuard ng;
  Tensor x = Tensor::randn({N, f.in}, g), w = Tensor::randn({f.out, f.in}, g), b = Tensor::randn({f.out}, g);
  const double sec = timed(state, [&] { benchmark::DoNotOptimize(linear(x, w, b).raw_data()); });
  set_flops(state, 2.0 * N * f.in * f.out, sec);
}

void BM_GemmOpenBlas(benchmark::State& state, int layer) {
  const FcCase f = kFcs[layer];
  const int64_t N = state.range(0);
  Generator g(2);
  Tensor x = Tensor::randn({N, f.in}, g), w = Tensor::randn({f.out, f.in}, g), y = Tensor::empty({N, f.out});
  const double sec = timed(state, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(N), static_cast<int>(f.out),
                static_cast<int>(f.in), 1.0f, x.data<float>(), static_cast<int>(f.in), w.data<float>(),
                static_cast<int>(f.in), 0.0f, y.data<float>(), static_cast<int>(f.out));
    benchmark::ClobberMemory();
  });
  set_flops(state, 2.0 * N * f.in * f.out, sec);
}

#if ENGINE_BENCH_HAVE_DNNL
void BM_GemmOneDnn(benchmark::State& state, int layer) {
  const FcCase f = kFcs[layer];
  const int64_t N = state.range(0);
  Generator g(2);
  Tensor x = Tensor::randn({N, f.in}, g), w = Tensor::randn({f.out, f.in}, g), y = Tensor::empty({N, f.out});
  const double sec = timed(state, [&] {
    const dnnl_status_t st = dnnl_sgemm('N', 'T', N, f.out, f.in, 1.0f, x.data<float>(), f.in, w.data<float>(),
                                        f.in, 0.0f, y.data<float>(), f.out);
    if (st != dnnl_success) state.SkipWithError("dnnl_sgemm failed");
    benchmark::ClobberMemory();
  });
  set_flops(state, 2.0 * N * f.in * f.out, sec);
}
#endif

// Batch 1's data gradient, gx = gy W (gy [1, out], W [out, in]): the product saliency takes
// through every FC layer, bound by reading W once. `engine`: kernels::gemm_cpu (its own
// GEMV, W's rows in chunks shared out between threads); `openblas`: cblas_sgemv;
// `onednn`: dnnl_sgemm.
// Counters: FLOP/s, and W's bytes read per second with their share of the memcpy figure.
enum class GemvImpl { Engine, OpenBlas, OneDnn };
void BM_GemvDataGrad(benchmark::State& state, int layer, GemvImpl impl) {
  const FcCase f = kFcs[layer];
  Generator g(3);
  Tensor gy = Tensor::randn({1, f.out}, g), w = Tensor::randn({f.out, f.in}, g), gx = Tensor::empty({1, f.in});
  const float* a = gy.data<float>();
  const float* b = w.data<float>();
  float* c = gx.data<float>();
  const int out = static_cast<int>(f.out), in = static_cast<int>(f.in);
  const double sec = timed(state, [&] {
    switch (impl) {
      case GemvImpl::Engine: kernels::gemm_cpu<float>(false, false, 1, in, out, 1.0f, a, out, b, in, 0.0f, c, in); break;
      case GemvImpl::OpenBlas: cblas_sgemv(CblasRowMajor, CblasTrans, out, in, 1.0f, b, in, a, 1, 0.0f, c, 1); break;
      case GemvImpl::OneDnn:
#if ENGINE_BENCH_HAVE_DNNL
        if (dnnl_sgemm('N', 'N', 1, in, out, 1.0f, a, out, b, in, 0.0f, c, in) != dnnl_success)
          state.SkipWithError("dnnl_sgemm failed");
#endif
        break;
    }
    benchmark::ClobberMemory();
  });
  set_flops(state, 2.0 * f.in * f.out, sec);
  const double bytes = 4.0 * f.in * f.out;
  state.counters["W_B/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1024);
  state.counters["W_of_memcpy"] = bytes * static_cast<double>(state.iterations()) / sec / g_copy_bw;
}

// ---- memory-bound ops ------------------------------------------------------------------

struct PoolCase {
  int64_t C, H;
};
// AlexNet's three max-pools (3x3, stride 2): after conv1, conv2 and conv5.
const PoolCase kPools[] = {{64, 55}, {192, 27}, {256, 13}};

void BM_MaxPool(benchmark::State& state, int layer) {
  const PoolCase p = kPools[layer];
  const int64_t N = state.range(0), Ho = (p.H - 3) / 2 + 1;
  Generator g(3);
  NoGradGuard ng;
  Tensor x = Tensor::randn({N, p.C, p.H, p.H}, g);
  const double sec = timed(state, [&] { benchmark::DoNotOptimize(max_pool2d(x, 3, 2).raw_data()); });
  set_bytes(state, 4.0 * N * p.C * (p.H * p.H + Ho * Ho), sec);  // the input read, the output written
}

void BM_Relu(benchmark::State& state) {
  Generator g(4);
  NoGradGuard ng;
  Tensor x = Tensor::randn({state.range(0)}, g);
  const double sec = timed(state, [&] { benchmark::DoNotOptimize(relu(x).raw_data()); });
  set_bytes(state, 8.0 * static_cast<double>(x.numel()), sec);
}

// Max-pooling as training runs it: the forward keeps the argmax (8 bytes per output),
// the backward scatters the output gradient to it (gx cleared, then written).
void BM_MaxPoolTrain(benchmark::State& state, int layer, bool backward) {
  const PoolCase p = kPools[layer];
  const int64_t N = state.range(0), Ho = (p.H - 3) / 2 + 1;
  const kernels::Pool2dShape s{N, p.C, p.H, p.H, 3, 3, 2, 2, 0, 0, Ho, Ho};
  Generator g(3);
  Tensor x = Tensor::randn({N, p.C, p.H, p.H}, g), y = Tensor::empty({N, p.C, Ho, Ho});
  Tensor gy = Tensor::randn({N, p.C, Ho, Ho}, g), gx = Tensor::empty({N, p.C, p.H, p.H});
  std::vector<int64_t> argmax(static_cast<size_t>(N * p.C * Ho * Ho));
  kernels::max_pool2d_forward_cpu<float>(x.data<float>(), y.data<float>(), argmax.data(), s);
  const double in = 4.0 * N * p.C * p.H * p.H, out = 4.0 * N * p.C * Ho * Ho;
  if (backward) {
    const double sec = timed(state, [&] {
      kernels::max_pool2d_backward_cpu<float>(gy.data<float>(), argmax.data(), gx.data<float>(), s);
      benchmark::ClobberMemory();
    });
    set_bytes(state, out + 2 * out + in, sec);  // gy and the argmax read, gx written
  } else {
    const double sec = timed(state, [&] {
      kernels::max_pool2d_forward_cpu<float>(x.data<float>(), y.data<float>(), argmax.data(), s);
      benchmark::ClobberMemory();
    });
    set_bytes(state, in + out + 2 * out, sec);  // x read, y and the argmax written
  }
}

// One SGD step with momentum over n parameters: p, g and the buffer read; p and the
// buffer written (20 bytes a parameter). AlexNet has 61.1 M parameters.
void BM_Sgd(benchmark::State& state) {
  const int64_t n = state.range(0);
  Generator g(5);
  Tensor p = Tensor::randn({n}, g), grad = Tensor::randn({n}, g), buf = Tensor::randn({n}, g);
  const kernels::SgdParams h{0.001, 0.9, 0.0, 0.0005, false, false};
  const double sec = timed(state, [&] {
    kernels::sgd_step_cpu<float>(p.data<float>(), grad.data<float>(), buf.data<float>(), h, n);
    benchmark::ClobberMemory();
  });
  set_bytes(state, 20.0 * static_cast<double>(n), sec);
}

// log-softmax over rows of 1000 (the classifier's output), forward and backward.
void BM_LogSoftmax(benchmark::State& state, bool backward) {
  const int64_t rows = state.range(0), K = 1000;
  Generator g(6);
  Tensor x = Tensor::randn({rows, K}, g), y = Tensor::empty({rows, K}), gy = Tensor::randn({rows, K}, g);
  Tensor gx = Tensor::empty({rows, K});
  kernels::softmax_forward_cpu<float>(x.data<float>(), y.data<float>(), rows, K, 1, true);
  const double sec = timed(state, [&] {
    if (backward)
      kernels::softmax_backward_cpu<float>(gy.data<float>(), y.data<float>(), gx.data<float>(), rows, K, 1, true);
    else
      kernels::softmax_forward_cpu<float>(x.data<float>(), y.data<float>(), rows, K, 1, true);
    benchmark::ClobberMemory();
  });
  set_bytes(state, (backward ? 12.0 : 8.0) * static_cast<double>(rows * K), sec);
}

// Elementwise y = a x + b z (add, sub and the gradient sums) and the sum of all elements.
void BM_Axpby(benchmark::State& state) {
  const int64_t n = state.range(0);
  Generator g(7);
  Tensor x = Tensor::randn({n}, g), z = Tensor::randn({n}, g), y = Tensor::empty({n});
  const double sec = timed(state, [&] {
    kernels::axpby_cpu<float>(1.0f, x.data<float>(), 1.0f, z.data<float>(), y.data<float>(), n);
    benchmark::ClobberMemory();
  });
  set_bytes(state, 12.0 * static_cast<double>(n), sec);
}

void BM_SumAll(benchmark::State& state) {
  const int64_t n = state.range(0);
  Generator g(8);
  Tensor x = Tensor::randn({n}, g);
  const double sec = timed(state, [&] { benchmark::DoNotOptimize(kernels::sum_all_cpu<float>(x.data<float>(), n)); });
  set_bytes(state, 4.0 * static_cast<double>(n), sec);
}

// Two arrays read, one written (12 bytes an element): ReLU's backward (gx = gy where
// y > 0) or the elementwise product (dropout's backward, gy * mask).
void BM_Binary(benchmark::State& state, bool relu_backward) {
  const int64_t n = state.range(0);
  Generator g(9);
  Tensor a = Tensor::randn({n}, g), b = Tensor::randn({n}, g), y = Tensor::empty({n});
  const double sec = timed(state, [&] {
    if (relu_backward)
      kernels::relu_backward_cpu<float>(a.data<float>(), b.data<float>(), y.data<float>(), n);
    else
      kernels::mul_cpu<float>(a.data<float>(), b.data<float>(), y.data<float>(), n);
    benchmark::ClobberMemory();
  });
  set_bytes(state, 12.0 * static_cast<double>(n), sec);
}

// Dropout's forward with p = 0.5: a Philox block per four elements, x read, the mask
// and y written (12 bytes an element). AlexNet drops fc6's and fc7's inputs: [N, 9216]
// and [N, 4096].
void BM_Dropout(benchmark::State& state) {
  const int64_t n = state.range(0);
  Generator g(11);
  Tensor x = Tensor::randn({n}, g), mask = Tensor::empty({n}), y = Tensor::empty({n});
  uint64_t offset = 0;
  const double sec = timed(state, [&] {
    kernels::dropout_forward_cpu<float>(x.data<float>(), mask.data<float>(), y.data<float>(), 0.5f, 1234, offset, n);
    offset += static_cast<uint64_t>(n);
    benchmark::ClobberMemory();
  });
  set_bytes(state, 12.0 * static_cast<double>(n), sec);
}

// Random fills (weight initialisation: torch.nn's default for Conv2d and Linear is
// uniform): a Philox draw per element (and Box-Muller for the normal), 4 bytes written.
void BM_RandomFill(benchmark::State& state, bool normal) {
  const int64_t n = state.range(0);
  Tensor y = Tensor::empty({n});
  const double sec = timed(state, [&] {
    if (normal)
      kernels::normal_cpu<float>(y.data<float>(), 0.0f, 0.01f, 1234, 0, n);
    else
      kernels::uniform_cpu<float>(y.data<float>(), -0.01f, 0.01f, 1234, 0, n);
    benchmark::ClobberMemory();
  });
  set_bytes(state, 4.0 * static_cast<double>(n), sec);
}

// Concatenation along channels and its adjoint, as SqueezeNet's Fire modules run them:
// two [N, 64, 55, 55] expand outputs into [N, 128, 55, 55] (fire2/fire3 at batch N);
// every byte read once and written once.
void BM_Cat(benchmark::State& state, bool split) {
  const int64_t N = state.range(0), C = 64, HW = 55 * 55;
  Generator g(12);
  Tensor a = Tensor::randn({N, C, HW}, g), b = Tensor::randn({N, C, HW}, g), y = Tensor::randn({N, 2 * C, HW}, g);
  const std::vector<int64_t> sizes = {C, C};
  const double sec = timed(state, [&] {
    if (split)
      kernels::split_cpu<float>(y.data<float>(), {a.data<float>(), b.data<float>()}, sizes, N, HW);
    else
      kernels::cat_cpu<float>({a.data<float>(), b.data<float>()}, sizes, y.data<float>(), N, HW);
    benchmark::ClobberMemory();
  });
  set_bytes(state, 2.0 * 4.0 * static_cast<double>(y.numel()), sec);
}

// Adaptive average pooling at batch N: SqueezeNet's global pool ([N, 1000, 13, 13] ->
// 1 x 1) and AlexNet's ([N, 256, 6, 6] -> 6 x 6, one element a window). Forward: x read,
// y written; backward: gy read, gx written.
struct AvgPoolCase {
  int64_t C, H, Ho;
};
const AvgPoolCase kAvgPools[] = {{1000, 13, 1}, {256, 6, 6}};

void BM_AdaptiveAvgPool(benchmark::State& state, int which, bool backward) {
  const AvgPoolCase p = kAvgPools[which];
  const int64_t N = state.range(0), NC = N * p.C;
  Generator g(13);
  Tensor x = Tensor::randn({N, p.C, p.H, p.H}, g), y = Tensor::randn({N, p.C, p.Ho, p.Ho}, g);
  const double sec = timed(state, [&] {
    if (backward)
      kernels::adaptive_avg_pool2d_backward_cpu<float>(y.data<float>(), x.data<float>(), NC, p.H, p.H, p.Ho, p.Ho);
    else
      kernels::adaptive_avg_pool2d_forward_cpu<float>(x.data<float>(), y.data<float>(), NC, p.H, p.H, p.Ho, p.Ho);
    benchmark::ClobberMemory();
  });
  set_bytes(state, 4.0 * static_cast<double>(x.numel() + y.numel()), sec);
}

void register_all() {
  const std::vector<int64_t> batches = {1, 64, 128};
  benchmark::RegisterBenchmark("Ceiling", BM_Ceiling)->Iterations(1);
  for (int l = 0; l < 5; ++l) {
    const std::string name = "Conv/conv" + std::to_string(l + 1) + "/";
    using Fn = std::function<void(benchmark::State&)>;
    const std::vector<std::pair<std::string, Fn>> impls = {
        {"engine", [l](benchmark::State& st) { BM_ConvEngine(st, l); }},
        {"im2col_openblas", [l](benchmark::State& st) { BM_ConvIm2col(st, l); }},
#if ENGINE_BENCH_HAVE_DNNL
        {"onednn_direct_blocked",
         [l](benchmark::State& st) {
           BM_ConvOneDnnBlocked(st, l, dnnl::algorithm::convolution_direct, dnnl::prop_kind::forward_inference);
         }},
        {"onednn_auto_blocked",
         [l](benchmark::State& st) {
           BM_ConvOneDnnBlocked(st, l, dnnl::algorithm::convolution_auto, dnnl::prop_kind::forward_training);
         }},
#endif
    };
    for (const auto& [impl, fn] : impls)
      for (int64_t n : batches)
        benchmark::RegisterBenchmark((name + impl).c_str(), fn)->Arg(n)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
#if ENGINE_BENCH_HAVE_DNNL
  for (int l = 0; l < 5; ++l) {
    const std::string name = "ConvBackward/conv" + std::to_string(l + 1) + "/";
    benchmark::RegisterBenchmark((name + "engine").c_str(), BM_ConvBackwardEngine, l)
        ->Arg(64)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((name + "onednn_direct_blocked").c_str(), BM_ConvBackwardOneDnnDirect, l)
        ->Arg(64)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
#endif
  for (int l = 0; l < 3; ++l) {
    const std::string name = "Gemm/fc" + std::to_string(l + 6) + "/";
    for (auto [impl, fn] : {std::pair{"engine", BM_GemmEngine}, std::pair{"openblas", BM_GemmOpenBlas},
#if ENGINE_BENCH_HAVE_DNNL
                            std::pair{"onednn", BM_GemmOneDnn}
#endif
                           })
      for (int64_t n : batches)
        benchmark::RegisterBenchmark((name + impl).c_str(), fn, l)->Arg(n)->Unit(benchmark::kMillisecond)->UseRealTime();
  }
  for (int l = 0; l < 3; ++l)
    for (auto [impl, id] : {std::pair{"engine", GemvImpl::Engine}, std::pair{"openblas", GemvImpl::OpenBlas},
#if ENGINE_BENCH_HAVE_DNNL
                            std::pair{"onednn", GemvImpl::OneDnn}
#endif
                           })
      benchmark::RegisterBenchmark(("GemvDataGrad/fc" + std::to_string(l + 6) + "/" + impl).c_str(), BM_GemvDataGrad, l,
                                   id)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  for (int l = 0; l < 3; ++l)
    for (int64_t n : batches)
      benchmark::RegisterBenchmark(("MaxPool/pool" + std::to_string(l + 1)).c_str(), BM_MaxPool, l)
          ->Arg(n)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  for (int l = 0; l < 3; ++l)
    for (bool backward : {false, true})
      benchmark::RegisterBenchmark(
          ("MaxPoolTrain/pool" + std::to_string(l + 1) + (backward ? "/backward" : "/forward")).c_str(),
          BM_MaxPoolTrain, l, backward)
          ->Arg(64)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  benchmark::RegisterBenchmark("Relu", BM_Relu)->Arg(1 << 16)->Arg(1 << 22)->Arg(1 << 25)->UseRealTime();
  benchmark::RegisterBenchmark("Axpby", BM_Axpby)->Arg(1 << 22)->Arg(1 << 25)->UseRealTime();
  benchmark::RegisterBenchmark("SumAll", BM_SumAll)->Arg(1 << 22)->Arg(1 << 25)->UseRealTime();
  for (bool backward : {false, true})
    benchmark::RegisterBenchmark(backward ? "LogSoftmax/backward" : "LogSoftmax/forward", BM_LogSoftmax, backward)
        ->Arg(64)
        ->Arg(4096)
        ->UseRealTime();
  benchmark::RegisterBenchmark("Sgd", BM_Sgd)->Arg(61'100'840)->Unit(benchmark::kMillisecond)->UseRealTime();
  for (bool relu_backward : {true, false})
    benchmark::RegisterBenchmark(relu_backward ? "ReluBackward" : "Mul", BM_Binary, relu_backward)
        ->Arg(1 << 22)
        ->Arg(1 << 25)
        ->UseRealTime();
  benchmark::RegisterBenchmark("Dropout", BM_Dropout)
      ->Arg(64 * 4096)
      ->Arg(64 * 9216)
      ->Arg(128 * 9216)
      ->Arg(1 << 25)
      ->UseRealTime();
  for (bool normal : {false, true})
    benchmark::RegisterBenchmark(normal ? "RandomFill/normal" : "RandomFill/uniform", BM_RandomFill, normal)
        ->Arg(1 << 22)
        ->UseRealTime();
  for (bool split : {false, true})
    benchmark::RegisterBenchmark(split ? "Split/fire_expand" : "Cat/fire_expand", BM_Cat, split)
        ->Arg(1)
        ->Arg(64)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  for (int which = 0; which < 2; ++which)
    for (bool backward : {false, true})
      benchmark::RegisterBenchmark((std::string("AdaptiveAvgPool/") + (which == 0 ? "global_1000x13x13" : "alexnet_256x6x6") +
                                    (backward ? "/backward" : "/forward"))
                                       .c_str(),
                                   BM_AdaptiveAvgPool, which, backward)
          ->Arg(64)
          ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  measure_ceilings();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
