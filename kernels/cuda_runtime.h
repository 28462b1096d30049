// The CUDA runtime as the engine sees it: device discovery, memory and copies.
// In a build without CUDA these functions exist and throw "built without CUDA support"
// (device_count() returns 0).
#pragma once

#include <cstddef>
#include <string>

namespace kernels::cuda {

// Number of usable CUDA devices; 0 when there is no GPU, no driver, or no CUDA build.
int device_count();
std::string device_name(int device);
void* malloc_device(std::size_t bytes);
void free_device(void* ptr) noexcept;
void memcpy_h2d(void* dst, const void* src, std::size_t bytes);
void memcpy_d2h(void* dst, const void* src, std::size_t bytes);
void memcpy_d2d(void* dst, const void* src, std::size_t bytes);
void synchronize();

}  // namespace kernels::cuda
