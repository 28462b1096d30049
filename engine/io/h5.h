// Tensors in HDF5 files: float32/float64 datasets, int64 datasets, string lists and
// string attributes at the root of one file. Used for weights, checkpoints and
// reference data.
//
// Reading: H5Reader reads the whole file into memory once (at most 4 GiB); libhdf5
// reads that image, never the file again, so what was checked is what is read. Before
// libhdf5 sees it, the superblock signature is found and the global heap collections
// (where variable-length strings live) are walked: libhdf5 1.10 loops forever on some
// malformed ones. Then a child process (fork) opens the image and reads everything the
// methods below can return, for every name in the file: each value, or the message of
// the error the method throws. libhdf5 1.10 crashes, overflows buffers and makes huge
// allocations on some malformed files (docs/reliability.md); in the child that ends the
// child, and the constructor throws "<path>: corrupt HDF5 file (...)". A libhdf5 call
// that fails there also refuses the file (a part libhdf5 cannot read is corrupt). When
// the child finished cleanly, the reader takes its answers (values through a shared
// memory file) and answers every method from them: libhdf5 never runs in the caller's
// process on a file being read. The child has a time limit (60 s plus 1 s per 10 MiB, or
// ENGINE_H5_TIME_LIMIT seconds), limits on CPU time and address space, its output goes
// to /dev/null, and it never returns into the caller's code. ENGINE_H5_ISOLATION=0 in
// the environment reads in this process instead, with the same answers (libhdf5's crash
// then happens here; useful to debug one). Every call into libhdf5, from any thread, holds one lock
// (detail::lock_hdf5): Debian's libhdf5 is not thread-safe, and no other thread may be
// inside it when the child is forked.
//
// Each read validates before allocating: a dataset's dataspace, type (IEEE floats and
// plain integers only), rank and total size are checked against limits and against the
// bytes the file can hold, string attributes must hold one string, datasets must be
// reached by hard links and keep their data in the file (no external or virtual
// storage), and every error names the file and the dataset.
// Writing goes to a temporary file beside the target, renamed over it on commit(),
// so a reader never sees a half-written file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace engine::io {

namespace detail {
struct FileContents;
}

class H5Reader {
 public:
  // Reads the whole file (above). Throws engine::Error naming the file when it is
  // missing, larger than 4 GiB, not HDF5, truncated or corrupt ("corrupt HDF5 file" when
  // libhdf5 failed on it). The methods below answer from what was read; names are link
  // names at the root.
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
  std::unique_ptr<const detail::FileContents> contents_;  // every answer, read at construction
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
