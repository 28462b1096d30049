// The CUDA runtime as the engine sees it: device discovery, one stream for all of the
// engine's work, a caching device allocator and host<->device copies.
// In a build without CUDA these functions exist and throw "built without CUDA support"
// (device_count() returns 0).
#pragma once

#include <cstddef>
#include <string>

namespace kernels::cuda {

// Number of usable CUDA devices; 0 when there is no GPU, no driver, or no CUDA build.
int device_count();
std::string device_name(int device);
// The CUDA runtime's, cuBLAS's and cuDNN's versions as loaded at run time (which can
// differ from the headers built against), e.g. "CUDA runtime 13.0, cuBLAS 13.0.2, cuDNN
// 9.19.0".
std::string library_versions();
// Makes `device` current for the calling thread (the engine uses one device at a time).
void set_device(int device);

// Device memory. Freed blocks are cached by size and reused, in stream order on the
// engine's stream, so a training loop calls cudaMalloc only in its first step.
// ENGINE_CUDA_CACHING=0 sends every allocation to cudaMalloc/cudaFree (for
// compute-sanitizer). Out of memory: the cache is emptied and the allocation retried,
// then an error naming the size.
void* malloc_device(std::size_t bytes);
void free_device(void* ptr) noexcept;
void empty_device_cache();
struct DeviceMemoryStats {
  std::size_t cached_bytes = 0;     // free, held for reuse
  std::size_t allocated_bytes = 0;  // handed out and not yet freed
  std::size_t malloc_calls = 0;     // cudaMalloc calls so far
};
DeviceMemoryStats device_memory_stats();

// Copies, ordered on the engine's stream; those into host memory return when the data
// is there, those from host memory return when the source may be reused.
void memcpy_h2d(void* dst, const void* src, std::size_t bytes);
void memcpy_d2h(void* dst, const void* src, std::size_t bytes);
void memcpy_d2d(void* dst, const void* src, std::size_t bytes);
// Waits for all work on the engine's stream.
void synchronize();

}  // namespace kernels::cuda
