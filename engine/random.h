// Seeded random streams. A Generator is a (seed, offset) pair over the counter-based
// Philox4x32-10 stream: a draw reserves counters [offset, offset + n) and moves the
// offset on (n numbers for the uniform and normal fills; dropout takes every word of a
// counter's block, so a counter serves 4 float or 2 double elements), so draws are
// reproducible, identical on CPU and CUDA, and a generator's state can be saved and
// restored exactly (for resuming training).
#pragma once

#include <atomic>
#include <cstdint>

namespace engine {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed), offset_(0) {}
  Generator(const Generator& o) : seed_(o.seed_), offset_(o.offset_.load()) {}
  Generator& operator=(const Generator& o) {
    seed_ = o.seed_;
    offset_ = o.offset_.load();
    return *this;
  }

  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_.load(); }
  void manual_seed(uint64_t seed) {
    seed_ = seed;
    offset_ = 0;
  }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }
  // Reserves n counters and returns the first.
  uint64_t advance(uint64_t n) { return offset_.fetch_add(n); }

 private:
  uint64_t seed_;
  std::atomic<uint64_t> offset_;
};

// The process-wide generator used when none is given (seed 0 until manual_seed).
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace engine
