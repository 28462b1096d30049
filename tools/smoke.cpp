// engine_smoke: AlexNet (torchvision's layout, seeded random weights) on a random batch:
// the input-gradient (saliency) pass, then forward, backward and SGD (momentum 0.9) steps on
// the same batch, with timings. It exercises the whole engine end to end.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "engine/autograd.h"
#include "engine/optim/sgd.h"
#include "engine/ops.h"
#include "engine/random.h"
#include "nets/alexnet.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double l2(const engine::Tensor& t) {
  double s = 0;
  for (double v : t.to_vector<double>()) s += v * v;
  return std::sqrt(s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"AlexNet forward, backward, saliency and SGD steps on a random batch"};
  std::string device_name = "cpu";
  int64_t batch = 4, classes = 10;
  int steps = 3;
  uint64_t seed = 0;
  double lr = 0.01;
  app.add_option("--device", device_name, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--batch", batch, "images per batch")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--classes", classes, "output classes")->check(CLI::Range(2, 100000))->capture_default_str();
  app.add_option("--steps", steps, "SGD steps")->check(CLI::Range(0, 1000))->capture_default_str();
  app.add_option("--lr", lr, "learning rate")->capture_default_str();
  app.add_option("--seed", seed, "seed for weights, data and dropout")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    using namespace engine;
    const Device device = Device::parse(device_name);
    Generator init(seed), data(seed + 1), drop(seed + 2);
    nets::AlexNet net(classes, 0.5, &init, &drop);
    net.to(device);
    int64_t nparams = 0;
    for (const Tensor& p : net.parameters()) nparams += p.numel();
    fmt::print("AlexNet: {} parameter tensors, {} values, device {}\n", net.parameters().size(), nparams,
               device.str());

    const Tensor x = Tensor::randn({batch, 3, 224, 224}, data, DType::F32, device);
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < batch; ++i) labels.push_back(i % classes);

    // Saliency: only the input requires a gradient; the weights get none.
    net.eval();
    net.requires_grad_(false);
    auto t0 = std::chrono::steady_clock::now();
    Tensor xin = x.detach().requires_grad_();
    Tensor logits = net(xin);
    sum(logits).backward();
    fmt::print("saliency pass: input gradient norm {:.4g}, weight gradients computed: {}  ({:.3f} s)\n",
               l2(xin.grad()), net.parameters()[0].grad().defined() ? "yes" : "no", seconds_since(t0));

    net.requires_grad_(true);
    net.train();
    optim::SGD sgd(net.parameters(), optim::SgdOptions(lr, /*momentum=*/0.9));
    for (int step = 0; step <= steps; ++step) {
      t0 = std::chrono::steady_clock::now();
      sgd.zero_grad();
      Tensor loss = cross_entropy(net(x), labels);
      loss.backward();
      const double fwd_bwd = seconds_since(t0);
      if (step < steps) sgd.step();
      fmt::print("step {}: loss {:.5f}  ({:.3f} s forward+backward, {:.1f} images/s)\n", step, loss.item(), fwd_bwd,
                 static_cast<double>(batch) / fwd_bwd);
    }
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "engine_smoke: {}\n", e.what());
    return 1;
  }
}
