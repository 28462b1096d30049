// Linked when the engine is built without oneDNN: conv2d uses im2col + GEMM only.
#include <stdexcept>

#include "kernels/conv.h"

namespace kernels {

bool conv2d_dnnl_available() { return false; }
void conv2d_forward_dnnl(const float*, const float*, const float*, float*, const Conv2dShape&) {
  throw std::runtime_error("this engine was built without oneDNN");
}
void conv2d_backward_dnnl(const float*, const float*, const float*, float*, float*, float*, const Conv2dShape&) {
  throw std::runtime_error("this engine was built without oneDNN");
}

}  // namespace kernels
