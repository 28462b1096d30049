#include "engine/storage.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include "engine/error.h"
#include "kernels/cuda_runtime.h"

namespace engine {
namespace {

constexpr std::size_t kAlign = 64;

std::size_t round_up(std::size_t bytes) {
  const std::size_t quantum = bytes < (1u << 16) ? kAlign : 4096;
  return (bytes + quantum - 1) / quantum * quantum;
}

class CpuCache {
 public:
  void* get(std::size_t capacity) {
    if (enabled_) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(capacity);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= capacity;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, capacity);
    if (p == nullptr) {
      empty();
      p = std::aligned_alloc(kAlign, capacity);
    }
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }

  void put(void* p, std::size_t capacity) {
    if (!enabled_) {
      std::free(p);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace(capacity, p);
    cached_ += capacity;
  }

  void empty() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    cached_ = 0;
  }

  std::size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  ~CpuCache() { empty(); }

 private:
  static bool read_enabled() {
    const char* v = std::getenv("ENGINE_CPU_CACHING");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }
  bool enabled_ = read_enabled();
  std::mutex mu_;
  std::multimap<std::size_t, void*> free_;
  std::size_t cached_ = 0;
};

CpuCache& cpu_cache() {
  static CpuCache* cache = new CpuCache();  // never destroyed: storages may outlive statics
  return *cache;
}

}  // namespace

Storage::Storage(std::size_t bytes, Device device) : bytes_(bytes), device_(device) {
  if (device.is_cpu()) {
    capacity_ = round_up(bytes == 0 ? kAlign : bytes);
    data_ = cpu_cache().get(capacity_);
  } else {
    capacity_ = bytes;
    data_ = kernels::cuda::malloc_device(bytes);
  }
}

Storage::~Storage() {
  if (data_ == nullptr) return;
  if (device_.is_cpu())
    cpu_cache().put(data_, capacity_);
  else
    kernels::cuda::free_device(data_);
}

void empty_cpu_cache() { cpu_cache().empty(); }
std::size_t cpu_cache_bytes() { return cpu_cache().cached(); }

}  // namespace engine
