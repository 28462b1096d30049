#include "engine/io/weights.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "engine/autograd.h"
#include "engine/io/h5.h"

namespace engine::io {
namespace {

constexpr const char* kFormat = "alexnet-engine-weights";
constexpr int64_t kFormatVersion = 1;
constexpr const char* kClassNames = "class_names";

WeightsMeta read_meta(const H5Reader& f) {
  WeightsMeta m;
  ENGINE_CHECK(f.has_attr("format") && f.attr("format") == kFormat, f.path(),
               ": not a weights file of this project (attribute 'format' is missing or is not '", kFormat,
               "'); convert torchvision weights with weights/convert_torchvision.py");
  ENGINE_CHECK(f.has_attr("format_version") && f.attr_int("format_version") == kFormatVersion, f.path(),
               ": unsupported format_version (expected ", kFormatVersion, ")");
  m.architecture = f.has_attr("architecture") ? f.attr("architecture") : "";
  m.num_classes = f.has_attr("num_classes") ? f.attr_int("num_classes") : 0;
  m.source = f.has_attr("source") ? f.attr("source") : "";
  if (f.has(kClassNames)) {
    m.class_names = f.read_strings(kClassNames);
    ENGINE_CHECK(m.num_classes == 0 || static_cast<int64_t>(m.class_names.size()) == m.num_classes, f.path(), ": ",
                 m.class_names.size(), " class names for num_classes = ", m.num_classes);
  }
  return m;
}

}  // namespace

WeightsMeta read_weights_meta(const std::string& path) {
  const H5Reader f(path);
  return read_meta(f);
}

WeightsMeta read_weights_meta(const H5Reader& file) { return read_meta(file); }

WeightsMeta load_weights(nn::Module& model, const std::string& path, const LoadOptions& options) {
  const H5Reader f(path);
  return load_weights(model, f, options);
}

WeightsMeta load_weights(nn::Module& model, const H5Reader& f, const LoadOptions& options) {
  const std::string& path = f.path();
  WeightsMeta meta = read_meta(f);
  if (!options.expect_architecture.empty())
    ENGINE_CHECK(meta.architecture == options.expect_architecture, path, ": weights are for architecture '",
                 meta.architecture, "', but the model is '", options.expect_architecture, "'");

  const std::set<std::string> skip(options.skip.begin(), options.skip.end());
  std::set<std::string> in_file;
  for (const std::string& n : f.names())
    if (n != kClassNames) in_file.insert(n);

  std::vector<std::string> missing, unexpected, mismatched;
  std::vector<std::pair<Tensor, std::string>> plan;
  std::set<std::string> in_model;
  for (const auto& [name, p] : model.named_parameters()) {
    in_model.insert(name);
    if (skip.count(name)) continue;
    if (!in_file.count(name)) {
      missing.push_back(name);
      continue;
    }
    const Shape s = f.shape_of(name);
    const std::string type = f.type_of(name);
    if (s != p.shape() || type != "float32") {
      mismatched.push_back(name + " (file: " + type + " " + shape_str(s) + ", model: float32 " +
                           shape_str(p.shape()) + ")");
      continue;
    }
    plan.emplace_back(p, name);
  }
  if (options.strict)
    for (const std::string& n : in_file)
      if (!in_model.count(n)) unexpected.push_back(n);

  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::ostringstream os;
    os << path << ": weights do not match the model";
    auto list = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      os << "; " << what << " (" << v.size() << "):";
      for (const std::string& s : v) os << " " << s;
    };
    list("missing keys", missing);
    list("unexpected keys", unexpected);
    list("shape or dtype mismatches", mismatched);
    throw Error(os.str());
  }

  NoGradGuard no_grad;
  for (auto& [p, name] : plan) p.copy_(f.read(name));
  return meta;
}

void save_weights(const nn::Module& model, const std::string& path, const WeightsMeta& meta) {
  H5Writer w(path);
  w.set_attr("format", kFormat);
  w.set_attr("format_version", kFormatVersion);
  w.set_attr("architecture", meta.architecture);
  w.set_attr("num_classes", meta.num_classes);
  w.set_attr("source", meta.source);
  for (const auto& [name, p] : model.named_parameters()) {
    ENGINE_CHECK(name != kClassNames, "parameter name '", name, "' is reserved");
    w.write(name, p.detach().to(DType::F32));
  }
  if (!meta.class_names.empty()) {
    ENGINE_CHECK(meta.num_classes == 0 || static_cast<int64_t>(meta.class_names.size()) == meta.num_classes,
                 path, ": ", meta.class_names.size(), " class names for num_classes = ", meta.num_classes);
    w.write_strings(kClassNames, meta.class_names);
  }
  w.commit();
}

}  // namespace engine::io
