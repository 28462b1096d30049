// predict: top-k ImageNet (or fine-tuned) classes for images, with torchvision's
// evaluation preprocessing.
//   predict --weights W.h5 [--device auto|cpu|cuda] [--topk 5] [--json] [--batch 16] IMAGE|DIR...
// A file that cannot be read is reported on stderr and skipped; the exit status is 1
// when any image failed, 0 otherwise.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "tools/common.h"

namespace {

struct Loaded {
  std::string path;
  engine::Tensor tensor;  // [3, 224, 224]
};

// Decodes and preprocesses the images in parallel; failures are reported and dropped.
std::vector<Loaded> load_batch(const std::vector<std::string>& paths, int* failures) {
  std::vector<Loaded> slots(paths.size());
  std::vector<std::string> errors(paths.size());
#pragma omp parallel for schedule(dynamic)
  for (size_t i = 0; i < paths.size(); ++i) {
    try {
      slots[i] = {paths[i], engine::io::eval_transform(engine::io::read_image(paths[i])).tensor};
    } catch (const std::exception& e) {
      errors[i] = tools::naming_file(paths[i], e.what());
    }
  }
  std::vector<Loaded> out;
  for (size_t i = 0; i < paths.size(); ++i) {
    if (!errors[i].empty()) {
      fmt::print(stderr, "predict: {}\n", errors[i]);
      ++*failures;
    } else {
      out.push_back(std::move(slots[i]));
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Top-k classes for images, with torchvision's evaluation preprocessing"};
  std::string weights, device_name = "cpu";
  int64_t topk = 5, batch = 16;
  bool json = false;
  std::vector<std::string> inputs;
  app.add_option("--weights", weights, "model weights (HDF5, see weights/README.md)")->required();
  app.add_option("--device", device_name, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--topk", topk, "classes to print per image")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", batch, "images per forward pass")->check(CLI::Range(1, 4096))->capture_default_str();
  app.add_flag("--json", json, "one JSON object per line per image");
  app.add_option("images", inputs, "image files or folders")->required();
  CLI11_PARSE(app, argc, argv);

  int failures = 0;
  try {
    const engine::Device device = engine::Device::parse(device_name);
    tools::LoadedModel m = tools::load_model(weights, device);
    const std::vector<std::string> paths = tools::collect_images(inputs);
    if (paths.empty()) {
      fmt::print(stderr, "predict: {}\n", tools::no_images_message(inputs));
      return 1;
    }
    engine::NoGradGuard no_grad;
    for (size_t first = 0; first < paths.size(); first += static_cast<size_t>(batch)) {
      const std::vector<std::string> chunk(paths.begin() + static_cast<std::ptrdiff_t>(first),
                                           paths.begin() + static_cast<std::ptrdiff_t>(std::min(paths.size(), first + batch)));
      const std::vector<Loaded> loaded = load_batch(chunk, &failures);
      if (loaded.empty()) continue;
      engine::TensorList xs;
      for (const Loaded& l : loaded) xs.push_back(l.tensor.reshape({1, 3, l.tensor.size(1), l.tensor.size(2)}));
      const engine::Tensor logits = (*m.model)(engine::cat(xs, 0).to(device)).to(engine::Device::cpu());
      const std::vector<float> all = logits.to_vector<float>();
      const int64_t K = logits.size(1);
      for (size_t i = 0; i < loaded.size(); ++i) {
        const std::vector<float> row(all.begin() + static_cast<std::ptrdiff_t>(i * K),
                                     all.begin() + static_cast<std::ptrdiff_t>((i + 1) * K));
        const auto top = tools::top_k(row, topk, m.meta);
        if (json) {
          nlohmann::json j;
          j["file"] = loaded[i].path;
          j["topk"] = nlohmann::json::array();
          for (const auto& p : top)
            j["topk"].push_back({{"index", p.index}, {"name", p.name}, {"prob", p.prob}, {"logit", p.logit}});
          fmt::print("{}\n", j.dump());
        } else {
          fmt::print("{}\n", loaded[i].path);
          for (size_t r = 0; r < top.size(); ++r)
            fmt::print("  {:>2}. {:<32} {:>7.3f}%   (class {}, logit {:.3f})\n", r + 1, top[r].name, 100 * top[r].prob,
                       top[r].index, top[r].logit);
        }
      }
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "predict: {}\n", e.what());
    return 1;
  }
  return failures > 0 ? 1 : 0;
}
