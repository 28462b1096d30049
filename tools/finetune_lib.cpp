#include "tools/finetune_lib.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <set>

#include "engine/autograd.h"
#include "engine/data/dataset.h"
#include "engine/data/feature_cache.h"
#include "engine/data/loader.h"
#include "engine/error.h"
#include "engine/io/h5.h"
#include "engine/io/image.h"
#include "engine/io/weights.h"
#include "engine/ops.h"
#include "engine/optim/sgd.h"
#include "engine/random.h"
#include "nets/zoo.h"
#include "tools/plot.h"

namespace finetune {

namespace fs = std::filesystem;
using engine::Tensor;
using json = nlohmann::json;

namespace {

constexpr const char* kCheckpoint = "checkpoint.h5";
constexpr const char* kCheckpointFormat = "alexnet-engine-finetune-checkpoint";
constexpr int64_t kCheckpointVersion = 1;
// Feature extraction runs in fixed batches of this size, in dataset order, so that the
// cached values never depend on the training batch size or the shuffling.
constexpr int64_t kExtractBatch = 32;
// Outputs that are written through temporary files (stale ones are removed on resume).
const char* const kOutputs[] = {"checkpoint.h5", "frozen.h5",     "final.h5",      "metrics.csv",     "metrics.json",
                                "curves.png",    "confusion.csv", "confusion.png", "feature_cache.h5"};

// Streams derived from the run's seed.
enum : uint64_t { kInitStream = 1, kHeadStream = 2, kDropoutStream = 3, kShuffleStream = 4, kAugmentStream = 5 };

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// FNV-1a, 64 bits.
struct Hasher {
  uint64_t h = 1469598103934665603ULL;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ULL;
  }
  void str(const std::string& s) {
    const uint64_t n = s.size();
    bytes(&n, sizeof n);
    bytes(s.data(), s.size());
  }
  void num(int64_t v) { bytes(&v, sizeof v); }
  // Large arrays, 8 bytes per step (the tail byte by byte).
  void words(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, b + i, 8);
      h = (h ^ w) * 1099511628211ULL;
    }
    bytes(b + i, n - i);
  }
  std::string hex() const { return fmt::format("{:016x}", h); }
};

std::string dataset_fingerprint(const engine::data::ImageFolder& ds) {
  Hasher h;
  for (const std::string& c : ds.classes) h.str(c);
  for (const auto* part : {&ds.train, &ds.test}) {
    h.num(static_cast<int64_t>(part->size()));
    for (const auto& s : *part) {
      h.str(s.path);
      h.num(s.label);
    }
  }
  return h.hex();
}


std::string percent(double v) { return std::isfinite(v) ? fmt::format("{:.1f}%", 100 * v) : "n/a"; }

}  // namespace

// ---- configuration ---------------------------------------------------------------------

json Config::to_json() const {
  return json{{"data", data},
              {"out", out},
              {"weights", weights},
              {"arch", arch},
              {"case", which_case},
              {"train", train},
              {"lr", lr},
              {"lr_backbone", lr_backbone},
              {"momentum", momentum},
              {"weight_decay", weight_decay},
              {"step_size", step_size},
              {"gamma", gamma},
              {"epochs", epochs},
              {"batch_size", batch_size},
              {"seed", seed},
              {"augment", augment},
              {"feature_cache", feature_cache},
              {"test_fraction", test_fraction},
              {"device", device},
              {"workers", workers},
              {"cache_dir", cache_dir},
              {"cache_memory_mb", cache_memory_mb},
              {"strict", strict}};
}

Config Config::from_json(const json& j) {
  Config c;
  try {
    c.data = j.at("data").get<std::string>();
    c.out = j.at("out").get<std::string>();
    c.weights = j.at("weights").get<std::string>();
    c.arch = j.at("arch").get<std::string>();
    c.which_case = j.at("case").get<int>();
    c.train = j.at("train").get<std::string>();
    c.lr = j.at("lr").get<double>();
    c.lr_backbone = j.at("lr_backbone").get<double>();
    c.momentum = j.at("momentum").get<double>();
    c.weight_decay = j.at("weight_decay").get<double>();
    c.step_size = j.at("step_size").get<int64_t>();
    c.gamma = j.at("gamma").get<double>();
    c.epochs = j.at("epochs").get<int64_t>();
    c.batch_size = j.at("batch_size").get<int64_t>();
    c.seed = j.at("seed").get<uint64_t>();
    c.augment = j.at("augment").get<bool>();
    c.feature_cache = j.at("feature_cache").get<bool>();
    c.test_fraction = j.at("test_fraction").get<double>();
    c.device = j.value("device", c.device);
    c.workers = j.value("workers", c.workers);
    c.cache_dir = j.value("cache_dir", c.cache_dir);
    c.cache_memory_mb = j.value("cache_memory_mb", c.cache_memory_mb);
    c.strict = j.value("strict", c.strict);
  } catch (const json::exception& e) {
    throw engine::Error(std::string("the stored run configuration is incomplete: ") + e.what());
  }
  return c;
}

