// saliency: image-specific class saliency maps (Simonyan et al. 2013) and the methods
// that followed, all from the engine's backward pass; and the paper's class model
// visualisation.
//   saliency --weights W.h5 --out DIR [--method vanilla|smoothgrad|integrated|guided|gradcam]
//            [--class N|NAME ...] [--device auto|cpu|cuda] [--batch 8] [--clip 99] IMAGE|DIR...
//   saliency --weights W.h5 --out DIR --visualize-class N|NAME [--iterations 200]
// For each image: DIR/<stem>_saliency.png, _overlay.png, _panel.png and _saliency.npy
// (the raw float32 map), and one JSON line on stdout. A file that cannot be read is
// reported and skipped; the exit status is 1 when any image failed.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "engine/autograd.h"
#include "engine/io/npy.h"
#include "engine/ops.h"
#include "engine/saliency.h"
#include "tools/common.h"

namespace fs = std::filesystem;
namespace sal = engine::saliency;

namespace {

struct Item {
  std::string path, stem;
  engine::io::Preprocessed pre;
  int64_t requested = -1;  // the target given on the command line, or -1 for top-1
};

void write_outputs(const Item& item, const std::vector<float>& map, const std::string& out_dir, double clip,
                   nlohmann::json* outputs) {
  const int W = item.pre.image.width, H = item.pre.image.height;
  const std::string base = (fs::path(out_dir) / item.stem).string();
  const std::vector<uint8_t> scaled = tools::scale_map(map, clip);
  const engine::io::Image grey = tools::gray_to_rgb(W, H, scaled);
  const engine::io::Image over = tools::overlay(item.pre.image, scaled);
  // Each file is written atomically; when one fails, the image's others are removed
  // too, so that an image has all four outputs or none.
  std::vector<std::string> written;
  try {
    engine::io::write_png_gray(base + "_saliency.png", W, H, scaled);
    written.push_back(base + "_saliency.png");
    engine::io::write_png(base + "_overlay.png", over);
    written.push_back(base + "_overlay.png");
    engine::io::write_png(base + "_panel.png", tools::panel({item.pre.image, grey, over}));
    written.push_back(base + "_panel.png");
    engine::io::write_npy(base + "_saliency.npy", engine::Tensor::from_vector({H, W}, map));
  } catch (...) {
    for (const std::string& p : written) std::remove(p.c_str());
    throw;
  }
  *outputs = {{"saliency", base + "_saliency.png"},
              {"overlay", base + "_overlay.png"},
              {"panel", base + "_panel.png"},
              {"npy", base + "_saliency.npy"}};
}

int visualize(tools::LoadedModel& m, const std::string& spec, const std::string& out_dir, int iterations, double lr,
              double l2) {
  const int64_t target = tools::parse_class(spec, m.meta);
  sal::VisualizeOptions opt;
  opt.steps = iterations;
  opt.lr = lr;
  opt.l2 = l2;
  const engine::Tensor img = sal::visualize_class(*m.model, target, opt).to(engine::Device::cpu());
  // Back to pixels: undo the normalisation, then stretch to the full range for display.
  const engine::io::Normalization norm;
  const int64_t S = img.size(1);
  const std::vector<float> v = img.to_vector<float>();
  std::vector<float> rgb(v.size());
  float lo = 1e30f, hi = -1e30f;
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t i = 0; i < S * S; ++i) {
      const float x = v[static_cast<size_t>(c * S * S + i)] * norm.std[static_cast<size_t>(c)] + norm.mean[static_cast<size_t>(c)];
      rgb[static_cast<size_t>(i * 3 + c)] = x;
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  engine::io::Image out(static_cast<int>(S), static_cast<int>(S));
  for (size_t i = 0; i < rgb.size(); ++i)
    out.rgb[i] = static_cast<uint8_t>(std::lround(hi > lo ? 255.0f * (rgb[i] - lo) / (hi - lo) : 0.0f));
  std::string name = tools::class_name(m.meta, target);
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  const std::string path = (fs::path(out_dir) / fmt::format("class_{}_{}.png", target, name)).string();
  engine::io::write_png(path, out);
  nlohmann::json j = {{"visualize_class", {{"index", target}, {"name", tools::class_name(m.meta, target)}}},
                      {"iterations", iterations},
                      {"image", path}};
  fmt::print("{}\n", j.dump());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Image-specific class saliency maps through the engine's backward pass"};
  std::string weights, out_dir, device_name = "cpu", method_name = "vanilla", visualize_spec;
  std::vector<std::string> inputs, classes;
  int64_t batch = 8;
  double clip = 99.0;
  sal::Options opt;
  int iterations = 200;
  double vis_lr = 1.0, vis_l2 = 1e-4;
  app.add_option("--weights", weights, "model weights (HDF5, see weights/README.md)")->required();
  app.add_option("--out", out_dir, "output folder (created if missing)")->required();
  app.add_option("--method", method_name, "vanilla, smoothgrad, integrated, guided or gradcam")->capture_default_str();
  app.add_option("--class", classes,
                 "target class (index or name): once for every image, or once per image in order; "
                 "default: each image's top-1 prediction")
      ->allow_extra_args(false);  // one value per --class, so images after it stay images
  app.add_option("--device", device_name, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--batch", batch, "images per backward pass")->check(CLI::Range(1, 1024))->capture_default_str();
  app.add_option("--clip", clip, "percentile of the map shown as full intensity (100: the maximum)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option("--samples", opt.samples, "smoothgrad: noisy samples")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--noise", opt.noise, "smoothgrad: noise std as a fraction of the image's range")->capture_default_str();
  app.add_option("--steps", opt.steps, "integrated: steps from the black baseline")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seed", opt.seed, "smoothgrad: noise seed")->capture_default_str();
  app.add_option("--visualize-class", visualize_spec, "class model visualisation of this class instead of maps");
  app.add_option("--iterations", iterations, "class visualisation: gradient-ascent steps")->capture_default_str();
  app.add_option("--lr", vis_lr, "class visualisation: step size")->capture_default_str();
  app.add_option("--l2", vis_l2, "class visualisation: lambda of the L2 penalty")->capture_default_str();
  app.add_option("images", inputs, "image files or folders");
  CLI11_PARSE(app, argc, argv);

  int failures = 0;
  try {
    opt.method = sal::parse_method(method_name);
    const engine::Device device = engine::Device::parse(device_name);
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    ENGINE_CHECK(fs::is_directory(out_dir), out_dir, ": cannot create the output folder",
                 ec ? " (" + ec.message() + ")" : std::string());
    tools::LoadedModel m = tools::load_model(weights, device);
    if (!visualize_spec.empty()) return visualize(m, visualize_spec, out_dir, iterations, vis_lr, vis_l2);

    const std::vector<std::string> paths = tools::collect_images(inputs);
    ENGINE_CHECK(!paths.empty(), tools::no_images_message(inputs));
    ENGINE_CHECK(classes.size() <= 1 || classes.size() == paths.size(), "--class given ", classes.size(),
                 " times for ", paths.size(), " images: give it once, or once per image");
    std::vector<int64_t> requested(paths.size(), -1);
    for (size_t i = 0; i < paths.size() && !classes.empty(); ++i)
      requested[i] = tools::parse_class(classes.size() == 1 ? classes[0] : classes[i], m.meta);

    const sal::Split split = nets::gradcam_split(*m.model, m.arch);
    std::map<std::string, int> stems;
    for (size_t first = 0; first < paths.size(); first += static_cast<size_t>(batch)) {
      const size_t last = std::min(paths.size(), first + static_cast<size_t>(batch));
      std::vector<Item> items(last - first);
      std::vector<std::string> errors(items.size());
#pragma omp parallel for schedule(dynamic)
      for (size_t i = 0; i < items.size(); ++i) {
        try {
          items[i].pre = engine::io::eval_transform(engine::io::read_image(paths[first + i]));
        } catch (const std::exception& e) {
          errors[i] = tools::naming_file(paths[first + i], e.what());
        }
      }
      std::vector<Item> ok;
      for (size_t i = 0; i < items.size(); ++i) {
        if (!errors[i].empty()) {
          fmt::print(stderr, "saliency: {}\n", errors[i]);
          ++failures;
          continue;
        }
        items[i].path = paths[first + i];
        const std::string s = tools::stem(items[i].path);
        const int seen = stems[s]++;
        items[i].stem = seen == 0 ? s : fmt::format("{}_{}", s, seen + 1);
        items[i].requested = requested[first + i];
        ok.push_back(std::move(items[i]));
      }
      if (ok.empty()) continue;

      engine::TensorList xs;
      for (const Item& it : ok) xs.push_back(it.pre.tensor.reshape({1, 3, it.pre.tensor.size(1), it.pre.tensor.size(2)}));
      const engine::Tensor x = engine::cat(xs, 0).to(device);
      // Targets: as requested, else the top-1 of a clean forward pass.
      std::vector<int64_t> targets;
      engine::Tensor clean;
      {
        engine::NoGradGuard ng;
        clean = (*m.model)(x).to(engine::Device::cpu());
      }
      const int64_t K = clean.size(1);
      const std::vector<float> logits = clean.to_vector<float>();
      std::vector<std::vector<tools::Prediction>> tops;
      for (size_t i = 0; i < ok.size(); ++i) {
        const std::vector<float> row(logits.begin() + static_cast<std::ptrdiff_t>(i * K),
                                     logits.begin() + static_cast<std::ptrdiff_t>((i + 1) * K));
        tops.push_back(tools::top_k(row, 5, m.meta));
        targets.push_back(ok[i].requested >= 0 ? ok[i].requested : tops.back()[0].index);
      }
      const sal::Result r = sal::compute(*m.model, x, targets, opt, &split);
      const engine::Tensor maps = r.maps.to(engine::Device::cpu()).to(engine::DType::F32);
      const int64_t HW = maps.size(1) * maps.size(2);
      const std::vector<float> all = maps.to_vector<float>();
      for (size_t i = 0; i < ok.size(); ++i) {
        const std::vector<float> map(all.begin() + static_cast<std::ptrdiff_t>(i * HW),
                                     all.begin() + static_cast<std::ptrdiff_t>((i + 1) * HW));
        nlohmann::json j;
        j["file"] = ok[i].path;
        j["method"] = sal::method_name(opt.method);
        j["class"] = {{"index", targets[i]}, {"name", tools::class_name(m.meta, targets[i])},
                      {"source", ok[i].requested >= 0 ? "requested" : "top-1"}};
        j["topk"] = nlohmann::json::array();
        for (const auto& p : tops[i])
          j["topk"].push_back({{"index", p.index}, {"name", p.name}, {"prob", p.prob}, {"logit", p.logit}});
        try {
          nlohmann::json outputs;
          write_outputs(ok[i], map, out_dir, clip, &outputs);
          j["outputs"] = outputs;
        } catch (const std::exception& e) {
          fmt::print(stderr, "saliency: {}\n", e.what());
          ++failures;
          continue;
        }
        fmt::print("{}\n", j.dump());
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "saliency: {}\n", e.what());
    return 1;
  }
  return failures > 0 ? 1 : 0;
}
