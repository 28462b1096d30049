// Tensors in HDF5 files: float32/float64 datasets, int64 datasets, string lists and
// string attributes at the root of one file. Used for weights and for reference data.
//
// Reading validates before allocating: a dataset's dataspace, type (IEEE floats and
// plain integers only), rank and total size are checked against limits and against the
// bytes the file can hold, string attributes must hold one string, and every error
// names the file and the dataset. Before libhdf5 reads anything, the file's global heap
// collections (where variable-length strings live) are walked: libhdf5 1.10 loops
// forever on some malformed ones. libhdf5 has other bugs on malformed files that no
// caller can rule out (docs/reliability.md).
// Writing goes to a temporary file beside the target, renamed over it on commit(),
// so a reader never sees a half-written file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace engine::io {

class H5Reader {
 public:
  explicit H5Reader(const std::string& path);
  ~H5Reader();
  H5Reader(const H5Reader&) = delete;
  H5Reader& operator=(const H5Reader&) = delete;

  const std::string& path() const { return path_; }
  // Names of the datasets at the root, sorted.
  std::vector<std::string> names() const;
  bool has(const std::string& name) const;
  // A float dataset as a CPU tensor of the stored precision (float32 or float64).
  Tensor read(const std::string& name) const;
  // Shape and element type of a dataset without reading it ("float32", "float64", "int64", ...).
  Shape shape_of(const std::string& name) const;
  std::string type_of(const std::string& name) const;
  std::vector<int64_t> read_ints(const std::string& name) const;
  std::vector<std::string> read_strings(const std::string& name) const;
  bool has_attr(const std::string& name) const;
  std::string attr(const std::string& name) const;
  int64_t attr_int(const std::string& name) const;

 private:
  std::string path_;
  int64_t file_ = -1;
};

class H5Writer {
 public:
  // Writes to `path + ".tmp-<pid>"` until commit().
  explicit H5Writer(const std::string& path);
  ~H5Writer();  // without commit(), the temporary file is removed
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  void write(const std::string& name, const Tensor& t);  // stored in t's dtype
  void write_ints(const std::string& name, const std::vector<int64_t>& values, const Shape& shape = {});
  void write_strings(const std::string& name, const std::vector<std::string>& values);
  void set_attr(const std::string& name, const std::string& value);
  void set_attr(const std::string& name, int64_t value);
  // Closes the file and renames it over the target.
  void commit();

 private:
  std::string path_, tmp_;
  int64_t file_ = -1;
};

}  // namespace engine::io
