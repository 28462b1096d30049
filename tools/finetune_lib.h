// Transfer learning on an image folder: the library behind the `finetune` tool.
//
// A pretrained AlexNet or SqueezeNet 1.1 gets a new K-class head (nets::replace_head,
// Case 1 or Case 2); the parameters chosen by `train` learn with SGD (momentum, weight
// decay, one learning rate for the new layers and one for pretrained ones, StepLR),
// the rest are frozen (requires_grad false, outside the optimiser). Images are decoded
// and preprocessed by background threads (engine::data::BatchLoader).
//
// The fast path: when everything before the classifier is frozen and there is no
// augmentation, the frozen part runs once per image and its outputs (AlexNet: pool5
// flattened, 9216 values; SqueezeNet: the last Fire module, 512 x 13 x 13) are cached,
// in memory or in an HDF5 file; each epoch then runs the classifier alone on the cached
// rows. Dropout draws from a generator owned by the run in both paths, with the same
// batches, so the two paths compute the same training up to float rounding.
//
// Every epoch ends with a checkpoint written atomically to OUT/checkpoint.h5: the
// trainable parameters, the momentum buffers, the learning rates and StepLR's epoch,
// the dropout generator's state, the metrics so far and the configuration. The frozen
// parameters never change, so they are written once, to OUT/frozen.h5, before the
// first checkpoint (which records their fingerprint). Shuffling and
// augmentation draw from seeds derived from (seed, epoch, sample), never from state
// that depends on threads, so a resumed run reproduces an uninterrupted one bit for bit
// on the CPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace finetune {

struct Config {
  // The run's identity (stored in the checkpoint; fixed on resume, except epochs).
  std::string data;     // dataset root (see engine/data/dataset.h)
  std::string out;      // output folder
  std::string weights;  // pretrained weights (HDF5); empty: random initialisation
  std::string arch;     // alexnet | squeezenet1_1; empty: the weights file's architecture
  int which_case = 1;   // 1: replace the last layer; 2 (AlexNet): the last two by one
  std::string train = "new";  // new | classifier | all
  double lr = 0.01;           // new layers
  double lr_backbone = -1;    // pretrained trainable layers; negative: lr / 10
  double momentum = 0.9;
  double weight_decay = 5e-4;
  int64_t step_size = 10;  // StepLR: lr *= gamma every step_size epochs
  double gamma = 0.1;
  int64_t epochs = 10;
  int64_t batch_size = 32;
  uint64_t seed = 0;
  bool augment = false;       // RandomResizedCrop(224) + horizontal flip for training
  bool feature_cache = true;  // the fast path where it applies
  double test_fraction = 0.2;  // for folders without a test split

  // Execution only (may change on resume; results do not depend on them on the CPU).
  std::string device = "cpu";  // cpu, cuda or auto ("cpu" while the CUDA backend lacks convolutions)
  int workers = 2;
  std::string cache_dir;           // feature cache files here (reused across runs)
  int64_t cache_memory_mb = 4096;  // larger caches go to a file
  bool strict = false;             // an unreadable image is an error instead of skipped

  nlohmann::json to_json() const;
  static Config from_json(const nlohmann::json& j);
};

// Normalises (lr_backbone default) and checks every field; throws engine::Error naming
// the option and the value.
void validate(Config& config);

struct EpochMetrics {
  int64_t epoch = 0;
  double train_loss = 0, train_acc = 0, test_loss = 0, test_acc = 0;  // accuracies in [0, 1]
  double seconds = 0;            // the whole epoch: training and evaluation
  double images_per_second = 0;  // training images per second of the training phase
  nlohmann::json to_json() const;
  static EpochMetrics from_json(const nlohmann::json& j);
};

// What the run reports while it works; the tool draws progress bars from it.
class Observer {
 public:
  virtual ~Observer() = default;
  virtual void message(const std::string& /*text*/) {}
  // A phase over `total` images: "features", "epoch 3/10".
  virtual void phase_begin(const std::string& /*name*/, int64_t /*total*/) {}
  // Images done so far in the phase, and the running loss and accuracy (NaN if none).
  virtual void phase_progress(int64_t /*done*/, double /*loss*/, double /*acc*/) {}
  virtual void phase_end() {}
  virtual void epoch_end(const EpochMetrics& /*m*/) {}
};

struct Summary {
  std::string arch, layout, path_used;  // path_used: "cached features (memory)", "full network", ...
  std::vector<std::string> classes;
  int64_t train_images = 0, test_images = 0;
  std::vector<std::string> skipped;  // "path: reason" of every unreadable image
  int64_t trainable_params = 0, frozen_params = 0;
  double feature_seconds = 0;  // time spent extracting cached features (0 if none)
  int64_t features_extracted = 0;
  std::vector<EpochMetrics> metrics;
  std::vector<std::vector<int64_t>> confusion;  // last epoch, [true][predicted]
  std::vector<std::string> outputs;             // files written in OUT
  std::vector<std::string> warnings;            // e.g. plots that could not be drawn
  int64_t resumed_from = 0;                     // epochs already done when resumed
  bool already_complete = false;                // a resume of a finished run did nothing
};

// The configuration stored in DIR/checkpoint.h5 (for --resume DIR).
Config load_run_config(const std::string& dir);

// Trains as configured; with resume, continues the run in config.out from its
// checkpoint. Throws engine::Error on bad input and when the loss stops being finite
// (the checkpoint of the last finished epoch is kept).
Summary run(Config config, Observer& observer, bool resume = false);

// Output files, written through a temporary file renamed into place.
void write_text_atomic(const std::string& path, const std::string& text);
std::string metrics_csv(const std::vector<EpochMetrics>& metrics);
std::string confusion_csv(const std::vector<std::string>& classes, const std::vector<std::vector<int64_t>>& confusion);

}  // namespace finetune
