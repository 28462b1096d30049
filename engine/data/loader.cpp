#include "engine/data/loader.h"

#include <algorithm>
#include <cstring>

#include "engine/error.h"

namespace engine::data {

BatchLoader::BatchLoader(const std::vector<Sample>& samples, std::vector<int64_t> order, const LoaderOptions& options,
                         Transform transform)
    : samples_(samples), order_(std::move(order)), opt_(options), transform_(std::move(transform)) {
  ENGINE_CHECK(opt_.batch_size > 0, "BatchLoader: batch size must be positive, got ", opt_.batch_size);
  ENGINE_CHECK(opt_.workers >= 0, "BatchLoader: workers must be non-negative, got ", opt_.workers);
  for (int64_t i : order_)
    ENGINE_CHECK(i >= 0 && i < static_cast<int64_t>(samples_.size()), "BatchLoader: sample index ", i,
                 " is out of range for ", samples_.size(), " samples");
  num_batches_ = (static_cast<int64_t>(order_.size()) + opt_.batch_size - 1) / opt_.batch_size;
  opt_.prefetch = std::max(opt_.prefetch, std::max(opt_.workers, 1));
  for (int w = 0; w < opt_.workers; ++w) threads_.emplace_back([this] { work(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  space_.notify_all();
  for (std::thread& t : threads_) t.join();
}

Batch BatchLoader::build(int64_t k) const {
  Batch b;
  b.index = k;
  const int64_t first = k * opt_.batch_size;
  const int64_t last = std::min<int64_t>(first + opt_.batch_size, static_cast<int64_t>(order_.size()));
  std::vector<Tensor> items;
  for (int64_t i = first; i < last; ++i) {
    const int64_t s = order_[static_cast<size_t>(i)];
    const Sample& sample = samples_[static_cast<size_t>(s)];
    Tensor t;
    try {
      t = transform_(io::read_image(sample.path), s);
    } catch (const Error& e) {
      b.failures.push_back({s, sample.path, e.what()});
      continue;
    }
    ENGINE_CHECK(t.defined() && t.dtype() == DType::F32 && t.device().is_cpu(), "BatchLoader: the transform of ",
                 sample.path, " did not give a float32 CPU tensor");
    if (!items.empty())
      ENGINE_CHECK(t.shape() == items.front().shape(), "BatchLoader: ", sample.path, " was transformed to ",
                   shape_str(t.shape()), " but other images of its batch to ", shape_str(items.front().shape()));
    items.push_back(std::move(t));
    b.labels.push_back(sample.label);
    b.samples.push_back(s);
  }
  if (!items.empty()) {
    Shape shape{static_cast<int64_t>(items.size())};
    shape.insert(shape.end(), items.front().shape().begin(), items.front().shape().end());
    b.images = Tensor::empty(shape, DType::F32);
    const size_t each = static_cast<size_t>(items.front().numel());
    float* dst = b.images.data<float>();
    for (size_t i = 0; i < items.size(); ++i) std::memcpy(dst + i * each, items[i].data<float>(), each * sizeof(float));
  }
  return b;
}

void BatchLoader::work() {
  for (;;) {
    int64_t k;
    {
      std::unique_lock<std::mutex> lock(mu_);
      space_.wait(lock, [&] { return stop_ || claimed_ >= num_batches_ || claimed_ < consumed_ + opt_.prefetch; });
      if (stop_ || claimed_ >= num_batches_) return;
      k = claimed_++;
    }
    Batch b;
    std::exception_ptr err;
    try {
      b = build(k);
    } catch (...) {
      err = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (err && !error_) error_ = err;
      done_.emplace(k, std::move(b));
    }
    ready_.notify_all();
  }
}

bool BatchLoader::next(Batch& out) {
  if (consumed_ >= num_batches_) return false;
  if (threads_.empty()) {
    out = build(consumed_++);
    return true;
  }
  std::unique_lock<std::mutex> lock(mu_);
  ready_.wait(lock, [&] { return error_ != nullptr || done_.count(consumed_) > 0; });
  if (error_) std::rethrow_exception(error_);
  auto it = done_.find(consumed_);
  out = std::move(it->second);
  done_.erase(it);
  ++consumed_;
  lock.unlock();
  space_.notify_all();
  return true;
}

}  // namespace engine::data
