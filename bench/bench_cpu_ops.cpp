// CPU op microbenchmarks on AlexNet's real shapes, with FLOP and byte counters so each
// row reads as GFLOP/s or GB/s: conv2d forward (im2col + OpenBLAS GEMM), linear
// forward (OpenBLAS GEMM), max_pool2d and relu.
//   build/bin/bench_cpu_ops --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/random.h"

namespace {

using namespace engine;

struct ConvCase {
  int64_t C, H, Co, k, s, p;
};
// AlexNet's five convolutions (input channels, size, output channels, kernel, stride, pad).
const ConvCase kConvs[] = {{3, 224, 64, 11, 4, 2}, {64, 27, 192, 5, 1, 2}, {192, 13, 384, 3, 1, 1},
                           {384, 13, 256, 3, 1, 1}, {256, 13, 256, 3, 1, 1}};

void BM_Conv2dForward(benchmark::State& state) {
  const ConvCase c = kConvs[state.range(0)];
  const int64_t N = state.range(1);
  Generator g(1);
  NoGradGuard ng;
  Tensor x = Tensor::randn({N, c.C, c.H, c.H}, g), w = Tensor::randn({c.Co, c.C, c.k, c.k}, g),
         b = Tensor::randn({c.Co}, g);
  const int64_t Ho = (c.H + 2 * c.p - c.k) / c.s + 1;
  for (auto _ : state) benchmark::DoNotOptimize(conv2d(x, w, b, c.s, c.p).raw_data());
  const double flops = 2.0 * N * c.Co * c.C * c.k * c.k * Ho * Ho;
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("conv" + std::to_string(state.range(0) + 1));
}
BENCHMARK(BM_Conv2dForward)->ArgsProduct({{0, 1, 2, 3, 4}, {1, 16}})->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_LinearForward(benchmark::State& state) {
  const int64_t in = state.range(0), out = state.range(1), N = state.range(2);
  Generator g(2);
  NoGradGuard ng;
  Tensor x = Tensor::randn({N, in}, g), w = Tensor::randn({out, in}, g), b = Tensor::randn({out}, g);
  for (auto _ : state) benchmark::DoNotOptimize(linear(x, w, b).raw_data());
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * N * in * out, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_LinearForward)
    ->ArgsProduct({{9216}, {4096}, {1, 64}})
    ->Args({4096, 4096, 64})
    ->Args({4096, 1000, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_MaxPool2d(benchmark::State& state) {
  const int64_t N = state.range(0);
  Generator g(3);
  NoGradGuard ng;
  Tensor x = Tensor::randn({N, 64, 55, 55}, g);
  for (auto _ : state) benchmark::DoNotOptimize(max_pool2d(x, 3, 2).raw_data());
  state.counters["B/s"] = benchmark::Counter(static_cast<double>(x.numel()) * 4 * (1 + 0.25 * 3),
                                             benchmark::Counter::kIsIterationInvariantRate,
                                             benchmark::Counter::kIs1024);
}
BENCHMARK(BM_MaxPool2d)->Arg(1)->Arg(16)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Relu(benchmark::State& state) {
  Generator g(4);
  NoGradGuard ng;
  Tensor x = Tensor::randn({state.range(0)}, g);
  for (auto _ : state) benchmark::DoNotOptimize(relu(x).raw_data());
  state.counters["B/s"] = benchmark::Counter(static_cast<double>(x.numel()) * 8,
                                             benchmark::Counter::kIsIterationInvariantRate,
                                             benchmark::Counter::kIs1024);
}
BENCHMARK(BM_Relu)->Arg(1 << 16)->Arg(1 << 22)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
