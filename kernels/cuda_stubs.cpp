// Linked instead of kernels/cuda/*.cu when the engine is built without CUDA: the
// runtime reports no devices and every CUDA kernel throws.
#include <stdexcept>

#include "kernels/cat.h"
#include "kernels/conv.h"
#include "kernels/cuda_runtime.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/pool.h"
#include "kernels/reduce.h"
#include "kernels/sgd.h"
#include "kernels/softmax.h"

namespace kernels {
namespace {
[[noreturn]] void no_cuda() { throw std::runtime_error("this engine was built without CUDA support"); }
}  // namespace

namespace cuda {
int device_count() { return 0; }
std::string device_name(int) { no_cuda(); }
std::string library_versions() { no_cuda(); }
void set_device(int) { no_cuda(); }
void* malloc_device(std::size_t) { no_cuda(); }
void free_device(void*) noexcept {}
void empty_device_cache() {}
DeviceMemoryStats device_memory_stats() { return {}; }
void memcpy_h2d(void*, const void*, std::size_t) { no_cuda(); }
void memcpy_d2h(void*, const void*, std::size_t) { no_cuda(); }
void memcpy_d2d(void*, const void*, std::size_t) { no_cuda(); }
void synchronize() { no_cuda(); }
}  // namespace cuda

void set_cuda_allow_tf32(bool) {}
bool cuda_allow_tf32() { return false; }
void set_cudnn_deterministic(bool) {}
bool cudnn_deterministic() { return false; }
bool cudnn_may_pick(CudnnDirection, int) { no_cuda(); }

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
void sgd_step_float4_cuda_on_host(float*, const float*, float*, const SgdParams&, int64_t) { no_cuda(); }
void map2_float4_cuda_on_host(const char*, const float*, const float*, float*, int64_t, unsigned) { no_cuda(); }
void dropout_float4_cuda_on_host(const float*, float*, float*, float, uint64_t, uint64_t, int64_t, unsigned) {
  no_cuda();
}

template <typename T> void max_pool2d_forward_cuda(const T*, T*, int64_t*, const Pool2dShape&) { no_cuda(); }
template <typename T>
void max_pool2d_backward_cuda(const T*, const int64_t*, T*, const Pool2dShape&) { no_cuda(); }
template <typename T> void max_pool2d_forward_cuda_on_host(const T*, T*, int64_t*, const Pool2dShape&, bool) { no_cuda(); }
template <typename T>
void max_pool2d_backward_cuda_on_host(const T*, const int64_t*, T*, const Pool2dShape&, bool) { no_cuda(); }
template <typename T> void adaptive_avg_pool2d_forward_cuda_on_host(const T*, T*, int64_t, int64_t, int64_t) { no_cuda(); }
template <typename T> void adaptive_avg_pool2d_backward_cuda_on_host(const T*, T*, int64_t, int64_t, int64_t) { no_cuda(); }
template <typename T>
void adaptive_avg_pool2d_forward_cuda(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t) { no_cuda(); }
template <typename T>
void adaptive_avg_pool2d_backward_cuda(const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t) { no_cuda(); }

template <typename T> void sum_all_cuda(const T*, T*, T, int64_t) { no_cuda(); }
template <typename T> std::vector<double> sum_all_thread_sums_cuda_on_host(const T*, int64_t) { no_cuda(); }
template <typename T> void sum_dim_cuda(const T*, T*, int64_t, int64_t, int64_t) { no_cuda(); }
template <typename T> void abs_max_dim_cuda(const T*, T*, int64_t, int64_t, int64_t) { no_cuda(); }
template <typename T> void broadcast_dim_cuda(const T*, T*, T, int64_t, int64_t, int64_t) { no_cuda(); }
template <typename T> void add_bias_cuda(T*, const T*, int64_t, int64_t, int64_t) { no_cuda(); }
template <typename T> void bias_grad_cuda(const T*, T*, int64_t, int64_t, int64_t) { no_cuda(); }

template <typename T>
void softmax_forward_cuda_on_host(const T*, T*, int64_t, int64_t, int64_t, bool, int64_t) { no_cuda(); }
template <typename T>
void softmax_backward_cuda_on_host(const T*, const T*, T*, int64_t, int64_t, int64_t, bool, int64_t) { no_cuda(); }
template <typename T> void softmax_forward_cuda(const T*, T*, int64_t, int64_t, int64_t, bool) { no_cuda(); }
template <typename T>
void softmax_backward_cuda(const T*, const T*, T*, int64_t, int64_t, int64_t, bool) { no_cuda(); }
template <typename T>
void cross_entropy_forward_cuda(const T*, const int64_t*, T*, T*, int64_t, int64_t) { no_cuda(); }
template <typename T>
void cross_entropy_backward_cuda(const T*, const int64_t*, const T*, T*, int64_t, int64_t) { no_cuda(); }

template <typename T>
void cat_cuda(const std::vector<const T*>&, const std::vector<int64_t>&, T*, int64_t, int64_t) { no_cuda(); }
template <typename T>
void split_cuda(const T*, const std::vector<T*>&, const std::vector<int64_t>&, int64_t, int64_t) { no_cuda(); }
template <typename T>
void cat_cuda_on_host(const std::vector<const T*>&, const std::vector<int64_t>&, T*, int64_t, int64_t, unsigned,
                      unsigned) {
  no_cuda();
}
template <typename T>
void split_cuda_on_host(const T*, const std::vector<T*>&, const std::vector<int64_t>&, int64_t, int64_t, unsigned,
                        unsigned) {
  no_cuda();
}

template <typename T>
void gemm_cuda(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T, T*, int64_t) {
  no_cuda();
}
template <typename T>
void gemm_tiled_cuda(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T, T*,
                     int64_t) {
  no_cuda();
}
template <typename T>
void gemm_tiled_cuda_on_host(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, int64_t, T, T*,
                             int64_t, int) {
  no_cuda();
}

template <typename T> void conv2d_forward_cudnn(const T*, const T*, const T*, T*, const Conv2dShape&) { no_cuda(); }
template <typename T>
void conv2d_backward_cudnn(const T*, const T*, const T*, T*, T*, T*, const Conv2dShape&) { no_cuda(); }
template <typename T> void im2col_cuda(const T*, T*, const Conv2dShape&, int64_t) { no_cuda(); }
template <typename T> void col2im_cuda(const T*, T*, const Conv2dShape&, int64_t) { no_cuda(); }
template <typename T>
void conv2d_forward_im2col_cuda(const T*, const T*, const T*, T*, const Conv2dShape&) { no_cuda(); }

#define INSTANTIATE(T)                                                                              \
  template void relu_forward_cuda<T>(const T*, T*, int64_t);                                        \
  template void relu_backward_cuda<T>(const T*, const T*, T*, int64_t);                             \
  template void guided_relu_backward_cuda<T>(const T*, const T*, T*, int64_t);                      \
  template void axpby_cuda<T>(T, const T*, T, const T*, T*, int64_t);                               \
  template void mul_cuda<T>(const T*, const T*, T*, int64_t);                                       \
  template void fill_cuda<T>(T*, T, int64_t);                                                       \
  template void uniform_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                             \
  template void normal_cuda<T>(T*, T, T, uint64_t, uint64_t, int64_t);                              \
  template void dropout_forward_cuda<T>(const T*, T*, T*, T, uint64_t, uint64_t, int64_t);          \
  template void sgd_step_cuda<T>(T*, const T*, T*, const SgdParams&, int64_t);                      \
  template void max_pool2d_forward_cuda<T>(const T*, T*, int64_t*, const Pool2dShape&);             \
  template void max_pool2d_backward_cuda<T>(const T*, const int64_t*, T*, const Pool2dShape&);      \
  template void max_pool2d_forward_cuda_on_host<T>(const T*, T*, int64_t*, const Pool2dShape&, bool); \
  template void max_pool2d_backward_cuda_on_host<T>(const T*, const int64_t*, T*, const Pool2dShape&, bool); \
  template void adaptive_avg_pool2d_forward_cuda_on_host<T>(const T*, T*, int64_t, int64_t, int64_t); \
  template void adaptive_avg_pool2d_backward_cuda_on_host<T>(const T*, T*, int64_t, int64_t, int64_t); \
  template void adaptive_avg_pool2d_forward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t,        \
                                                    int64_t, int64_t);                              \
  template void adaptive_avg_pool2d_backward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t,       \
                                                     int64_t, int64_t);                             \
  template void sum_all_cuda<T>(const T*, T*, T, int64_t);                                          \
  template std::vector<double> sum_all_thread_sums_cuda_on_host<T>(const T*, int64_t);              \
  template void sum_dim_cuda<T>(const T*, T*, int64_t, int64_t, int64_t);                           \
  template void abs_max_dim_cuda<T>(const T*, T*, int64_t, int64_t, int64_t);                       \
  template void broadcast_dim_cuda<T>(const T*, T*, T, int64_t, int64_t, int64_t);                  \
  template void add_bias_cuda<T>(T*, const T*, int64_t, int64_t, int64_t);                          \
  template void bias_grad_cuda<T>(const T*, T*, int64_t, int64_t, int64_t);                         \
  template void softmax_forward_cuda_on_host<T>(const T*, T*, int64_t, int64_t, int64_t, bool, int64_t); \
  template void softmax_backward_cuda_on_host<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool, \
                                                 int64_t);                                               \
  template void softmax_forward_cuda<T>(const T*, T*, int64_t, int64_t, int64_t, bool);             \
  template void softmax_backward_cuda<T>(const T*, const T*, T*, int64_t, int64_t, int64_t, bool);  \
  template void cross_entropy_forward_cuda<T>(const T*, const int64_t*, T*, T*, int64_t, int64_t);  \
  template void cross_entropy_backward_cuda<T>(const T*, const int64_t*, const T*, T*, int64_t,     \
                                               int64_t);                                            \
  template void cat_cuda<T>(const std::vector<const T*>&, const std::vector<int64_t>&, T*, int64_t, \
                            int64_t);                                                               \
  template void split_cuda<T>(const T*, const std::vector<T*>&, const std::vector<int64_t>&,        \
                              int64_t, int64_t);                                                    \
  template void cat_cuda_on_host<T>(const std::vector<const T*>&, const std::vector<int64_t>&, T*,  \
                                    int64_t, int64_t, unsigned, unsigned);                          \
  template void split_cuda_on_host<T>(const T*, const std::vector<T*>&, const std::vector<int64_t>&, \
                                      int64_t, int64_t, unsigned, unsigned);                        \
  template void gemm_cuda<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, \
                             int64_t, T, T*, int64_t);                                              \
  template void gemm_tiled_cuda<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t,     \
                                   const T*, int64_t, T, T*, int64_t);                              \
  template void gemm_tiled_cuda_on_host<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*,      \
                                           int64_t, const T*, int64_t, T, T*, int64_t, int);        \
  template void conv2d_forward_cudnn<T>(const T*, const T*, const T*, T*, const Conv2dShape&);      \
  template void conv2d_backward_cudnn<T>(const T*, const T*, const T*, T*, T*, T*,                  \
                                         const Conv2dShape&);                                       \
  template void im2col_cuda<T>(const T*, T*, const Conv2dShape&, int64_t);                          \
  template void col2im_cuda<T>(const T*, T*, const Conv2dShape&, int64_t);                          \
  template void conv2d_forward_im2col_cuda<T>(const T*, const T*, const T*, T*, const Conv2dShape&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE
template void convert_cuda<float, double>(const float*, double*, int64_t);
template void convert_cuda<double, float>(const double*, float*, int64_t);

}  // namespace kernels
