#include "tools/common.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "engine/error.h"
#include "engine/io/h5.h"

namespace tools {

namespace fs = std::filesystem;

namespace {
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
bool is_image_name(const fs::path& p) {
  const std::string e = lower(p.extension().string());
  return e == ".jpg" || e == ".jpeg" || e == ".png";
}
}  // namespace

std::vector<std::string> collect_images(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::recursive_directory_iterator(in, fs::directory_options::skip_permission_denied, ec))
        if (entry.is_regular_file(ec) && is_image_name(entry.path())) found.push_back(entry.path().string());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(in);
    }
  }
  return out;
}

LoadedModel load_model(const std::string& weights, engine::Device device) {
  LoadedModel m;
  const engine::io::H5Reader file(weights);  // read and checked once for everything below
  const engine::io::WeightsMeta meta = engine::io::read_weights_meta(file);
  try {
    m.arch = nets::parse_arch(meta.architecture);
  } catch (const engine::Error& e) {
    throw engine::Error(weights + ": " + e.what());
  }
  ENGINE_CHECK(meta.num_classes > 0, weights, ": attribute num_classes is missing or not positive");
  m.model = nets::make_model(m.arch, meta.num_classes);
  // An AlexNet fine-tuned in Case 2 (finetune --case 2) has one Linear(4096, K) as
  // classifier.4 and no classifier.6: rebuild that head before loading.
  if (m.arch == nets::Arch::AlexNet) {
    if (file.has("classifier.4.weight") && !file.has("classifier.6.weight"))
      nets::replace_head(*m.model, m.arch, 2, meta.num_classes);
  }
  engine::io::LoadOptions opt;
  opt.expect_architecture = meta.architecture;
  m.meta = engine::io::load_weights(*m.model, file, opt);
  m.model->to(device);
  m.model->eval();
  return m;
}

std::string class_name(const engine::io::WeightsMeta& meta, int64_t k) {
  if (k >= 0 && k < static_cast<int64_t>(meta.class_names.size())) return meta.class_names[static_cast<size_t>(k)];
  return "class " + std::to_string(k);
}

int64_t parse_class(const std::string& spec, const engine::io::WeightsMeta& meta) {
  const bool numeric = !spec.empty() && std::all_of(spec.begin(), spec.end(), [](unsigned char c) { return std::isdigit(c); });
  if (numeric) {
    const int64_t k = std::stoll(spec);
    ENGINE_CHECK(k < meta.num_classes, "class ", k, " is out of range: the model has ", meta.num_classes, " classes");
    return k;
  }
  for (size_t i = 0; i < meta.class_names.size(); ++i)
    if (lower(meta.class_names[i]) == lower(spec)) return static_cast<int64_t>(i);
  throw engine::Error("no class named '" + spec + "' in the weights file (give a name it stores, or an index)");
}

std::vector<Prediction> top_k(const std::vector<float>& logits, int64_t k, const engine::io::WeightsMeta& meta) {
  const int64_t K = static_cast<int64_t>(logits.size());
  const float mx = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float v : logits) z += std::exp(static_cast<double>(v - mx));
  std::vector<int64_t> idx(static_cast<size_t>(K));
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min(k, K);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int64_t a, int64_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  });
  std::vector<Prediction> out;
  for (int64_t i = 0; i < k; ++i) {
    const int64_t c = idx[static_cast<size_t>(i)];
    const double l = logits[static_cast<size_t>(c)];
    out.push_back({c, class_name(meta, c), std::exp(l - mx) / z, l});
  }
  return out;
}

std::string stem(const std::string& path) { return fs::path(path).stem().string(); }

std::string naming_file(const std::string& path, const std::string& message) {
  if (message.find(path) != std::string::npos) return message;
  return "image file '" + path + "': " + message;
}

std::string no_images_message(const std::vector<std::string>& inputs) {
  if (inputs.empty()) return "no images given";
  std::string where;
  for (const std::string& in : inputs) where += (where.empty() ? "'" : ", '") + in + "'";
  return "no images (.jpg, .jpeg, .png) found in " + where;
}

std::vector<uint8_t> scale_map(const std::vector<float>& map, double clip_percentile) {
  std::vector<float> sorted(map);
  float top = 0;
  if (!sorted.empty()) {
    if (clip_percentile < 100) {
      const size_t k = static_cast<size_t>(std::clamp(clip_percentile, 0.0, 100.0) / 100.0 * (sorted.size() - 1));
      std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k), sorted.end());
      top = sorted[k];
    } else {
      top = *std::max_element(sorted.begin(), sorted.end());
    }
  }
  std::vector<uint8_t> out(map.size(), 0);
  if (!(top > 0)) return out;
  for (size_t i = 0; i < map.size(); ++i)
    out[i] = static_cast<uint8_t>(std::lround(std::clamp(map[i] / top, 0.0f, 1.0f) * 255.0f));
  return out;
}

engine::io::Image overlay(const engine::io::Image& image, const std::vector<uint8_t>& map, double alpha) {
  // Piecewise-linear ramp through dark blue, blue, cyan, yellow, red.
  static const float stops[5][3] = {{0, 0, 0.5f}, {0, 0, 1}, {0, 1, 1}, {1, 1, 0}, {1, 0, 0}};
  engine::io::Image out(image.width, image.height);
  for (size_t i = 0; i < map.size() && i * 3 < image.rgb.size(); ++i) {
    const float t = map[i] / 255.0f * 4.0f;
    const int s = std::min(static_cast<int>(t), 3);
    const float f = t - static_cast<float>(s);
    // Opacity grows with saliency: the photograph shows unchanged where the map is zero.
    const double a = alpha * map[i] / 255.0;
    for (int c = 0; c < 3; ++c) {
      const float colour = (stops[s][c] * (1 - f) + stops[s + 1][c] * f) * 255.0f;
      const double v = (1 - a) * image.rgb[i * 3 + static_cast<size_t>(c)] + a * colour;
      out.rgb[i * 3 + static_cast<size_t>(c)] = static_cast<uint8_t>(std::lround(std::clamp(v, 0.0, 255.0)));
    }
  }
  return out;
}

engine::io::Image panel(const std::vector<engine::io::Image>& images, int gap) {
  int width = 0, height = 0;
  for (const auto& im : images) {
    width += im.width;
    height = std::max(height, im.height);
  }
  width += gap * static_cast<int>(images.size() > 0 ? images.size() - 1 : 0);
  engine::io::Image out(width, height);
  std::fill(out.rgb.begin(), out.rgb.end(), uint8_t{255});
  int x0 = 0;
  for (const auto& im : images) {
    for (int y = 0; y < im.height; ++y)
      std::copy(im.pixel(0, y), im.pixel(0, y) + static_cast<size_t>(im.width) * 3, out.pixel(x0, y));
    x0 += im.width + gap;
  }
  return out;
}

engine::io::Image gray_to_rgb(int width, int height, const std::vector<uint8_t>& gray) {
  engine::io::Image out(width, height);
  for (size_t i = 0; i < gray.size(); ++i) out.rgb[i * 3] = out.rgb[i * 3 + 1] = out.rgb[i * 3 + 2] = gray[i];
  return out;
}

}  // namespace tools
