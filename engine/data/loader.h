// Batches of decoded, preprocessed images, produced by background worker threads.
//
// The caller gives the samples, the order to visit them in (a permutation for a
// shuffled epoch, 0..n-1 for evaluation), the batch size and a transform. Batch k holds
// the samples order[k*B .. (k+1)*B) that decoded, in that order, so what a batch
// contains never depends on thread timing: workers claim whole batches, at most
// `prefetch` batches ahead of the consumer (a bounded queue), and next() hands them
// out strictly in order. A sample that cannot be read is left out of its batch and
// reported with it (path and reason); a batch whose every image failed is still handed
// out, empty, so the caller sees its failures.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/io/image.h"
#include "engine/tensor.h"

namespace engine::data {

struct Batch {
  int64_t index = 0;                 // position in the epoch
  Tensor images;                     // float32 [n, C, H, W] on the CPU; undefined when n == 0
  std::vector<int64_t> labels;       // n entries
  std::vector<int64_t> samples;      // indices into the sample list, n entries
  struct Failure {
    int64_t sample;
    std::string path, reason;
  };
  std::vector<Failure> failures;     // samples of this batch that could not be read
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
};

// Decoded image -> float32 [C, H, W]; `sample` is the index into the sample list (for
// per-sample random streams). Must be safe to call from several threads at once.
using Transform = std::function<Tensor(const io::Image& image, int64_t sample)>;

struct LoaderOptions {
  int64_t batch_size = 32;
  // Background threads; 0 decodes on the caller's thread inside next().
  int workers = 2;
  // Batches decoded ahead of the consumer (at least workers).
  int prefetch = 4;
};

class BatchLoader {
 public:
  BatchLoader(const std::vector<Sample>& samples, std::vector<int64_t> order, const LoaderOptions& options,
              Transform transform);
  ~BatchLoader();  // stops and joins the workers
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  int64_t num_batches() const { return num_batches_; }
  // The next batch in order; false after the last. Rethrows an unexpected worker error
  // (one that is not an unreadable image).
  bool next(Batch& out);

 private:
  Batch build(int64_t k) const;
  void work();

  const std::vector<Sample>& samples_;
  std::vector<int64_t> order_;
  LoaderOptions opt_;
  Transform transform_;
  int64_t num_batches_ = 0;

  std::mutex mu_;
  std::condition_variable ready_, space_;
  std::map<int64_t, Batch> done_;
  std::exception_ptr error_;
  int64_t claimed_ = 0;   // next batch a worker will take
  int64_t consumed_ = 0;  // next batch next() hands out
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace engine::data
