// Model weights in the project's HDF5 layout (weights/README.md):
//   one float32 dataset per parameter at the root, named by its torchvision state_dict
//   key ("features.0.weight"), in PyTorch's shape order;
//   root attributes: format ("alexnet-engine-weights"), format_version (1),
//   architecture ("alexnet", "squeezenet1_1"), num_classes, source (free text);
//   a string dataset "class_names" with num_classes entries (may be absent).
#pragma once

#include <string>
#include <vector>

#include "engine/nn/module.h"

namespace engine::io {

class H5Reader;

struct WeightsMeta {
  std::string architecture;
  int64_t num_classes = 0;
  std::string source;
  std::vector<std::string> class_names;
};

struct LoadOptions {
  // Strict: the file's parameters and the model's must match one to one (names, shapes,
  // float32). Non-strict (for head surgery): the file may hold extra keys, and the
  // model's keys listed in `skip` are left as they are; every other key must match.
  bool strict = true;
  std::vector<std::string> skip;
  // When not empty, the file's architecture attribute must equal it.
  std::string expect_architecture;
};

// Reads the attributes and class names only.
WeightsMeta read_weights_meta(const std::string& path);
WeightsMeta read_weights_meta(const H5Reader& file);

// Loads parameter values into the model (converted to its dtype and device). One error
// lists every missing key, unexpected key and shape or dtype mismatch. Returns the
// file's metadata.
WeightsMeta load_weights(nn::Module& model, const std::string& path, const LoadOptions& options = {});
// The same from a file already open: opening reads and checks the whole file
// (engine/io/h5.h), so a caller that needs the file more than once opens it once.
WeightsMeta load_weights(nn::Module& model, const H5Reader& file, const LoadOptions& options = {});

// Writes every parameter as float32 with the metadata, atomically (temporary file, then
// rename): an interrupted save leaves any previous file intact.
void save_weights(const nn::Module& model, const std::string& path, const WeightsMeta& meta);

}  // namespace engine::io
