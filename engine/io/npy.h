// NumPy .npy files: float32 ('<f4') and float64 ('<f8') tensors in C order.
//
// Writing produces format version 1.0 with the header padded to a multiple of 64 bytes,
// through a temporary file in the same folder renamed over the target (no partial file
// on error). Reading accepts versions 1.0, 2.0 and 3.0, little-endian float32/float64,
// C order, and checks that the data size matches the shape exactly.
#pragma once

#include <string>

#include "engine/tensor.h"

namespace engine::io {

// Writes t (on any device; copied to the host) in its own dtype.
void write_npy(const std::string& path, const Tensor& t);
// A CPU tensor of the stored dtype and shape.
Tensor read_npy(const std::string& path);

}  // namespace engine::io
