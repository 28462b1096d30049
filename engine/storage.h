// Storage: one contiguous allocation on one device, shared by every tensor that views it.
//
// CPU memory comes from a caching allocator: freed blocks are kept, keyed by their
// rounded size, and handed out again, so a training loop that allocates the same
// activations every step touches fresh pages only in its first step (a first-touch
// page fault costs more than the arithmetic on these machines). ENGINE_CPU_CACHING=0
// turns the cache off (for leak checkers). CUDA memory goes straight to the runtime.
#pragma once

#include <cstddef>
#include <memory>

#include "engine/types.h"

namespace engine {

class Storage {
 public:
  Storage(std::size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t nbytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  std::size_t capacity_ = 0;
  Device device_;
};

// Returns every cached CPU block to the system.
void empty_cpu_cache();
// Bytes currently held in the CPU cache (free, reusable).
std::size_t cpu_cache_bytes();

}  // namespace engine
