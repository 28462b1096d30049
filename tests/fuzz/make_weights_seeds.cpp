// Writes the weights fuzzer's seed corpus into a folder: small HDF5 files saved by the
// engine itself (tests/fuzz/tiny_model.h's model with and without class names, and
// files that exercise the other readers: float64, int64, a string list, a bad shape).
//   fuzz_weights_seeds OUT_DIR
#include <cstdio>
#include <filesystem>
#include <string>

#include "engine/error.h"
#include "engine/io/h5.h"
#include "engine/io/weights.h"
#include "tests/fuzz/tiny_model.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_weights_seeds OUT_DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  try {
    std::filesystem::create_directories(dir);
    const auto model = fuzz::tiny_model();
    engine::io::WeightsMeta meta;
    meta.architecture = "tiny";
    meta.num_classes = 3;
    meta.source = "seed";
    engine::io::save_weights(*model, dir + "/no_class_names.h5", meta);
    meta.class_names = {"cat", "dog", "flamingo"};
    engine::io::save_weights(*model, dir + "/tiny.h5", meta);
    engine::io::load_weights(*model, dir + "/tiny.h5");  // the seed must load

    // Other dataset kinds and a mismatch, in one file.
    engine::io::H5Writer w(dir + "/mixed.h5");
    w.set_attr("format", "alexnet-engine-weights");
    w.set_attr("format_version", int64_t{1});
    w.set_attr("architecture", "tiny");
    w.set_attr("num_classes", int64_t{3});
    engine::Generator gen(3);
    w.write("0.weight", engine::Tensor::randn({4, 3, 3, 3}, gen, engine::DType::F64));
    w.write("0.bias", engine::Tensor::randn({5}, gen, engine::DType::F32));
    w.write_ints("3.weight", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4});
    w.write_strings("class_names", {"a", "b", "c"});
    w.commit();
  } catch (const engine::Error& e) {
    std::fprintf(stderr, "fuzz_weights_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
