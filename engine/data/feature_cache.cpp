#include "engine/data/feature_cache.h"

#include <hdf5.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/error.h"
#include "engine/io/h5_handle.h"

namespace engine::data {

namespace {

using io::detail::Handle;
using io::detail::silence_hdf5;

class MemoryCache : public FeatureCache {
 public:
  MemoryCache(int64_t rows, const Shape& row_shape)
      : FeatureCache(rows, row_shape, ""), data_(static_cast<size_t>(rows * numel_of(row_shape))) {}

 private:
  void store_row(int64_t row, const float* values) override {
    std::memcpy(data_.data() + static_cast<size_t>(row * row_numel()), values, row_bytes());
  }
  void load_row(int64_t row, float* out) const override {
    std::memcpy(out, data_.data() + static_cast<size_t>(row * row_numel()), row_bytes());
  }
  size_t row_bytes() const { return static_cast<size_t>(row_numel()) * sizeof(float); }

  std::vector<float> data_;
};

class FileCache : public FeatureCache {
 public:
  // Creates a new file (tmp name until finish()).
  FileCache(const std::string& path, int64_t rows, const Shape& row_shape, const std::string& key)
      : FeatureCache(rows, row_shape, path), key_(key), tmp_(path + ".tmp-" + std::to_string(::getpid())) {
    const auto lock = io::detail::lock_hdf5();
    silence_hdf5();
    file_ = H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ENGINE_CHECK(file_ >= 0, path, ": cannot create the feature cache (is the folder writable?)");
    const hsize_t dims[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(row_numel())};
    Handle space(H5Screate_simple(2, dims, nullptr), H5Sclose);
    data_ = H5Dcreate2(file_, "features", H5T_IEEE_F32LE, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (data_ < 0) {
      close_all();
      std::remove(tmp_.c_str());
      throw Error(path + ": cannot create the feature dataset (" + std::to_string(rows) + " x " +
                  std::to_string(row_numel()) + " float32)");
    }
  }

  // Opens a finished file for reading; file_ < 0 when it is not usable.
  FileCache(const std::string& path, int64_t rows, const Shape& row_shape, const std::string& key, bool)
      : FeatureCache(rows, row_shape, path), key_(key) {
    const auto lock = io::detail::lock_hdf5();
    silence_hdf5();
    open_for_reading();
  }

  ~FileCache() override {
    const auto lock = io::detail::lock_hdf5();
    close_all();
    if (!tmp_.empty()) std::remove(tmp_.c_str());
  }

  bool usable() const { return file_ >= 0 && data_ >= 0; }

  void check_writable() const override {
    ENGINE_CHECK(!tmp_.empty(), path_, ": the feature cache is finished and read-only");
  }
  void store_row(int64_t row, const float* values) override { row_io(row, const_cast<float*>(values), true); }
  void load_row(int64_t row, float* out) const override { row_io(row, out, false); }

  void finish() override {
    const auto lock = io::detail::lock_hdf5();
    if (tmp_.empty()) return;
    std::vector<int64_t> present(present_.begin(), present_.end()), missing_rows;
    std::vector<std::string> reasons;
    for (const Missing& m : missing_) {
      missing_rows.push_back(m.row);
      reasons.push_back(m.reason);
    }
    write_ints("present", present);
    write_ints("missing_rows", missing_rows);
    write_strings("missing_reasons", reasons);
    set_string_attr("key", key_);
    close_all();
    std::error_code ec;
    std::filesystem::rename(tmp_, path_, ec);
    if (ec) {
      std::remove(tmp_.c_str());
      tmp_.clear();
      throw Error(path_ + ": cannot move the finished feature cache into place: " + ec.message());
    }
    tmp_.clear();
    open_for_reading();
    ENGINE_CHECK(usable(), path_, ": cannot reopen the feature cache just written");
  }

 private:
  void close_all() {
    if (data_ >= 0) H5Dclose(data_);
    if (file_ >= 0) H5Fclose(file_);
    data_ = file_ = -1;
  }

  void open_for_reading() {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path_, ec)) return;
    file_ = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file_ < 0) return;
    if (read_string_attr("key") != key_) return close_all();
    data_ = H5Dopen2(file_, "features", H5P_DEFAULT);
    if (data_ < 0) return close_all();
    Handle space(H5Dget_space(data_), H5Sclose);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(space.id) != 2 || H5Sget_simple_extent_dims(space.id, dims, nullptr) != 2 ||
        dims[0] != static_cast<hsize_t>(rows_) || dims[1] != static_cast<hsize_t>(row_numel()))
      return close_all();
    std::vector<int64_t> present, missing_rows;
    std::vector<std::string> reasons;
    if (!read_ints("present", present) || present.size() != static_cast<size_t>(rows_) ||
        !read_ints("missing_rows", missing_rows) || !read_strings("missing_reasons", reasons) ||
        reasons.size() != missing_rows.size())
      return close_all();
    for (size_t i = 0; i < present.size(); ++i) present_[i] = present[i] != 0;
    missing_.clear();
    for (size_t i = 0; i < missing_rows.size(); ++i) missing_.push_back({missing_rows[i], reasons[i]});
  }

  void row_io(int64_t row, float* buf, bool writing) const {
    const auto lock = io::detail::lock_hdf5();
    const hsize_t start[2] = {static_cast<hsize_t>(row), 0}, count[2] = {1, static_cast<hsize_t>(row_numel())};
    Handle fspace(H5Dget_space(data_), H5Sclose);
    H5Sselect_hyperslab(fspace.id, H5S_SELECT_SET, start, nullptr, count, nullptr);
    Handle mspace(H5Screate_simple(2, count, nullptr), H5Sclose);
    const herr_t rc = writing ? H5Dwrite(data_, H5T_NATIVE_FLOAT, mspace.id, fspace.id, H5P_DEFAULT, buf)
                              : H5Dread(data_, H5T_NATIVE_FLOAT, mspace.id, fspace.id, H5P_DEFAULT, buf);
    ENGINE_CHECK(rc >= 0, path_, ": cannot ", writing ? "write" : "read", " row ", row, " of the feature cache");
  }

  void write_ints(const char* name, const std::vector<int64_t>& v) {
    const hsize_t n = v.size();
    Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    Handle ds(H5Dcreate2(file_, name, H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    ENGINE_CHECK(ds.id >= 0 && (n == 0 || H5Dwrite(ds.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0),
                 path_, ": cannot write '", name, "' of the feature cache");
  }

  bool read_ints(const char* name, std::vector<int64_t>& v) const {
    if (H5Lexists(file_, name, H5P_DEFAULT) <= 0) return false;
    Handle ds(H5Dopen2(file_, name, H5P_DEFAULT), H5Dclose);
    if (ds.id < 0) return false;
    Handle space(H5Dget_space(ds.id), H5Sclose);
    const hssize_t n = H5Sget_simple_extent_npoints(space.id);
    if (n < 0) return false;
    v.assign(static_cast<size_t>(n), 0);
    return n == 0 || H5Dread(ds.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0;
  }

  void write_strings(const char* name, const std::vector<std::string>& v) {
    const hsize_t n = v.size();
    Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.id, H5T_VARIABLE);
    H5Tset_cset(type.id, H5T_CSET_UTF8);
    std::vector<const char*> ptrs;
    for (const std::string& s : v) ptrs.push_back(s.c_str());
    Handle ds(H5Dcreate2(file_, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    ENGINE_CHECK(ds.id >= 0 && (n == 0 || H5Dwrite(ds.id, type.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) >= 0),
                 path_, ": cannot write '", name, "' of the feature cache");
  }

  bool read_strings(const char* name, std::vector<std::string>& v) const {
    if (H5Lexists(file_, name, H5P_DEFAULT) <= 0) return false;
    Handle ds(H5Dopen2(file_, name, H5P_DEFAULT), H5Dclose);
    if (ds.id < 0) return false;
    Handle space(H5Dget_space(ds.id), H5Sclose);
    const hssize_t n = H5Sget_simple_extent_npoints(space.id);
    if (n < 0) return false;
    v.clear();
    if (n == 0) return true;
    Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.id, H5T_VARIABLE);
    H5Tset_cset(type.id, H5T_CSET_UTF8);
    std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
    if (H5Dread(ds.id, type.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0) return false;
    for (char* p : ptrs) v.emplace_back(p ? p : "");
    H5Dvlen_reclaim(type.id, space.id, H5P_DEFAULT, ptrs.data());
    return true;
  }

  void set_string_attr(const char* name, const std::string& value) {
    Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.id, H5T_VARIABLE);
    H5Tset_cset(type.id, H5T_CSET_UTF8);
    Handle space(H5Screate(H5S_SCALAR), H5Sclose);
    Handle a(H5Acreate2(file_, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const char* p = value.c_str();
    ENGINE_CHECK(a.id >= 0 && H5Awrite(a.id, type.id, &p) >= 0, path_, ": cannot write attribute '", name, "'");
  }

  std::string read_string_attr(const char* name) const {
    if (H5Aexists(file_, name) <= 0) return "";
    Handle a(H5Aopen(file_, name, H5P_DEFAULT), H5Aclose);
    Handle type(H5Aget_type(a.id), H5Tclose);
    if (a.id < 0 || H5Tget_class(type.id) != H5T_STRING || !H5Tis_variable_str(type.id)) return "";
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.id, H5T_VARIABLE);
    H5Tset_cset(mem.id, H5T_CSET_UTF8);
    char* p = nullptr;
    if (H5Aread(a.id, mem.id, &p) < 0 || p == nullptr) return "";
    std::string s(p);
    H5free_memory(p);
    return s;
  }

  std::string key_, tmp_;
  hid_t file_ = -1, data_ = -1;
};

}  // namespace

FeatureCache::FeatureCache(int64_t rows, Shape row_shape, std::string path)
    : rows_(rows), row_shape_(std::move(row_shape)), path_(std::move(path)), present_(static_cast<size_t>(rows), 0) {
  ENGINE_CHECK(rows >= 0 && numel_of(row_shape_) > 0, "FeatureCache: bad size ", rows, " x ", shape_str(row_shape_));
}

void FeatureCache::check_rows(const std::vector<int64_t>& rows, const char* what) const {
  for (int64_t r : rows)
    ENGINE_CHECK(r >= 0 && r < rows_, "FeatureCache::", what, ": row ", r, " is out of range [0, ", rows_, ")");
}

void FeatureCache::write(const std::vector<int64_t>& rows, const Tensor& values) {
  check_rows(rows, "write");
  check_writable();
  const Tensor v = values.device().is_cpu() ? values : values.detach().to(Device::cpu());
  ENGINE_CHECK(v.dtype() == DType::F32 && v.numel() == static_cast<int64_t>(rows.size()) * row_numel(),
               "FeatureCache::write: ", rows.size(), " rows of ", shape_str(row_shape_), " expected, got ", v.str());
  const size_t d = static_cast<size_t>(row_numel());
  for (size_t i = 0; i < rows.size(); ++i) {
    store_row(rows[i], v.data<float>() + i * d);
    present_[static_cast<size_t>(rows[i])] = 1;
  }
}

Tensor FeatureCache::gather(const std::vector<int64_t>& rows) const {
  check_rows(rows, "gather");
  Shape shape{static_cast<int64_t>(rows.size())};
  shape.insert(shape.end(), row_shape_.begin(), row_shape_.end());
  Tensor out = Tensor::empty(shape, DType::F32);
  const size_t d = static_cast<size_t>(row_numel());
  for (size_t i = 0; i < rows.size(); ++i) {
    ENGINE_CHECK(present(rows[i]), "FeatureCache::gather: row ", rows[i], " was never written");
    load_row(rows[i], out.data<float>() + i * d);
  }
  return out;
}

void FeatureCache::mark_missing(int64_t row, const std::string& reason) {
  check_rows({row}, "mark_missing");
  present_[static_cast<size_t>(row)] = 0;
  missing_.push_back({row, reason});
}

std::unique_ptr<FeatureCache> FeatureCache::in_memory(int64_t rows, const Shape& row_shape) {
  return std::make_unique<MemoryCache>(rows, row_shape);
}

std::unique_ptr<FeatureCache> FeatureCache::create_file(const std::string& path, int64_t rows, const Shape& row_shape,
                                                        const std::string& key) {
  return std::make_unique<FileCache>(path, rows, row_shape, key);
}

std::unique_ptr<FeatureCache> FeatureCache::open_file(const std::string& path, int64_t rows, const Shape& row_shape,
                                                      const std::string& key) {
  auto c = std::make_unique<FileCache>(path, rows, row_shape, key, true);
  if (!c->usable()) return nullptr;
  return c;
}

}  // namespace engine::data
