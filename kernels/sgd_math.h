// Per-element SGD update shared by the CPU loop and the CUDA kernel (kernels/sgd.h).
#pragma once

#include "kernels/common.h"
#include "kernels/sgd.h"

namespace kernels {

template <typename T> ENGINE_HD void sgd_update(T& p, T g, T* buf, const SgdParams& h) {
  T d = g;
  if (h.weight_decay != 0) d += static_cast<T>(h.weight_decay) * p;
  if (buf != nullptr) {
    const T m = static_cast<T>(h.momentum);
    T b = h.first_step ? d : m * *buf + static_cast<T>(1 - h.dampening) * d;
    *buf = b;
    d = h.nesterov ? d + m * b : b;
  }
  p -= static_cast<T>(h.lr) * d;
}

}  // namespace kernels
