// alexnet_throughput: AlexNet images per second on one device, for one mode:
//   forward  - eval-mode forward, no graph
//   train    - train-mode forward, cross-entropy, backward, SGD step (momentum 0.9)
//   saliency - eval-mode forward and backward to the input only (frozen weights)
// Seeded random weights and inputs; `--warmup` untimed iterations, then `--iters` timed
// ones; the median is reported. The last line is `images/s: X`.
//   build/bin/alexnet_throughput --device cpu --batch 64 --mode forward
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/optim/sgd.h"
#include "engine/saliency.h"
#include "kernels/cuda_runtime.h"
#include "kernels/gemm.h"
#include "nets/alexnet.h"

int main(int argc, char** argv) {
  CLI::App app{"AlexNet throughput in images per second"};
  std::string device_name = "cpu", mode = "forward";
  int64_t batch = 64;
  int iters = 5, warmup = 1;
  app.add_option("--device", device_name, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--batch", batch, "images per batch")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_option("--mode", mode, "forward, train or saliency")
      ->check(CLI::IsMember({"forward", "train", "saliency"}))
      ->capture_default_str();
  app.add_option("--iters", iters, "timed iterations")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--warmup", warmup, "untimed iterations first")->check(CLI::Range(0, 100000))->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    using namespace engine;
    const Device device = Device::parse(device_name);
    Generator init(1), data(2), drop(3);
    nets::AlexNet net(1000, 0.5, &init, &drop);
    net.to(device);
    const Tensor x = Tensor::randn({batch, 3, 224, 224}, data, DType::F32, device);
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < batch; ++i) labels.push_back((i * 37) % 1000);
    optim::SGD sgd(net.parameters(), optim::SgdOptions(0.001, 0.9));
    if (mode == "train") net.train(); else net.eval();
    if (mode == "saliency") net.requires_grad_(false);

    auto once = [&] {
      if (mode == "forward") {
        NoGradGuard ng;
        net(x);
      } else if (mode == "train") {
        sgd.zero_grad();
        cross_entropy(net(x), labels).backward();
        sgd.step();
      } else {
        Tensor in = x.detach().requires_grad_();
        saliency::class_score(net(in), labels).backward();
      }
      if (device.is_cuda()) kernels::cuda::synchronize();
    };
    for (int i = 0; i < warmup; ++i) once();
    std::vector<double> seconds;
    for (int i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      once();
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    fmt::print("alexnet {} batch {} on {}: median {:.4f} s per batch over {} runs (min {:.4f}, max {:.4f}); "
               "OpenBLAS threads: {}\n",
               mode, batch, device.str(), median, iters, seconds.front(), seconds.back(), kernels::blas_threading());
    fmt::print("images/s: {:.2f}\n", static_cast<double>(batch) / median);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "alexnet_throughput: {}\n", e.what());
    return 1;
  }
}