void validate(Config& c) {
  ENGINE_CHECK(!c.data.empty(), "--data is required: the image folder to train on");
  ENGINE_CHECK(!c.out.empty(), "--out is required: the folder for the results");
  ENGINE_CHECK(!c.arch.empty() || !c.weights.empty(), "--arch is required when no --weights are given");
  if (!c.arch.empty()) nets::parse_arch(c.arch);
  ENGINE_CHECK(c.which_case == 1 || c.which_case == 2, "--case must be 1 or 2, got ", c.which_case);
  ENGINE_CHECK(c.which_case == 1 || c.arch != "squeezenet1_1", "--case 2 is defined for AlexNet only");
  ENGINE_CHECK(c.train == "new" || c.train == "classifier" || c.train == "all", "--train must be new, classifier or all, got '",
               c.train, "'");
  ENGINE_CHECK(std::isfinite(c.lr) && c.lr > 0, "--lr must be a positive number, got ", c.lr);
  if (c.lr_backbone < 0) c.lr_backbone = c.lr / 10;
  ENGINE_CHECK(std::isfinite(c.lr_backbone), "--lr-backbone must be a finite number, got ", c.lr_backbone);
  ENGINE_CHECK(std::isfinite(c.momentum) && c.momentum >= 0 && c.momentum < 1, "--momentum must be in [0, 1), got ",
               c.momentum);
  ENGINE_CHECK(std::isfinite(c.weight_decay) && c.weight_decay >= 0, "--weight-decay must be non-negative, got ",
               c.weight_decay);
  ENGINE_CHECK(c.step_size >= 1, "--step-size must be at least 1 epoch, got ", c.step_size);
  ENGINE_CHECK(std::isfinite(c.gamma) && c.gamma > 0, "--gamma must be positive, got ", c.gamma);
  ENGINE_CHECK(c.epochs >= 1 && c.epochs <= 100000, "--epochs must be in [1, 100000], got ", c.epochs);
  ENGINE_CHECK(c.batch_size >= 1 && c.batch_size <= 65536, "--batch-size must be in [1, 65536], got ", c.batch_size);
  ENGINE_CHECK(c.test_fraction > 0 && c.test_fraction < 1, "--test-fraction must be in (0, 1), got ", c.test_fraction);
  ENGINE_CHECK(c.workers >= 0 && c.workers <= 64, "--workers must be in [0, 64], got ", c.workers);
  ENGINE_CHECK(c.cache_memory_mb >= 0, "--cache-memory-mb must be non-negative, got ", c.cache_memory_mb);
  engine::Device::parse(c.device);
}

json EpochMetrics::to_json() const {
  return json{{"epoch", epoch},       {"train_loss", train_loss}, {"train_acc", train_acc},
              {"test_loss", test_loss}, {"test_acc", test_acc},     {"seconds", seconds},
              {"images_per_second", images_per_second}};
}

EpochMetrics EpochMetrics::from_json(const json& j) {
  EpochMetrics m;
  auto num = [&](const char* k) {
    const json& v = j.at(k);
    return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
  };
  m.epoch = j.at("epoch").get<int64_t>();
  m.train_loss = num("train_loss");
  m.train_acc = num("train_acc");
  m.test_loss = num("test_loss");
  m.test_acc = num("test_acc");
  m.seconds = num("seconds");
  m.images_per_second = num("images_per_second");
  return m;
}

// ---- output files ------------------------------------------------------------------------

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    ENGINE_CHECK(static_cast<bool>(f), path, ": cannot create (is the folder writable?)");
    f << text;
    f.flush();
    if (!f) {
      f.close();
      std::remove(tmp.c_str());
      throw engine::Error(path + ": cannot write");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw engine::Error(path + ": cannot move the finished file into place: " + ec.message());
  }
}

std::string metrics_csv(const std::vector<EpochMetrics>& metrics) {
  std::string s = "epoch,train_loss,train_acc,test_loss,test_acc,seconds,images_per_second\n";
  for (const EpochMetrics& m : metrics)
    s += fmt::format("{},{:.6f},{:.6f},{:.6f},{:.6f},{:.3f},{:.2f}\n", m.epoch, m.train_loss, m.train_acc, m.test_loss,
                     m.test_acc, m.seconds, m.images_per_second);
  return s;
}

namespace {
// A CSV field, quoted when it holds a comma, quote or newline.
std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}
}  // namespace

std::string confusion_csv(const std::vector<std::string>& classes, const std::vector<std::vector<int64_t>>& confusion) {
  std::string s = "true\\predicted";
  for (const std::string& c : classes) s += "," + csv_field(c);
  s += "\n";
  for (size_t t = 0; t < classes.size() && t < confusion.size(); ++t) {
    s += csv_field(classes[t]);
    for (int64_t v : confusion[t]) s += "," + std::to_string(v);
    s += "\n";
  }
  return s;
}

Config load_run_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kCheckpoint).string();
  std::error_code ec;
  ENGINE_CHECK(fs::is_directory(dir, ec), dir, ": no such folder (--resume expects the --out folder of a run)");
  ENGINE_CHECK(fs::is_regular_file(path, ec), path, ": no checkpoint to resume from (a run writes one after each epoch)");
  engine::io::H5Reader r(path);
  ENGINE_CHECK(r.has_attr("format") && r.attr("format") == kCheckpointFormat, path, ": not a finetune checkpoint");
  const std::vector<std::string> cfg = r.read_strings("config");
  ENGINE_CHECK(cfg.size() == 1, path, ": the stored configuration is malformed");
  json j;
  try {
    j = json::parse(cfg[0]);
  } catch (const json::exception& e) {
    throw engine::Error(path + ": the stored configuration is not valid JSON: " + e.what());
  }
  try {
    Config c = Config::from_json(j);
    c.out = dir;
    return c;
  } catch (const engine::Error& e) {
    throw engine::Error(path + ": " + e.what());
  }
}

// ---- the run ---------------------------------------------------------------------------------

namespace {

struct LossNotFinite : engine::Error {
  using engine::Error::Error;
};

class Run {
 public:
  Run(Config cfg, Observer& obs, bool resume) : cfg_(std::move(cfg)), obs_(obs), resume_(resume) {}

