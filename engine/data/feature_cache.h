// A table of per-sample feature rows (float32 [rows, ...row_shape]), kept in memory or
// in an HDF5 file: what a frozen feature extractor computed once per image, so that
// training epochs run the trainable layers alone.
//
// A file cache is written to a temporary file and renamed into place by finish(), with
// a key (a description of the extractor, its weights and the images) stored beside the
// rows; open_file() returns it only when it is complete and its key matches, so a stale
// or half-written cache is never used. Rows of samples that could not be read are
// marked missing, with the reason.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace engine::data {

class FeatureCache {
 public:
  virtual ~FeatureCache() = default;

  static std::unique_ptr<FeatureCache> in_memory(int64_t rows, const Shape& row_shape);
  // A new cache file at `path` (written as path.tmp-<pid> until finish()).
  static std::unique_ptr<FeatureCache> create_file(const std::string& path, int64_t rows, const Shape& row_shape,
                                                   const std::string& key);
  // The complete cache at `path` with this key and shape, or null when the file is
  // absent, incomplete, unreadable or made for something else.
  static std::unique_ptr<FeatureCache> open_file(const std::string& path, int64_t rows, const Shape& row_shape,
                                                 const std::string& key);

  int64_t rows() const { return rows_; }
  const Shape& row_shape() const { return row_shape_; }
  int64_t row_numel() const { return numel_of(row_shape_); }
  bool on_disk() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

  // Stores values [n, ...row_shape] (float32) in rows[0..n).
  void write(const std::vector<int64_t>& rows, const Tensor& values);
  // Marks a row as missing (its sample could not be read).
  void mark_missing(int64_t row, const std::string& reason);
  bool present(int64_t row) const { return present_.at(static_cast<size_t>(row)) != 0; }
  struct Missing {
    int64_t row;
    std::string reason;
  };
  const std::vector<Missing>& missing() const { return missing_; }
  // float32 [n, ...row_shape] on the CPU; every row must be present.
  Tensor gather(const std::vector<int64_t>& rows) const;
  // Ends writing: a file cache is closed, renamed into place and reopened for reading.
  virtual void finish() {}

 protected:
  FeatureCache(int64_t rows, Shape row_shape, std::string path);
  void check_rows(const std::vector<int64_t>& rows, const char* what) const;
  // One row of row_numel() floats, into and out of where the cache keeps it.
  virtual void store_row(int64_t row, const float* values) = 0;
  virtual void load_row(int64_t row, float* out) const = 0;
  // Throws when the cache takes no more writes.
  virtual void check_writable() const {}

  int64_t rows_;
  Shape row_shape_;
  std::string path_;
  std::vector<uint8_t> present_;
  std::vector<Missing> missing_;
};

}  // namespace engine::data
