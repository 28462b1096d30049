// The oneDNN CPU engine and stream shared by the engine's oneDNN kernels
// (conv_dnnl.cpp, gemm_dnnl.cpp).
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

namespace kernels {

struct DnnlContext {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
};

// Made on first use. A cache of primitives calls it before making its own static, so
// that at exit the primitives are destroyed before the engine.
inline DnnlContext& dnnl_context() {
  static DnnlContext c;
  return c;
}

}  // namespace kernels
