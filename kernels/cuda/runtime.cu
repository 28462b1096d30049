// CUDA runtime wrappers (kernels/cuda_runtime.h). Any error from cudaGetDeviceCount
// (no driver, driver too old, no device) means "no GPU", quietly.
#include "kernels/cuda/check.cuh"
#include "kernels/cuda_runtime.h"

namespace kernels::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

void* malloc_device(std::size_t bytes) {
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, bytes == 0 ? 1 : bytes));
  return p;
}

void free_device(void* ptr) noexcept { cudaFree(ptr); }

void memcpy_h2d(void* dst, const void* src, std::size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void memcpy_d2h(void* dst, const void* src, std::size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void memcpy_d2d(void* dst, const void* src, std::size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void synchronize() { CUDA_CHECK(cudaDeviceSynchronize()); }

}  // namespace kernels::cuda
