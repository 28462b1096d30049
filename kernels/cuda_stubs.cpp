// Linked instead of kernels/cuda/*.cu when the engine is built without CUDA: the
// runtime reports no devices and every CUDA kernel throws.
#include <stdexcept>

#include "kernels/cuda_runtime.h"
#include "kernels/elementwise.h"
#include "kernels/sgd.h"

namespace kernels {
namespace {
[[noreturn]] void no_cuda() { throw std::runtime_error("this engine was built without CUDA support"); }
}  // namespace

namespace cuda {
int device_count() { return 0; }
std::string device_name(int) { no_cuda(); }
void* malloc_device(std::size_t) { no_cuda(); }
void free_device(void*) noexcept {}
void memcpy_h2d(void*, const void*, std::size_t) { no_cuda(); }
void memcpy_d2h(void*, const void*, std::size_t) { no_cuda(); }
void memcpy_d2d(void*, const void*, std::size_t) { no_cuda(); }
void synchronize() { no_cuda(); }
}  // namespace cuda

template <typename T> void relu_forward_cuda(const T*, T*, int64_t) { no_cuda(); }
template <typename T> void relu_backward_cuda(const T*, const T*, T*, int64_t) { no_cuda(); }
template <typename T> void guided_relu_backward_cuda(const T*, const T*, T*, int64_t) { no_cuda(); }
template <typename T> void axpby_cuda(T, const T*, T, const T*, T*, int64_t) { no_cuda(); }
template <typename T> void mul_cuda(const T*, const T*, T*, int64_t) { no_cuda(); }
template <typename T> void fill_cuda(T*, T, int64_t) { no_cuda(); }
template <typename From, typename To> void convert_cuda(const From*, To*, int64_t) { no_cuda(); }
template <typename T> void uniform_cuda(T*, T, T, uint64_t, uint64_t, int64_t) { no_cuda(); }
template <typename T> void normal_cuda(T*, T, T, uint64_t, uint64_t, int64_t) { no_cuda(); }
template <typename T>
void dropout_forward_cuda(const T*, T*, T*, T, uint64_t, uint64_t, int64_t) { no_cuda(); }
template <typename T> void sgd_step_cuda(T*, const T*, T*, const SgdParams&, int64_t) { no_cuda(); }

#define INSTANTIATE(T)                                                                   \
  template void relu_forward_cuda<T>(const T*, T*, int64_t);                             \
  template void relu_backward_cuda<T>(const T*, const T*, T*, int64_t);                  \
  template void guided_relu_backward_cuda<T>(const T*, const T*, T*, int64_t);           \
  template void axpby_cuda<T>(T, const T*, T, const T*, T*, int64_t);                    \
  template void mul_cuda<T>(const T*, const T*, T*, int64_t);                            \
  template void fill_cuda<T>(T*, T, int64_t);                                            \
  template void uniform_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                  \
  template void normal_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                   \
  template void dropout_forward_cuda<T>(const T*, T*, T*, T, uint64_t, uint64_t, int64_t); \
  template void sgd_step_cuda<T>(T*, const T*, T*, const SgdParams&, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE
template void convert_cuda<float, double>(const float*, double*, int64_t);
template void convert_cuda<double, float>(const double*, float*, int64_t);

}  // namespace kernels
