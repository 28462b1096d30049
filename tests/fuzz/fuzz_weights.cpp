// libFuzzer target: the HDF5 weights loader. Each input is written to a temporary file
// and opened as `predict` and `saliency` open weights: one H5Reader (which reads the
// file into memory, checks it and reads all of it in a child process first; see
// engine/io/h5.h), then load_weights (the metadata, the names, shapes and types of every
// dataset, then the values, strictly, into a small model); then every root dataset goes
// through each of H5Reader's typed readers, and the attributes through attr/attr_int.
//
// A finding is anything but a clean return or an engine::Error in this process: a crash
// (in our code or inside libhdf5), a sanitizer report, or another exception escaping
// (std::bad_alloc included: sizes must be validated before allocating). libhdf5's own
// failures on malformed files end the reader's child process and become an
// engine::Error ("corrupt HDF5 file"), so they are not findings. What runs in the child
// (libhdf5 and the engine's reads) gives no coverage and no finding here;
// `run_fuzzer.sh --without-isolation` runs it in this process instead
// (docs/reliability.md).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/error.h"
#include "engine/io/h5.h"
#include "engine/io/weights.h"
#include "tests/fuzz/tiny_model.h"

namespace {

std::string input_path() {
  const char* dir = std::getenv("TMPDIR");
  std::string base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (dir && *dir ? dir : "/tmp");
  return base + "/engine_fuzz_weights_" + std::to_string(::getpid()) + ".h5";
}

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    std::perror(path.c_str());
    std::abort();  // the harness itself failed, not the code under test
  }
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

template <typename F> void expect_engine_error_only(F&& f) {
  try {
    f();
  } catch (const engine::Error&) {
  }
}

struct RemoveAtExit {
  std::string path;
  ~RemoveAtExit() { std::remove(path.c_str()); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const RemoveAtExit file{input_path()};
  static const auto model = fuzz::tiny_model();
  write_file(file.path, data, size);

  expect_engine_error_only([&] {
    const engine::io::H5Reader r(file.path);
    expect_engine_error_only([&] { engine::io::load_weights(*model, r); });
    for (const std::string& name : r.names()) {
      expect_engine_error_only([&] { r.shape_of(name); });
      expect_engine_error_only([&] { r.read(name); });
      expect_engine_error_only([&] { r.read_ints(name); });
      expect_engine_error_only([&] { r.read_strings(name); });
    }
    for (const char* a : {"format", "architecture", "source"}) expect_engine_error_only([&] { r.attr(a); });
    for (const char* a : {"format_version", "num_classes"}) expect_engine_error_only([&] { r.attr_int(a); });
  });
  return 0;
}
