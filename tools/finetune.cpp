// finetune: transfer learning on an image folder (AlexNet Case 1 / Case 2, SqueezeNet 1.1).
//   finetune --data DIR --out OUT --weights W.h5 [--arch alexnet|squeezenet1_1] [--case 1|2]
//            [--train new|classifier|all] [--epochs 10] [--batch-size 32] [--lr 0.01] ...
//   finetune --resume OUT [--epochs N] [--device ...] [--workers N]
// Writes OUT/metrics.csv, metrics.json, curves.png, confusion.csv, confusion.png,
// checkpoint.h5 (after every epoch) and final.h5 (loadable by predict and saliency).
// Progress goes to stderr (a bar on a terminal, one line per epoch otherwise); the
// summary table to stdout. Exit status 1 on any error, with one message naming it.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "engine/error.h"
#include "tools/finetune_lib.h"

namespace {

std::string clock_text(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

std::string pct(double v) { return std::isfinite(v) ? fmt::format("{:5.1f}%", 100 * v) : "    - "; }

// Progress on stderr: a redrawn bar on a terminal, a line per epoch otherwise.
class Progress : public finetune::Observer {
 public:
  explicit Progress(int64_t epochs) : tty_(::isatty(2) != 0), epochs_(epochs) {}

  void message(const std::string& text) override {
    clear();
    fmt::print(stderr, "finetune: {}\n", text);
  }
  void phase_begin(const std::string& name, int64_t total) override {
    name_ = name;
    total_ = total;
    t0_ = Clock::now();
    last_draw_ = t0_ - std::chrono::seconds(1);
  }
  void phase_progress(int64_t done, double loss, double acc) override {
    if (!tty_) return;
    const auto now = Clock::now();
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double elapsed = std::chrono::duration<double>(now - t0_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : NAN;
    constexpr int kWidth = 28;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : kWidth;
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::string line = fmt::format("\r{:<12} [{}] {:>5}/{:<5} {:7.1f} img/s  ETA {}", name_, bar, done, total_, rate,
                                   clock_text(eta));
    if (std::isfinite(loss)) line += fmt::format("  loss {:.4f}  acc {}", loss, pct(acc));
    fmt::print(stderr, "{}\033[K", line);
    std::fflush(stderr);
    drawn_ = true;
  }
  void phase_end() override { clear(); }
  void epoch_end(const finetune::EpochMetrics& m) override {
    clear();
    fmt::print(stderr, "epoch {}/{}: train loss {:.4f} acc {} | test loss {:.4f} acc {} | {:.1f} s, {:.1f} img/s\n",
               m.epoch, epochs_, m.train_loss, pct(m.train_acc), m.test_loss, pct(m.test_acc), m.seconds,
               m.images_per_second);
    std::fflush(stderr);
  }

 private:
  using Clock = std::chrono::steady_clock;
  void clear() {
    if (drawn_) fmt::print(stderr, "\r\033[K");
    drawn_ = false;
  }
  bool tty_;
  int64_t epochs_;
  std::string name_;
  int64_t total_ = 0;
  Clock::time_point t0_, last_draw_;
  bool drawn_ = false;
};

void print_summary(const finetune::Summary& s, const finetune::Config& c) {
  if (s.already_complete) {
    fmt::print("The run in {} already finished its {} epochs; pass --epochs N (more) to train further.\n", c.out,
               c.epochs);
    return;
  }
  fmt::print("\n{} on {} ({}, {} classes): case {}, training {}, {}\n", s.arch, c.data, s.layout, s.classes.size(),
             c.which_case, c.train, c.weights.empty() ? "from random weights" : "from " + c.weights);
  fmt::print("images: {} train, {} test; unreadable and skipped: {}\n", s.train_images, s.test_images, s.skipped.size());
  fmt::print("parameters: {} trainable, {} frozen; path: {}\n", s.trainable_params, s.frozen_params, s.path_used);
  if (s.features_extracted > 0)
    fmt::print("feature extraction: {} images in {:.1f} s ({:.1f} images/s)\n", s.features_extracted, s.feature_seconds,
               static_cast<double>(s.features_extracted) / s.feature_seconds);
  if (s.resumed_from > 0) fmt::print("resumed after epoch {}\n", s.resumed_from);
  fmt::print("\n{:>5}  {:>10}  {:>9}  {:>9}  {:>8}  {:>8}  {:>8}\n", "epoch", "train_loss", "train_acc", "test_loss",
             "test_acc", "seconds", "img/s");
  size_t best = 0;
  for (size_t i = 0; i < s.metrics.size(); ++i) {
    const auto& m = s.metrics[i];
    if (m.test_acc > s.metrics[best].test_acc) best = i;
    fmt::print("{:>5}  {:>10.4f}  {:>9}  {:>9.4f}  {:>8}  {:>8.1f}  {:>8.1f}\n", m.epoch, m.train_loss, pct(m.train_acc),
               m.test_loss, pct(m.test_acc), m.seconds, m.images_per_second);
  }
  if (!s.metrics.empty())
    fmt::print("\nbest test accuracy {} at epoch {}; final {}\n", pct(s.metrics[best].test_acc), s.metrics[best].epoch,
               pct(s.metrics.back().test_acc));
  fmt::print("outputs:");
  for (const std::string& o : s.outputs) fmt::print(" {}", std::filesystem::path(o).filename().string());
  fmt::print(" (in {})\n", c.out);
  for (const std::string& w : s.warnings) fmt::print("warning: {}\n", w);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Transfer learning on an image folder: a new head on a pretrained AlexNet or SqueezeNet 1.1"};
  finetune::Config c;
  std::string resume;
  bool no_cache = false;
  app.add_option("--data", c.data, "image folder: ROOT/train/<class>/*, ROOT/test|val/<class>/*, or ROOT/<class>/*");
  app.add_option("--out", c.out, "output folder (created; must not hold a run already)");
  app.add_option("--weights", c.weights, "pretrained weights (HDF5, see weights/README.md); none: random initialisation");
  app.add_option("--arch", c.arch, "alexnet or squeezenet1_1 (default: the weights file's)");
  app.add_option("--case", c.which_case, "1: replace the last layer; 2 (AlexNet): replace the last two by one")
      ->capture_default_str();
  app.add_option("--train", c.train, "which parameters learn: new (the new layer), classifier, or all")
      ->capture_default_str();
  app.add_option("--lr", c.lr, "learning rate of the new layers")->capture_default_str();
  app.add_option("--lr-backbone", c.lr_backbone, "learning rate of pretrained trainable layers (default: lr / 10)");
  app.add_option("--momentum", c.momentum, "SGD momentum")->capture_default_str();
  app.add_option("--weight-decay", c.weight_decay, "SGD weight decay")->capture_default_str();
  app.add_option("--step-size", c.step_size, "StepLR: multiply the learning rates by gamma every this many epochs")
      ->capture_default_str();
  app.add_option("--gamma", c.gamma, "StepLR factor")->capture_default_str();
  app.add_option("--epochs", c.epochs, "epochs (with --resume: the new total)")->capture_default_str();
  app.add_option("--batch-size", c.batch_size, "images per SGD step")->capture_default_str();
  app.add_option("--seed", c.seed, "seed of the split, head initialisation, shuffling, dropout and augmentation")
      ->capture_default_str();
  app.add_flag("--augment", c.augment, "RandomResizedCrop(224) + horizontal flip for training images");
  app.add_flag("--no-feature-cache", no_cache, "run the whole network every epoch even where features could be cached");
  app.add_option("--cache-dir", c.cache_dir, "keep cached features in HDF5 files here (reused by later runs)");
  app.add_option("--cache-memory-mb", c.cache_memory_mb, "largest feature cache kept in memory; larger ones go to OUT")
      ->capture_default_str();
  app.add_option("--test-fraction", c.test_fraction, "held-out fraction per class when the folder has no test split")
      ->capture_default_str();
  app.add_flag("--strict", c.strict, "an unreadable image is an error (default: reported and skipped)");
  app.add_option("--device", c.device, "cpu, cuda or auto")->capture_default_str();
  app.add_option("--workers", c.workers, "image decoding threads")->capture_default_str();
  app.add_option("--resume", resume, "continue the run in this folder from its last checkpoint");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "finetune: {}\nRun with --help for the options.\n", e.what());
    return 1;
  }

  try {
    bool resuming = !resume.empty();
    if (resuming) {
      // The stored configuration defines the run; only execution settings and the
      // number of epochs may change.
      for (const char* opt : {"--data", "--out", "--weights", "--arch", "--case", "--train", "--lr", "--lr-backbone",
                              "--momentum", "--weight-decay", "--step-size", "--gamma", "--batch-size", "--seed",
                              "--augment", "--no-feature-cache", "--test-fraction"})
        ENGINE_CHECK(app.count(opt) == 0, opt, " cannot be combined with --resume: the run's configuration is stored in ",
                     resume, "/checkpoint.h5 (only --epochs, --device, --workers, --cache-dir, --cache-memory-mb and "
                     "--strict may change)");
      finetune::Config stored = finetune::load_run_config(resume);
      if (app.count("--epochs")) stored.epochs = c.epochs;
      if (app.count("--device")) stored.device = c.device;
      if (app.count("--workers")) stored.workers = c.workers;
      if (app.count("--cache-dir")) stored.cache_dir = c.cache_dir;
      if (app.count("--cache-memory-mb")) stored.cache_memory_mb = c.cache_memory_mb;
      if (app.count("--strict")) stored.strict = c.strict;
      c = stored;
    } else {
      c.feature_cache = !no_cache;
    }
    Progress progress(c.epochs);
    const finetune::Summary s = finetune::run(c, progress, resuming);
    print_summary(s, c);
  } catch (const std::exception& e) {
    fmt::print(stderr, "finetune: {}\n", e.what());
    return 1;
  }
  return 0;
}