  Summary go() {
    device_ = engine::Device::parse(cfg_.device);
    open_dataset();
    build_model();
    choose_path();
    prepare_out();
    try {
      if (resume_) load_checkpoint();
      else frozen_ = frozen_fingerprint();
      if (done_epochs_ >= cfg_.epochs) {
        summary_.already_complete = true;
        finish_summary();
        return summary_;
      }
      if (cached_) extract_features();
      for (int64_t e = done_epochs_ + 1; e <= cfg_.epochs; ++e) epoch(e);
      save_final();
      // Plots of an interrupted process may have finished after the start of this one.
      if (resume_) remove_stale_temporaries();
    } catch (...) {
      cleanup_if_nothing_written();
      throw;
    }
    finish_summary();
    return summary_;
  }

 private:
  // ---- setup -----------------------------------------------------------------------------
  void open_dataset() {
    engine::data::ImageFolderOptions o;
    o.test_fraction = cfg_.test_fraction;
    o.seed = cfg_.seed;
    ds_ = engine::data::open_image_folder(cfg_.data, o);
    ENGINE_CHECK(ds_.classes.size() >= 2, cfg_.data, ": found ", ds_.classes.size(),
                 " class folder; at least two classes are needed");
    summary_.classes = ds_.classes;
    summary_.layout = ds_.layout;
    summary_.train_images = static_cast<int64_t>(ds_.train.size());
    summary_.test_images = static_cast<int64_t>(ds_.test.size());
  }

  void build_model() {
    int64_t file_classes = 1000;
    if (!resume_ && !cfg_.weights.empty()) {
      const engine::io::WeightsMeta meta = engine::io::read_weights_meta(cfg_.weights);
      if (cfg_.arch.empty()) cfg_.arch = meta.architecture;
      ENGINE_CHECK(meta.architecture == cfg_.arch, cfg_.weights, ": holds '", meta.architecture,
                   "' weights but --arch is ", cfg_.arch);
      ENGINE_CHECK(meta.num_classes > 0, cfg_.weights, ": attribute num_classes is missing or not positive");
      file_classes = meta.num_classes;
    }
    try {
      arch_ = nets::parse_arch(cfg_.arch);
    } catch (const engine::Error& e) {
      throw engine::Error((cfg_.weights.empty() ? std::string("--arch") : cfg_.weights) + ": " + e.what());
    }
    ENGINE_CHECK(cfg_.which_case == 1 || arch_ == nets::Arch::AlexNet, "--case 2 is defined for AlexNet only");
    summary_.arch = cfg_.arch;

    engine::Generator init_gen(engine::data::derive_seed(cfg_.seed, {kInitStream}));
    engine::Generator head_gen(engine::data::derive_seed(cfg_.seed, {kHeadStream}));
    dropout_gen_ = std::make_unique<engine::Generator>(engine::data::derive_seed(cfg_.seed, {kDropoutStream}));
    model_ = nets::make_model(arch_, file_classes, &init_gen, dropout_gen_.get());
    if (!resume_ && !cfg_.weights.empty()) {
      engine::io::LoadOptions lo;
      lo.expect_architecture = cfg_.arch;
      engine::io::load_weights(*model_, cfg_.weights, lo);
    }
    const std::vector<std::string> fresh_names =
        nets::replace_head(*model_, arch_, cfg_.which_case, static_cast<int64_t>(ds_.classes.size()), &head_gen);
    const std::set<std::string> fresh(fresh_names.begin(), fresh_names.end());

    std::vector<engine::Tensor> new_params, old_params;
    for (auto& [name, p] : model_->named_parameters()) {
      const bool trainable = cfg_.train == "all" || (cfg_.train == "classifier" && starts_with(name, "classifier.")) ||
                             fresh.count(name) > 0;
      engine::Tensor t = p;
      t.requires_grad_(trainable);
      (trainable ? summary_.trainable_params : summary_.frozen_params) += p.numel();
      if (!trainable) continue;
      if (fresh.count(name)) {
        new_params.push_back(p);
        group_names_new_.push_back(name);
      } else {
        old_params.push_back(p);
        group_names_old_.push_back(name);
      }
    }
    model_->to(device_);
    std::vector<engine::optim::ParamGroup> groups;
    const engine::optim::SgdOptions o_new(cfg_.lr, cfg_.momentum, 0.0, cfg_.weight_decay);
    const engine::optim::SgdOptions o_old(cfg_.lr_backbone, cfg_.momentum, 0.0, cfg_.weight_decay);
    groups.push_back({new_params, o_new});
    if (!old_params.empty()) groups.push_back({old_params, o_old});
    opt_ = std::make_unique<engine::optim::SGD>(std::move(groups));
    sched_ = std::make_unique<engine::optim::StepLR>(*opt_, cfg_.step_size, cfg_.gamma);
  }

  void choose_path() {
    bool trunk_frozen = true;
    for (const auto& [name, p] : model_->named_parameters())
      if (!starts_with(name, "classifier.") && p.requires_grad()) trunk_frozen = false;
    cached_ = cfg_.feature_cache && !cfg_.augment && trunk_frozen;
    if (cached_) summary_.path_used = "cached features";
    else if (!cfg_.feature_cache) summary_.path_used = "full network (--no-feature-cache)";
    else if (cfg_.augment) summary_.path_used = "full network (augmentation changes every epoch's input)";
    else summary_.path_used = "full network (trainable layers before the classifier)";
  }

