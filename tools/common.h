// Shared by the command-line tools: finding images, loading a model from a weights
// file, naming classes, rendering saliency maps, and reporting errors.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/io/image.h"
#include "engine/io/weights.h"
#include "engine/nn/module.h"
#include "nets/zoo.h"

namespace tools {

// Files as given, and the JPEG/PNG files (by extension, any case) inside directories,
// sorted; a path that does not exist is kept, so that reading it reports the error.
std::vector<std::string> collect_images(const std::vector<std::string>& inputs);

struct LoadedModel {
  std::shared_ptr<engine::nn::Module> model;
  nets::Arch arch;
  engine::io::WeightsMeta meta;
};
// Builds the architecture named in the weights file, loads it strictly, moves it to
// the device and puts it in eval mode.
LoadedModel load_model(const std::string& weights, engine::Device device);

// The name of class k, or "class k" when the file stores no names.
std::string class_name(const engine::io::WeightsMeta& meta, int64_t k);
// A class given as an index ("130") or a name ("flamingo", exact, case-insensitive).
int64_t parse_class(const std::string& spec, const engine::io::WeightsMeta& meta);

struct Prediction {
  int64_t index;
  std::string name;
  double prob, logit;
};
// The k most probable classes of one row of logits [K].
std::vector<Prediction> top_k(const std::vector<float>& logits, int64_t k, const engine::io::WeightsMeta& meta);

// "dir/n01_flamingo.JPEG" -> "n01_flamingo"
std::string stem(const std::string& path);

// An error message about an image file that names it: `message` as it is when it
// already does, else prefixed with "image file 'PATH': ".
std::string naming_file(const std::string& path, const std::string& message);
// "no images (.jpg, .jpeg, .png) found in 'a', 'b'" (or "no images given").
std::string no_images_message(const std::vector<std::string>& inputs);

// ---- saliency rendering ----------------------------------------------------------------

// The map scaled to [0, 255] by its own maximum, or by its `clip_percentile`-th
// percentile (values above it saturate) when that is below 100.
std::vector<uint8_t> scale_map(const std::vector<float>& map, double clip_percentile);
// A colour heatmap (dark blue -> cyan -> yellow -> red) blended over the image.
// Opacity grows linearly with the map value, up to alpha.
engine::io::Image overlay(const engine::io::Image& image, const std::vector<uint8_t>& map, double alpha = 0.75);
// Images side by side (same height), separated by a white gap.
engine::io::Image panel(const std::vector<engine::io::Image>& images, int gap = 4);
engine::io::Image gray_to_rgb(int width, int height, const std::vector<uint8_t>& gray);

}  // namespace tools
