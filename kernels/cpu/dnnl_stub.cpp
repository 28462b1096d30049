// Linked when the engine is built without oneDNN: conv2d uses im2col + GEMM only, and
// every GEMM goes to OpenBLAS.
#include <atomic>
#include <stdexcept>

#include "kernels/conv.h"
#include "kernels/gemm.h"

namespace kernels {

bool conv2d_dnnl_available() { return false; }
void conv2d_forward_dnnl(const float*, const float*, const float*, float*, const Conv2dShape&, bool) {
  throw std::runtime_error("this engine was built without oneDNN");
}
void conv2d_backward_dnnl(const float*, const float*, const float*, float*, float*, float*, const Conv2dShape&) {
  throw std::runtime_error("this engine was built without oneDNN");
}

namespace {
std::atomic<int> g_algorithm{static_cast<int>(DnnlConvAlgorithm::kAuto)};
}
void set_dnnl_conv_algorithm(DnnlConvAlgorithm a) { g_algorithm.store(static_cast<int>(a)); }
DnnlConvAlgorithm dnnl_conv_algorithm() { return static_cast<DnnlConvAlgorithm>(g_algorithm.load()); }
DnnlConvImplementations conv2d_dnnl_implementations(const Conv2dShape&, bool) {
  throw std::runtime_error("this engine was built without oneDNN");
}

void chain_forward_dnnl(const float*, const std::vector<DnnlChainLayer>&, float*) {
  throw std::runtime_error("this engine was built without oneDNN");
}

bool gemm_dnnl_available() { return false; }
void gemm_dnnl(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t, float,
               float*, int64_t) {
  throw std::runtime_error("this engine was built without oneDNN");
}

}  // namespace kernels