  void prepare_out() {
    const fs::path out(cfg_.out);
    std::error_code ec;
    if (resume_) {
      ENGINE_CHECK(fs::is_regular_file(out / kCheckpoint, ec), (out / kCheckpoint).string(), ": no checkpoint to resume from");
      remove_stale_temporaries();
    } else {
      ENGINE_CHECK(!fs::exists(out, ec) || fs::is_directory(out, ec), cfg_.out, ": exists and is not a folder");
      for (const char* f : {kCheckpoint, "final.h5"})
        ENGINE_CHECK(!fs::exists(out / f, ec), cfg_.out, " already holds a finetune run (", f,
                     "): continue it with --resume ", cfg_.out, ", or choose another --out");
      const bool existed = fs::exists(out, ec);
      fs::create_directories(out, ec);
      ENGINE_CHECK(fs::is_directory(out), cfg_.out, ": cannot create the output folder",
                   ec ? " (" + ec.message() + ")" : std::string());
      created_out_ = !existed;
    }
    // A probe file proves the folder is writable before any work is done.
    const fs::path probe = out / (".finetune-probe-" + std::to_string(::getpid()));
    {
      std::ofstream f(probe);
      if (!f) {
        if (created_out_) fs::remove(out, ec);
        throw engine::Error(cfg_.out + ": the output folder is not writable");
      }
    }
    fs::remove(probe, ec);
  }

