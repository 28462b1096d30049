// CUDA runtime wrappers (kernels/cuda_runtime.h): device discovery, the engine's stream
// and library handles, the caching device allocator and copies. Any error from
// cudaGetDeviceCount (no driver, driver too old, no device) means "no GPU", quietly.
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda_runtime.h"

namespace kernels::cuda {

const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls start clean
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

std::string library_versions() {
  int rt = 0, major = 0, minor = 0, patch = 0;
  CUDA_CHECK(cudaRuntimeGetVersion(&rt));
  CUBLAS_CHECK(cublasGetProperty(MAJOR_VERSION, &major));
  CUBLAS_CHECK(cublasGetProperty(MINOR_VERSION, &minor));
  CUBLAS_CHECK(cublasGetProperty(PATCH_LEVEL, &patch));
  // cuDNN 9 encodes its version as major * 10000 + minor * 100 + patch.
  const std::size_t dnn = cudnnGetVersion();
  return "CUDA runtime " + std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10) + ", cuBLAS " +
         std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch) + ", cuDNN " +
         std::to_string(dnn / 10000) + "." + std::to_string(dnn % 10000 / 100) + "." + std::to_string(dnn % 100);
}

void set_device(int device) { CUDA_CHECK(cudaSetDevice(device)); }

// Handles are created once and never destroyed: kernels may still be queued when static
// destructors run, and the driver reclaims everything at exit.
cudaStream_t stream() {
  static cudaStream_t s = [] {
    cudaStream_t created = nullptr;
    CUDA_CHECK(cudaStreamCreate(&created));
    return created;
  }();
  return s;
}

cublasHandle_t cublas_handle() {
  static cublasHandle_t h = [] {
    cublasHandle_t created = nullptr;
    CUBLAS_CHECK(cublasCreate(&created));
    CUBLAS_CHECK(cublasSetStream(created, stream()));
    return created;
  }();
  return h;
}

cudnnHandle_t cudnn_handle() {
  static cudnnHandle_t h = [] {
    cudnnHandle_t created = nullptr;
    CUDNN_CHECK(cudnnCreate(&created));
    CUDNN_CHECK(cudnnSetStream(created, stream()));
    return created;
  }();
  return h;
}

namespace {

// Blocks are rounded up (512 B below 1 MiB, 2 MiB above) and kept by size after free.
// All engine work runs on one stream, so a block freed by the host may be handed out
// again at once: any later use of it is queued after every earlier use.
class DeviceCache {
 public:
  void* get(std::size_t bytes) {
    const std::size_t size = round_up(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    if (enabled_) {
      auto it = free_.lower_bound(size);
      // Reuse a block up to twice the request, so small requests do not pin big blocks.
      if (it != free_.end() && it->first <= 2 * size) {
        void* p = it->second;
        stats_.cached_bytes -= it->first;
        stats_.allocated_bytes += it->first;
        live_[p] = it->first;
        free_.erase(it);
        return p;
      }
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_locked();
      err = cudaMalloc(&p, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("CUDA error: cannot allocate " + std::to_string(size) +
                               " bytes of device memory: " + cudaGetErrorString(err));
    }
    ++stats_.malloc_calls;
    stats_.allocated_bytes += size;
    live_[p] = size;
    return p;
  }

  void put(void* p) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    const std::size_t size = it->second;
    live_.erase(it);
    stats_.allocated_bytes -= size;
    if (enabled_) {
      free_.emplace(size, p);
      stats_.cached_bytes += size;
    } else {
      cudaFree(p);
    }
  }

  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    release_locked();
  }

  DeviceMemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

 private:
  static std::size_t round_up(std::size_t bytes) {
    const std::size_t quantum = bytes < (std::size_t(1) << 20) ? 512 : (std::size_t(2) << 20);
    const std::size_t b = bytes == 0 ? 1 : bytes;
    return (b + quantum - 1) / quantum * quantum;
  }
  void release_locked() {
    if (free_.empty()) return;
    cudaStreamSynchronize(stream());  // queued work may still read a cached block
    for (auto& kv : free_) cudaFree(kv.second);
    free_.clear();
    stats_.cached_bytes = 0;
  }
  static bool read_enabled() {
    const char* v = std::getenv("ENGINE_CUDA_CACHING");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }

  bool enabled_ = read_enabled();
  std::mutex mu_;
  std::multimap<std::size_t, void*> free_;
  std::unordered_map<void*, std::size_t> live_;
  DeviceMemoryStats stats_;
};

DeviceCache& device_cache() {
  static DeviceCache* cache = new DeviceCache();  // never destroyed, like the handles
  return *cache;
}

}  // namespace

void* malloc_device(std::size_t bytes) { return device_cache().get(bytes); }
void free_device(void* ptr) noexcept {
  if (ptr != nullptr) device_cache().put(ptr);
}
void empty_device_cache() { device_cache().release(); }
DeviceMemoryStats device_memory_stats() { return device_cache().stats(); }

void memcpy_h2d(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
  // Pageable host memory: wait, so the caller may overwrite or free src at once.
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}
void memcpy_d2h(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}
void memcpy_d2d(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}
void synchronize() { CUDA_CHECK(cudaStreamSynchronize(stream())); }

}  // namespace kernels::cuda
