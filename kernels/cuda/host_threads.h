// For the CUDA sources only: host threads that stand in for a warp's lanes or a block's
// threads, so that a kernel's per-thread code (written __host__ __device__ against a
// small group interface) also runs on the CPU, in tests on machines without a GPU.
//   HostWarp: 32 threads; sum and max combine the lanes' values in the shuffles'
//     butterfly order (lane l takes lane l ^ 16, then l ^ 8, ...), so a reduction gets
//     what the device computes.
//   HostBlock: n threads with a barrier (__syncthreads) and the block's coordinates.
// Slow (the threads far outnumber the cores), but every thread really runs its own copy
// of the code between barriers, in whatever interleaving the scheduler picks.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <thread>
#include <vector>

namespace kernels::cuda {

// A reusable barrier for `count` threads. The waiting threads sleep on a futex (Linux)
// and the last to arrive wakes them all with one call: with far more threads than cores,
// about five times faster than a mutex and condition variable, whose waiters all
// contend for the mutex on waking.
class HostBarrier {
 public:
  explicit HostBarrier(int count) : count_(count) {}
  void wait() {
    const int gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);  // before the release below
      generation_.fetch_add(1, std::memory_order_release);
      futex(FUTEX_WAKE_PRIVATE, INT_MAX);
    } else {
      while (generation_.load(std::memory_order_acquire) == gen) futex(FUTEX_WAIT_PRIVATE, gen);
    }
  }

 private:
  // FUTEX_WAIT returns at once unless generation_ still holds `val`: no wake-up is lost.
  void futex(int op, int val) {
    static_assert(sizeof(std::atomic<int>) == sizeof(int), "the futex word is the atomic's int");
    syscall(SYS_futex, reinterpret_cast<int*>(&generation_), op, val, nullptr, nullptr, 0);
  }
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
  int count_;
};

// f(i) on n host threads, i in [0, n); returns when all have.
template <typename F> void on_host_threads(int n, const F& f) {
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) threads.emplace_back([&f, i] { f(i); });
  for (std::thread& t : threads) t.join();
}

class HostWarp {
 public:
  struct Shared {
    double v[32];
    HostBarrier barrier{32};
  };
  HostWarp(int lane, Shared* shared) : lane_(lane), sh_(shared) {}
  int64_t rank() const { return lane_; }
  template <typename A> A sum(A v) const { return butterfly(v, [](A a, A b) { return a + b; }); }
  // std::max's rule (the CPU's): keeps a unless b is larger.
  template <typename A> A max(A v) const { return butterfly(v, [](A a, A b) { return a < b ? b : a; }); }

 private:
  template <typename A, typename Op> A butterfly(A v, Op op) const {
    for (int offset = 16; offset > 0; offset >>= 1) {
      sh_->v[lane_] = static_cast<double>(v);  // exact for float and double
      sh_->barrier.wait();
      const A other = static_cast<A>(sh_->v[lane_ ^ offset]);
      sh_->barrier.wait();
      v = op(v, other);
    }
    return v;
  }
  int lane_;
  Shared* sh_;
};

// f(const HostWarp&) on 32 host threads, one per lane.
template <typename F> void on_host_warp(const F& f) {
  HostWarp::Shared shared;
  on_host_threads(32, [&](int lane) { f(HostWarp(lane, &shared)); });
}

// One thread of a block of `threads` threads; the grid's blocks run one after another.
class HostBlock {
 public:
  HostBlock(int tid, HostBarrier* barrier) : tid_(tid), barrier_(barrier) {}
  int tid() const { return tid_; }
  unsigned block_x() const { return block_x_; }
  unsigned block_y() const { return block_y_; }
  void sync() const { barrier_->wait(); }
  void set_block(unsigned x, unsigned y) {
    block_x_ = x;
    block_y_ = y;
  }

 private:
  int tid_;
  HostBarrier* barrier_;
  unsigned block_x_ = 0, block_y_ = 0;
};

// f(const HostBlock&) for every block of a grid_x x grid_y grid, y-major, each block on
// `threads` host threads. A barrier separates consecutive blocks, so they may share
// whatever f uses as the block's shared memory.
template <typename F> void on_host_grid(unsigned grid_x, unsigned grid_y, int threads, const F& f) {
  HostBarrier barrier(threads);
  on_host_threads(threads, [&](int tid) {
    HostBlock b(tid, &barrier);
    for (unsigned y = 0; y < grid_y; ++y)
      for (unsigned x = 0; x < grid_x; ++x) {
        b.set_block(x, y);
        f(static_cast<const HostBlock&>(b));
        barrier.wait();
      }
  });
}

}  // namespace kernels::cuda