  void remove_stale_temporaries() {
    std::error_code ec;
    for (fs::directory_iterator it(cfg_.out, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string n = it->path().filename().string();
      for (const char* o : kOutputs)
        if (starts_with(n, std::string(o) + ".tmp-")) fs::remove(it->path(), ec);
    }
  }

  // A failure before the first checkpoint leaves no trace: files of this run are
  // removed, and the output folder too when this run created it.
  void cleanup_if_nothing_written() {
    if (resume_ || wrote_checkpoint_) return;
    cache_.reset();
    std::error_code ec;
    const fs::path out(cfg_.out);
    fs::remove(out / "feature_cache.h5", ec);
    fs::remove(out / "frozen.h5", ec);
    if (created_out_ && fs::is_empty(out, ec)) fs::remove(out, ec);
  }

  // ---- checkpoints ---------------------------------------------------------------------------
  std::vector<std::string> param_names_in_optimizer_order() const {
    std::vector<std::string> names = group_names_new_;
    names.insert(names.end(), group_names_old_.begin(), group_names_old_.end());
    return names;
  }

  json metrics_json() const {
    json rows = json::array();
    for (const EpochMetrics& m : summary_.metrics) rows.push_back(m.to_json());
    return rows;
  }

  // Names, shapes and values of the frozen parameters; "" when there are none.
  std::string frozen_fingerprint() const {
    Hasher h;
    int64_t n = 0;
    for (const auto& [name, p] : model_->named_parameters()) {
      if (p.requires_grad()) continue;
      h.str(name);
      for (int64_t d : p.shape()) h.num(d);
      const engine::Tensor c = p.detach().to(engine::Device::cpu());
      h.words(c.raw_data(), static_cast<size_t>(c.numel()) * engine::element_size(c.dtype()));
      ++n;
    }
    return n > 0 ? h.hex() : "";
  }

  // The frozen parameters never change: they are written once, to frozen.h5, before
  // the first checkpoint, which then holds only what training changes.
  void save_frozen() {
    engine::io::H5Writer w((fs::path(cfg_.out) / "frozen.h5").string());
    w.set_attr("format", std::string(kCheckpointFormat) + "-frozen");
    w.set_attr("fingerprint", frozen_);
    for (const auto& [name, p] : model_->named_parameters())
      if (!p.requires_grad()) w.write("model." + name, p.detach());
    w.commit();
  }

  void save_checkpoint(int64_t epoch) {
    const std::string path = (fs::path(cfg_.out) / kCheckpoint).string();
    if (!wrote_checkpoint_ && !resume_ && !frozen_.empty()) save_frozen();
    engine::io::H5Writer w(path);
    w.set_attr("format", kCheckpointFormat);
    w.set_attr("format_version", kCheckpointVersion);
    w.set_attr("epoch", epoch);
    w.set_attr("architecture", cfg_.arch);
    w.set_attr("steplr_last_epoch", sched_->last_epoch());
    w.set_attr("dropout_seed", static_cast<int64_t>(dropout_gen_->seed()));
    w.set_attr("dropout_offset", static_cast<int64_t>(dropout_gen_->offset()));
    w.set_attr("dataset", dataset_fingerprint(ds_));
    w.set_attr("frozen", frozen_);
    w.write_strings("config", {cfg_.to_json().dump()});
    w.write_strings("metrics", {metrics_json().dump()});
    w.write_strings("skipped", summary_.skipped);
    w.write_strings("class_names", ds_.classes);
    for (const auto& [name, p] : model_->named_parameters())
      if (p.requires_grad()) w.write("model." + name, p.detach());
    const std::vector<engine::Tensor> bufs = opt_->state();
    const std::vector<std::string> names = param_names_in_optimizer_order();
    for (size_t k = 0; k < bufs.size(); ++k)
      if (bufs[k].defined()) w.write("momentum." + names[k], bufs[k]);
    std::vector<double> lrs;
    for (const auto& g : opt_->param_groups()) lrs.push_back(g.options.lr);
    w.write("optimizer.lr", engine::Tensor::from_vector({static_cast<int64_t>(lrs.size())}, lrs));
    w.commit();
    wrote_checkpoint_ = true;
  }

  void load_checkpoint() {
    const std::string path = (fs::path(cfg_.out) / kCheckpoint).string();
    engine::io::H5Reader r(path);
    ENGINE_CHECK(r.has_attr("format") && r.attr("format") == kCheckpointFormat, path, ": not a finetune checkpoint");
    ENGINE_CHECK(r.attr_int("format_version") == kCheckpointVersion, path, ": checkpoint format version ",
                 r.attr_int("format_version"), " is not supported");
    ENGINE_CHECK(r.read_strings("class_names") == ds_.classes, path, ": the run was trained on other classes than ",
                 cfg_.data, " now holds");
    ENGINE_CHECK(r.attr("dataset") == dataset_fingerprint(ds_), path, ": the images under ", cfg_.data,
                 " changed since the run started (files added, removed or renamed); resuming would not continue the "
                 "same run");
    done_epochs_ = r.attr_int("epoch");
    ENGINE_CHECK(done_epochs_ >= 1, path, ": bad epoch ", done_epochs_);
    summary_.resumed_from = done_epochs_;
    const std::string frozen = r.attr("frozen");
    const std::string frozen_path = (fs::path(cfg_.out) / "frozen.h5").string();
    std::unique_ptr<engine::io::H5Reader> fr;
    if (!frozen.empty()) {
      std::error_code ec;
      ENGINE_CHECK(fs::is_regular_file(frozen_path, ec), frozen_path,
                   ": missing; it holds the frozen parameters the checkpoint needs");
      fr = std::make_unique<engine::io::H5Reader>(frozen_path);
    }
    {
      engine::NoGradGuard no_grad;
      for (auto& [name, p] : model_->named_parameters()) {
        const engine::io::H5Reader& src = p.requires_grad() ? r : *fr;
        const std::string key = "model." + name;
        ENGINE_CHECK(p.requires_grad() || fr, path, ": the checkpoint has no frozen parameters but '", name,
                     "' is frozen in this run");
        ENGINE_CHECK(src.has(key), src.path(), ": no dataset '", key, "'");
        const engine::Tensor t = src.read(key);
        ENGINE_CHECK(t.shape() == p.shape() && t.dtype() == p.dtype(), src.path(), ": '", key, "' is ", t.str(),
                     ", expected ", p.str());
        engine::Tensor dst = p;
        dst.copy_(t.to(p.device()));
      }
    }
    frozen_ = frozen_fingerprint();
    ENGINE_CHECK(frozen_ == frozen, frozen_path, ": the frozen parameters differ from those the run was trained with");
    const std::vector<std::string> names = param_names_in_optimizer_order();
    std::vector<engine::Tensor> bufs(names.size());
    for (size_t k = 0; k < names.size(); ++k)
      if (r.has("momentum." + names[k])) bufs[k] = r.read("momentum." + names[k]);
    opt_->load_state(bufs);
    const std::vector<double> lrs = r.read("optimizer.lr").to_vector<double>();
    ENGINE_CHECK(lrs.size() == opt_->param_groups().size(), path, ": ", lrs.size(), " learning rates for ",
                 opt_->param_groups().size(), " parameter groups");
    for (size_t g = 0; g < lrs.size(); ++g) opt_->param_groups()[g].options.lr = lrs[g];
    sched_->load_state(r.attr_int("steplr_last_epoch"));
    dropout_gen_->set_state(static_cast<uint64_t>(r.attr_int("dropout_seed")),
                            static_cast<uint64_t>(r.attr_int("dropout_offset")));
    try {
      for (const json& m : json::parse(r.read_strings("metrics").at(0))) summary_.metrics.push_back(EpochMetrics::from_json(m));
    } catch (const std::exception& e) {
      throw engine::Error(path + ": the stored metrics are malformed: " + e.what());
    }
    for (const std::string& s : r.read_strings("skipped")) {
      summary_.skipped.push_back(s);
      reported_.insert(s);
    }
    obs_.message(fmt::format("resuming {} after epoch {} of {}", cfg_.out, done_epochs_, cfg_.epochs));
  }

  void save_final() {
    engine::io::WeightsMeta meta;
    meta.architecture = cfg_.arch;
    meta.num_classes = static_cast<int64_t>(ds_.classes.size());
    meta.class_names = ds_.classes;
    meta.source = fmt::format("finetune: {} on {} (case {}, train {}, {} epochs, seed {})",
                              cfg_.weights.empty() ? std::string("random initialisation") : cfg_.weights, cfg_.data,
                              cfg_.which_case, cfg_.train, cfg_.epochs, cfg_.seed);
    const std::string path = (fs::path(cfg_.out) / "final.h5").string();
    engine::io::save_weights(*model_, path, meta);
    outputs_.insert(path);
  }

  // ---- the two halves of the network -----------------------------------------------------------
  // trunk: everything before the classifier; head: the classifier (and SqueezeNet's flatten).
  engine::Tensor trunk(const engine::Tensor& x) const {
    if (arch_ == nets::Arch::AlexNet)
      return engine::flatten(model_->child("avgpool")->forward(model_->child("features")->forward(x)), 1);
    return model_->child("features")->forward(x);
  }
  engine::Tensor head(const engine::Tensor& h) const {
    const engine::Tensor y = model_->child("classifier")->forward(h);
    return arch_ == nets::Arch::AlexNet ? y : engine::flatten(y, 1);
  }

  // ---- images --------------------------------------------------------------------------------
  void unreadable(const std::string& path, const std::string& reason) {
    const std::string what = reason.find(path) == std::string::npos ? path + ": " + reason : reason;
    ENGINE_CHECK(!cfg_.strict, "unreadable image: ", what, " (--strict makes this an error; without it the image is skipped)");
    if (reported_.insert(what).second) {
      summary_.skipped.push_back(what);
      obs_.message("skipping unreadable image: " + what);
    }
  }

  engine::data::LoaderOptions loader_options(int64_t batch) const {
    engine::data::LoaderOptions o;
    o.batch_size = batch;
    o.workers = cfg_.workers;
    o.prefetch = std::max(4, 2 * cfg_.workers);
    return o;
  }

  static engine::Tensor eval_tensor(const engine::io::Image& img, int64_t) { return engine::io::eval_transform(img).tensor; }

  std::string cache_key() const {
    Hasher trunk_hash;
    for (const auto& [name, p] : model_->named_parameters()) {
      if (starts_with(name, "classifier.")) continue;
      trunk_hash.str(name);
      const engine::Tensor c = p.detach().to(engine::Device::cpu());
      trunk_hash.bytes(c.raw_data(), static_cast<size_t>(c.numel()) * engine::element_size(c.dtype()));
    }
    Hasher files;
    for (const auto* part : {&ds_.train, &ds_.test})
      for (const auto& s : *part) {
        files.str(s.path);
        struct stat st {};
        if (::stat(s.path.c_str(), &st) == 0) {
          files.num(static_cast<int64_t>(st.st_size));
          files.num(static_cast<int64_t>(st.st_mtim.tv_sec));
          files.num(static_cast<int64_t>(st.st_mtim.tv_nsec));
        }
      }
    return json{{"arch", cfg_.arch},
                {"trunk", trunk_hash.hex()},
                {"images", files.hex()},
                {"train_images", ds_.train.size()},
                {"test_images", ds_.test.size()},
                {"transform", "Resize(256) CenterCrop(224) Normalize(imagenet)"},
                {"batch", kExtractBatch},
                {"version", 1}}
        .dump();
  }

  void extract_features() {
    const int64_t n_train = static_cast<int64_t>(ds_.train.size()), n_test = static_cast<int64_t>(ds_.test.size());
    const int64_t rows = n_train + n_test;
    engine::Shape row_shape;
    {
      engine::NoGradGuard no_grad;
      model_->eval();
      const engine::Tensor probe = trunk(engine::Tensor::zeros({1, 3, 224, 224}, engine::DType::F32, device_));
      row_shape.assign(probe.shape().begin() + 1, probe.shape().end());
    }
    const double mb = static_cast<double>(rows) * static_cast<double>(engine::numel_of(row_shape)) * 4 / (1 << 20);
    const std::string key = cache_key();
    std::string file;
    if (!cfg_.cache_dir.empty()) {
      std::error_code ec;
      fs::create_directories(cfg_.cache_dir, ec);
      ENGINE_CHECK(fs::is_directory(cfg_.cache_dir), cfg_.cache_dir, ": cannot create the cache folder",
                   ec ? " (" + ec.message() + ")" : std::string());
      Hasher h;
      h.str(key);
      file = (fs::path(cfg_.cache_dir) / ("features-" + cfg_.arch + "-" + h.hex() + ".h5")).string();
    } else if (mb > static_cast<double>(cfg_.cache_memory_mb)) {
      file = (fs::path(cfg_.out) / "feature_cache.h5").string();
    }
    const std::string shape_text = engine::shape_str(row_shape);
    if (!file.empty()) {
      cache_ = engine::data::FeatureCache::open_file(file, rows, row_shape, key);
      if (cache_) {
        summary_.path_used = fmt::format("cached features {} per image, reused from {}", shape_text, file);
        obs_.message("reusing cached features from " + file);
        for (const auto& m : cache_->missing()) {
          const auto& s = m.row < n_train ? ds_.train[static_cast<size_t>(m.row)]
                                          : ds_.test[static_cast<size_t>(m.row - n_train)];
          unreadable(s.path, m.reason);
        }
        check_not_empty();
        return;
      }
      cache_ = engine::data::FeatureCache::create_file(file, rows, row_shape, key);
      summary_.path_used = fmt::format("cached features {} per image, in {} ({:.0f} MB)", shape_text, file, mb);
    } else {
      cache_ = engine::data::FeatureCache::in_memory(rows, row_shape);
      summary_.path_used = fmt::format("cached features {} per image, in memory ({:.0f} MB)", shape_text, mb);
    }

    obs_.message(fmt::format("computing the frozen layers' output {} once for {} images ({})", shape_text, rows,
                             file.empty() ? "kept in memory" : "cached in " + file));
    const auto t0 = Clock::now();
    engine::NoGradGuard no_grad;
    model_->eval();
    obs_.phase_begin("features", rows);
    int64_t done = 0;
    for (int part = 0; part < 2; ++part) {
      const auto& samples = part == 0 ? ds_.train : ds_.test;
      const int64_t offset = part == 0 ? 0 : n_train;
      std::vector<int64_t> order(samples.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      engine::data::BatchLoader loader(samples, order, loader_options(kExtractBatch), eval_tensor);
      engine::data::Batch b;
      while (loader.next(b)) {
        for (const auto& f : b.failures) {
          unreadable(f.path, f.reason);
          cache_->mark_missing(offset + f.sample, reported_reason(f.path, f.reason));
        }
        if (b.size() > 0) {
          const engine::Tensor h = trunk(b.images.to(device_)).to(engine::Device::cpu());
          std::vector<int64_t> r;
          for (int64_t s : b.samples) r.push_back(offset + s);
          cache_->write(r, h);
        }
        done += b.size() + static_cast<int64_t>(b.failures.size());
        obs_.phase_progress(done, std::nan(""), std::nan(""));
      }
    }
    obs_.phase_end();
    cache_->finish();
    summary_.feature_seconds = seconds_since(t0);
    summary_.features_extracted = rows;
    obs_.message(fmt::format("features of {} images extracted in {:.1f} s ({:.1f} images/s)", rows,
                             summary_.feature_seconds, static_cast<double>(rows) / summary_.feature_seconds));
    check_not_empty();
  }

  static std::string reported_reason(const std::string& path, const std::string& reason) {
    return reason.find(path) == std::string::npos ? path + ": " + reason : reason;
  }

  void check_not_empty() const {
    int64_t tr = 0, te = 0;
    const int64_t n_train = static_cast<int64_t>(ds_.train.size());
    for (int64_t i = 0; i < cache_->rows(); ++i)
      if (cache_->present(i)) ++(i < n_train ? tr : te);
    ENGINE_CHECK(tr > 0, cfg_.data, ": none of the ", n_train, " training images could be read");
    ENGINE_CHECK(te > 0, cfg_.data, ": none of the ", ds_.test.size(), " test images could be read");
  }

  // ---- training ---------------------------------------------------------------------------------
  struct Tally {
    double loss_sum = 0;
    int64_t correct = 0, seen = 0;
    double loss() const { return seen > 0 ? loss_sum / static_cast<double>(seen) : std::nan(""); }
    double acc() const { return seen > 0 ? static_cast<double>(correct) / static_cast<double>(seen) : std::nan(""); }
  };

  // Adds a batch's loss and correct predictions; with confusion, counts [true][predicted].
  static void tally(Tally& t, const engine::Tensor& logits, double loss, const std::vector<int64_t>& labels,
                    std::vector<std::vector<int64_t>>* confusion) {
    const std::vector<float> l = logits.detach().to(engine::Device::cpu()).to_vector<float>();
    const int64_t k = logits.size(1);
    for (size_t i = 0; i < labels.size(); ++i) {
      const float* row = l.data() + i * static_cast<size_t>(k);
      const int64_t pred = std::max_element(row, row + k) - row;
      t.correct += pred == labels[i];
      if (confusion) ++(*confusion)[static_cast<size_t>(labels[i])][static_cast<size_t>(pred)];
    }
    t.loss_sum += loss * static_cast<double>(labels.size());
    t.seen += static_cast<int64_t>(labels.size());
  }

  void train_step(const engine::Tensor& x, const std::vector<int64_t>& labels, int64_t epoch, int64_t batch, Tally& t) {
    const engine::Tensor logits = cached_ ? head(x) : model_->forward(x);
    const engine::Tensor loss = engine::cross_entropy(logits, labels);
    const double lv = loss.item();
    if (!std::isfinite(lv)) {
      throw LossNotFinite(fmt::format(
          "the training loss became {} at epoch {}, batch {}: training stopped. {} (try a lower --lr)", lv, epoch,
          batch + 1,
          wrote_checkpoint_ || resume_
              ? fmt::format("The last good checkpoint (epoch {}) is kept in {}", epoch - 1,
                            (fs::path(cfg_.out) / kCheckpoint).string())
              : std::string("No epoch had finished, so there is no checkpoint")));
    }
    opt_->zero_grad();
    loss.backward();
    opt_->step();
    tally(t, logits, lv, labels, nullptr);
  }

  void epoch(int64_t e) {
    const auto t0 = Clock::now();
    const int64_t n_train = static_cast<int64_t>(ds_.train.size());
    const int64_t B = cfg_.batch_size;
    const std::vector<int64_t> order = engine::data::permutation(n_train, engine::data::derive_seed(cfg_.seed, {kShuffleStream, static_cast<uint64_t>(e)}));
    model_->train();
    Tally tr;
    obs_.phase_begin(fmt::format("epoch {}/{}", e, cfg_.epochs), n_train);
    int64_t done = 0;
    if (cached_) {
      for (int64_t first = 0, k = 0; first < n_train; first += B, ++k) {
        std::vector<int64_t> rows, labels;
        for (int64_t i = first; i < std::min(first + B, n_train); ++i) {
          const int64_t s = order[static_cast<size_t>(i)];
          if (!cache_->present(s)) continue;
          rows.push_back(s);
          labels.push_back(ds_.train[static_cast<size_t>(s)].label);
        }
        done = std::min(first + B, n_train);
        if (!rows.empty()) train_step(cache_->gather(rows).to(device_), labels, e, k, tr);
        obs_.phase_progress(done, tr.loss(), tr.acc());
      }
    } else {
      const uint64_t seed = cfg_.seed;
      engine::data::Transform transform = eval_tensor;
      if (cfg_.augment)
        transform = [seed, e](const engine::io::Image& img, int64_t s) {
          engine::Generator g(engine::data::derive_seed(seed, {kAugmentStream, static_cast<uint64_t>(e), static_cast<uint64_t>(s)}));
          return engine::io::train_transform(img, g);
        };
      engine::data::BatchLoader loader(ds_.train, order, loader_options(B), transform);
      engine::data::Batch b;
      while (loader.next(b)) {
        for (const auto& f : b.failures) unreadable(f.path, f.reason);
        if (b.size() > 0) train_step(b.images.to(device_), b.labels, e, b.index, tr);
        done += b.size() + static_cast<int64_t>(b.failures.size());
        obs_.phase_progress(done, tr.loss(), tr.acc());
      }
    }
    obs_.phase_end();
    ENGINE_CHECK(tr.seen > 0, cfg_.data, ": none of the ", n_train, " training images could be read");
    const double train_seconds = seconds_since(t0);
    sched_->step();

    std::vector<std::vector<int64_t>> confusion(ds_.classes.size(), std::vector<int64_t>(ds_.classes.size(), 0));
    const Tally te = evaluate(confusion);
    ENGINE_CHECK(te.seen > 0, cfg_.data, ": none of the ", ds_.test.size(), " test images could be read");

    EpochMetrics m;
    m.epoch = e;
    m.train_loss = tr.loss();
    m.train_acc = tr.acc();
    m.test_loss = te.loss();
    m.test_acc = te.acc();
    m.seconds = seconds_since(t0);
    m.images_per_second = static_cast<double>(tr.seen) / train_seconds;
    summary_.metrics.push_back(m);
    summary_.confusion = confusion;

    save_checkpoint(e);
    write_epoch_outputs(e);
    obs_.epoch_end(m);
  }

  Tally evaluate(std::vector<std::vector<int64_t>>& confusion) {
    engine::NoGradGuard no_grad;
    model_->eval();
    Tally t;
    const int64_t n_test = static_cast<int64_t>(ds_.test.size()), n_train = static_cast<int64_t>(ds_.train.size());
    const int64_t B = cfg_.batch_size;
    auto add = [&](const engine::Tensor& logits, const std::vector<int64_t>& labels) {
      const double loss = engine::cross_entropy(logits, labels).item();
      tally(t, logits, loss, labels, &confusion);
    };
    if (cached_) {
      for (int64_t first = 0; first < n_test; first += B) {
        std::vector<int64_t> rows, labels;
        for (int64_t i = first; i < std::min(first + B, n_test); ++i) {
          if (!cache_->present(n_train + i)) continue;
          rows.push_back(n_train + i);
          labels.push_back(ds_.test[static_cast<size_t>(i)].label);
        }
        if (!rows.empty()) add(head(cache_->gather(rows).to(device_)), labels);
      }
    } else {
      std::vector<int64_t> order(static_cast<size_t>(n_test));
      for (int64_t i = 0; i < n_test; ++i) order[static_cast<size_t>(i)] = i;
      engine::data::BatchLoader loader(ds_.test, order, loader_options(B), eval_tensor);
      engine::data::Batch b;
      obs_.phase_begin("  test", n_test);
      int64_t done = 0;
      while (loader.next(b)) {
        for (const auto& f : b.failures) unreadable(f.path, f.reason);
        if (b.size() > 0) add(model_->forward(b.images.to(device_)), b.labels);
        done += b.size() + static_cast<int64_t>(b.failures.size());
        obs_.phase_progress(done, t.loss(), t.acc());
      }
      obs_.phase_end();
    }
    return t;
  }

  // ---- outputs -------------------------------------------------------------------------------
  std::string out_path(const char* name) const { return (fs::path(cfg_.out) / name).string(); }

  void write_epoch_outputs(int64_t e) {
    json doc{{"run",
              {{"arch", cfg_.arch},
               {"case", cfg_.which_case},
               {"train", cfg_.train},
               {"path", summary_.path_used},
               {"classes", ds_.classes},
               {"layout", ds_.layout},
               {"train_images", ds_.train.size()},
               {"test_images", ds_.test.size()},
               {"skipped_images", summary_.skipped},
               {"feature_seconds", summary_.feature_seconds},
               {"config", cfg_.to_json()}}},
             {"epochs", metrics_json()}};
    write_text_atomic(out_path("metrics.json"), doc.dump(2) + "\n");
    write_text_atomic(out_path("metrics.csv"), metrics_csv(summary_.metrics));
    write_text_atomic(out_path("confusion.csv"), confusion_csv(ds_.classes, summary_.confusion));
    outputs_.insert(out_path("checkpoint.h5"));
    if (!frozen_.empty()) outputs_.insert(out_path("frozen.h5"));
    outputs_.insert(out_path("metrics.json"));
    outputs_.insert(out_path("metrics.csv"));
    outputs_.insert(out_path("confusion.csv"));
    write_plots(e);
  }

  void write_plots(int64_t e) {
    plot::CurvesPlot c;
    const std::string data_name = fs::path(cfg_.data).filename().empty() ? cfg_.data
                                                                          : fs::path(cfg_.data).filename().string();
    c.title = fmt::format("{} on {}: case {}, training {} ({})", cfg_.arch, data_name, cfg_.which_case,
                          cfg_.train == "new" ? "the new layer" : cfg_.train == "classifier" ? "the classifier" : "all layers",
                          cfg_.weights.empty() ? "random init" : "pretrained");
    c.left_title = "Loss";
    c.left_label = "cross-entropy loss";
    c.right_title = "Accuracy";
    c.right_label = "accuracy (%)";
    plot::Series tl{"training loss", {}}, vl{"test loss", {}}, ta{"training accuracy", {}}, va{"test accuracy", {}};
    for (const EpochMetrics& m : summary_.metrics) {
      c.x.push_back(static_cast<double>(m.epoch));
      tl.y.push_back(m.train_loss);
      vl.y.push_back(m.test_loss);
      ta.y.push_back(100 * m.train_acc);
      va.y.push_back(100 * m.test_acc);
    }
    c.left = {tl, vl};
    c.right = {ta, va};
    c.right_reference = 100.0 / static_cast<double>(ds_.classes.size());
    c.right_reference_title = "chance";
    const EpochMetrics& last = summary_.metrics.back();
    try {
      plot::write_curves_png(out_path("curves.png"), c);
      plot::write_confusion_png(out_path("confusion.png"),
                                fmt::format("Test set after epoch {}: accuracy {}", e, percent(last.test_acc)),
                                ds_.classes, summary_.confusion);
      outputs_.insert(out_path("curves.png"));
      outputs_.insert(out_path("confusion.png"));
    } catch (const engine::Error& err) {
      // Plots are a view of metrics.csv / confusion.csv, which are written: warn once.
      if (plot_warned_) return;
      plot_warned_ = true;
      summary_.warnings.push_back(err.what());
      obs_.message(std::string("warning: ") + err.what());
    }
  }

  void finish_summary() {
    for (const std::string& o : outputs_) summary_.outputs.push_back(o);
  }

  Config cfg_;
  Observer& obs_;
  bool resume_;
  engine::Device device_;
  engine::data::ImageFolder ds_;
  nets::Arch arch_ = nets::Arch::AlexNet;
  std::unique_ptr<engine::Generator> dropout_gen_;
  std::shared_ptr<engine::nn::Module> model_;
  std::vector<std::string> group_names_new_, group_names_old_;
  std::unique_ptr<engine::optim::SGD> opt_;
  std::unique_ptr<engine::optim::StepLR> sched_;
  std::unique_ptr<engine::data::FeatureCache> cache_;
  bool cached_ = false, created_out_ = false, wrote_checkpoint_ = false, plot_warned_ = false;
  int64_t done_epochs_ = 0;
  std::string frozen_;  // fingerprint of the frozen parameters
  std::set<std::string> reported_, outputs_;
  Summary summary_;
};

}  // namespace

Summary run(Config config, Observer& observer, bool resume) {
  validate(config);
  Run r(std::move(config), observer, resume);
  return r.go();
}

}  // namespace finetune
