#include "engine/io/h5.h"

#include <fcntl.h>
#include <hdf5.h>
#include <string.h>  // memmem
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/error.h"
#include "engine/io/h5_handle.h"

namespace engine::io {
namespace {

constexpr int kMaxRank = 8;
constexpr int64_t kMaxElements = int64_t(1) << 33;  // 32 GiB of float32: larger is not a weight file
constexpr int64_t kMaxStrings = int64_t(1) << 24;   // class names and the like
// Stored data expands at most this much when read: deflate's limit is 1032:1. An
// unfiltered dataset's bytes must all be in the file.
constexpr int64_t kMaxFilterExpansion = 1032;

using detail::Handle;
using detail::silence_hdf5;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what);
}

Shape dataset_shape(const std::string& path, const std::string& name, hid_t ds) {
  Handle space(H5Dget_space(ds), H5Sclose);
  if (space.id < 0) fail(path, "dataset '" + name + "': cannot read its dataspace");
  const H5S_class_t cls = H5Sget_simple_extent_type(space.id);
  if (cls != H5S_SIMPLE && cls != H5S_SCALAR) fail(path, "dataset '" + name + "': has no dataspace (null or corrupt)");
  const int rank = H5Sget_simple_extent_ndims(space.id);
  if (rank < 0 || rank > kMaxRank)
    fail(path, "dataset '" + name + "': rank " + std::to_string(rank) + " is not supported");
  hsize_t dims[kMaxRank] = {};
  if (H5Sget_simple_extent_dims(space.id, dims, nullptr) != rank)
    fail(path, "dataset '" + name + "': cannot read its dimensions");
  Shape shape;
  int64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    if (dims[i] > static_cast<hsize_t>(kMaxElements))
      fail(path, "dataset '" + name + "': dimension too large");
    shape.push_back(static_cast<int64_t>(dims[i]));
    total *= static_cast<int64_t>(dims[i]);
    if (total > kMaxElements) fail(path, "dataset '" + name + "': too many elements");
  }
  return shape;
}

// The bytes that reading `elements` values of the dataset's stored type implies must be
// in the file (or, through a filter such as deflate, at most kMaxFilterExpansion times
// the file): checked before a buffer of that size is allocated, so a header that claims
// a huge dataset in a small file is refused instead of allocating.
void check_stored_size(const std::string& path, const std::string& name, hid_t ds, int64_t elements) {
  Handle type(H5Dget_type(ds), H5Tclose);
  Handle dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (type.id < 0 || dcpl.id < 0) fail(path, "dataset '" + name + "': cannot read its type or layout");
  const int filters = H5Pget_nfilters(dcpl.id);
  const size_t element = H5Tget_size(type.id);
  std::error_code ec;
  const int64_t file_size = static_cast<int64_t>(std::filesystem::file_size(path, ec));
  if (ec || filters < 0 || element == 0) fail(path, "dataset '" + name + "': cannot read its layout");
  const int64_t limit = file_size * (filters > 0 ? kMaxFilterExpansion : 1);
  if (elements > limit / static_cast<int64_t>(element))
    fail(path, "dataset '" + name + "': claims " + std::to_string(elements) + " elements of " +
                   std::to_string(element) + " bytes, more than the file (" + std::to_string(file_size) +
                   " bytes) can hold (truncated or corrupt file)");
}

// libhdf5 1.10 loops forever (or reads past its buffer) on a global heap collection
// whose object list does not tile it: a free-space entry of size 0, or an object that
// runs past the collection's end. Variable-length strings (the attributes and class
// names of a weights file) live in such collections, so every collection in the file
// ("GCOL", version 1, three zero bytes, its length) is walked here the way libhdf5's
// H5HG__cache_heap_deserialize walks it, before libhdf5 reads any of it.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && st.st_size > 0) {
      void* p = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (p != MAP_FAILED) {
        data_ = static_cast<const uint8_t*>(p);
        size_ = static_cast<size_t>(st.st_size);
      }
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Little-endian unsigned integer of `bytes` bytes (1..8).
uint64_t le(const uint8_t* p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = bytes; i-- > 0;) v = (v << 8) | p[i];
  return v;
}

void check_global_heaps(const std::string& path) {
  const MappedFile file(path);
  const uint8_t* b = file.data();
  const size_t n = file.size();
  if (!b) fail(path, "cannot read the file");
  // The size of lengths, from the superblock (at 0, 512, 1024, ...: after a user block).
  static const uint8_t kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1A, '\n'};
  size_t lengths = 0;
  for (size_t at = 0; at + 16 <= n && lengths == 0; at = at == 0 ? 512 : at * 2) {
    if (std::memcmp(b + at, kSignature, 8) != 0) continue;
    lengths = b[at + 8] <= 1 ? b[at + 14] : b[at + 10];  // versions 0-1 / 2-3
    if (lengths != 2 && lengths != 4 && lengths != 8) fail(path, "corrupt superblock (size of lengths)");
  }
  if (lengths == 0) return;  // no superblock that libhdf5 could find either
  const size_t header = 8 + lengths, object_header = 8 + lengths;
  static const uint8_t kCollection[8] = {'G', 'C', 'O', 'L', 1, 0, 0, 0};
  for (size_t at = 0; at + header <= n; ++at) {
    const void* hit = ::memmem(b + at, n - at, kCollection, sizeof(kCollection));
    if (!hit) break;
    at = static_cast<size_t>(static_cast<const uint8_t*>(hit) - b);
    if (at + header > n) break;
    const uint64_t size = le(b + at + 8, lengths);
    auto corrupt = [&](const std::string& why) {
      fail(path, "corrupt global heap at byte " + std::to_string(at) + ": " + why);
    };
    if (size < header || size > n - at) corrupt("its length " + std::to_string(size) + " does not fit the file");
    for (uint64_t q = header; q < size;) {
      if (q + object_header > size) break;  // a tail too small for an object: free space
      const uint64_t index = le(b + at + q, 2);
      const uint64_t object = le(b + at + q + 8, lengths);
      if (index > 0 && object > size) corrupt("object " + std::to_string(index) + " is larger than the heap");
      const uint64_t need = index > 0 ? object_header + ((object + 7) & ~uint64_t{7}) : object;
      if (need == 0 || need > size - q)
        corrupt("object " + std::to_string(index) + " of " + std::to_string(object) + " bytes does not fit");
      q += need;
    }
  }
}

}  // namespace

// ---- reader --------------------------------------------------------------------------

H5Reader::H5Reader(const std::string& path) : path_(path) {
  silence_hdf5();
  if (!std::filesystem::exists(path)) fail(path, "no such file");
  if (H5Fis_hdf5(path.c_str()) <= 0) fail(path, "not an HDF5 file (or truncated)");
  check_global_heaps(path);
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file_ < 0) fail(path, "cannot open as HDF5 (corrupt or truncated)");
}

H5Reader::~H5Reader() {
  if (file_ >= 0) H5Fclose(file_);
}

std::vector<std::string> H5Reader::names() const {
  std::vector<std::string> out;
  H5G_info_t info;
  if (H5Gget_info(file_, &info) < 0) fail(path_, "cannot list the root group");
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(file_, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (len < 0) fail(path_, "cannot read a link name in the root group");
    std::string name(static_cast<size_t>(len), '\0');
    H5Lget_name_by_idx(file_, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), static_cast<size_t>(len) + 1,
                       H5P_DEFAULT);
#if H5_VERSION_GE(1, 12, 0)
    H5O_info2_t oinfo;
    const herr_t rc = H5Oget_info_by_name3(file_, name.c_str(), &oinfo, H5O_INFO_BASIC, H5P_DEFAULT);
#else
    H5O_info_t oinfo;
    const herr_t rc = H5Oget_info_by_name2(file_, name.c_str(), &oinfo, H5O_INFO_BASIC, H5P_DEFAULT);
#endif
    if (rc >= 0 &&
        oinfo.type == H5O_TYPE_DATASET)
      out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool H5Reader::has(const std::string& name) const {
  return H5Lexists(file_, name.c_str(), H5P_DEFAULT) > 0;
}

Shape H5Reader::shape_of(const std::string& name) const {
  if (!has(name)) fail(path_, "missing dataset '" + name + "'");
  Handle ds(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds.id < 0) fail(path_, "cannot open dataset '" + name + "'");
  return dataset_shape(path_, name, ds.id);
}

std::string H5Reader::type_of(const std::string& name) const {
  if (!has(name)) fail(path_, "missing dataset '" + name + "'");
  Handle ds(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds.id < 0) fail(path_, "cannot open dataset '" + name + "'");
  Handle type(H5Dget_type(ds.id), H5Tclose);
  if (type.id < 0) fail(path_, "dataset '" + name + "': cannot read its type");
  const H5T_class_t cls = H5Tget_class(type.id);
  const size_t size = H5Tget_size(type.id);
  // Only IEEE floats and plain integers are converted by libhdf5 here: a float of another
  // layout (exponent and mantissa sizes of the file's choosing) or an integer with padding
  // bits is "other", and refused by every reader.
  if (cls == H5T_FLOAT) {
    for (hid_t ieee : {H5T_IEEE_F32LE, H5T_IEEE_F32BE}) if (H5Tequal(type.id, ieee) > 0) return "float32";
    for (hid_t ieee : {H5T_IEEE_F64LE, H5T_IEEE_F64BE}) if (H5Tequal(type.id, ieee) > 0) return "float64";
    return size == 2 ? "float16" : "other";
  }
  if (cls == H5T_INTEGER) {
    if ((size != 1 && size != 2 && size != 4 && size != 8) || H5Tget_precision(type.id) != size * 8 ||
        H5Tget_offset(type.id) != 0)
      return "other";
    return (H5Tget_sign(type.id) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(size * 8);
  }
  if (cls == H5T_STRING) return "string";
  return "other";
}

Tensor H5Reader::read(const std::string& name) const {
  const std::string type = type_of(name);
  if (type != "float32" && type != "float64")
    fail(path_, "dataset '" + name + "' has type " + type + ", expected float32 or float64");
  Handle ds(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
  const Shape shape = dataset_shape(path_, name, ds.id);
  check_stored_size(path_, name, ds.id, numel_of(shape));
  const DType dtype = type == "float32" ? DType::F32 : DType::F64;
  Tensor t = Tensor::empty(shape, dtype);
  const hid_t mem = dtype == DType::F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
  if (t.numel() > 0 && H5Dread(ds.id, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw_data()) < 0)
    fail(path_, "cannot read dataset '" + name + "' (truncated or corrupt file)");
  return t;
}

std::vector<int64_t> H5Reader::read_ints(const std::string& name) const {
  const std::string type = type_of(name);
  if (type.rfind("int", 0) != 0 && type.rfind("uint", 0) != 0)
    fail(path_, "dataset '" + name + "' has type " + type + ", expected integers");
  Handle ds(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
  const Shape shape = dataset_shape(path_, name, ds.id);
  check_stored_size(path_, name, ds.id, numel_of(shape));
  std::vector<int64_t> out(static_cast<size_t>(numel_of(shape)));
  if (!out.empty() && H5Dread(ds.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    fail(path_, "cannot read dataset '" + name + "' (truncated or corrupt file)");
  return out;
}

std::vector<std::string> H5Reader::read_strings(const std::string& name) const {
  if (type_of(name) != "string") fail(path_, "dataset '" + name + "' is not a list of strings");
  Handle ds(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
  const Shape shape = dataset_shape(path_, name, ds.id);
  if (shape.size() != 1) fail(path_, "dataset '" + name + "' must be one-dimensional");
  if (shape[0] > kMaxStrings) fail(path_, "dataset '" + name + "': " + std::to_string(shape[0]) + " strings is too many");
  check_stored_size(path_, name, ds.id, shape[0]);
  Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mem.id, H5T_VARIABLE);
  H5Tset_cset(mem.id, H5T_CSET_UTF8);
  std::vector<char*> raw(static_cast<size_t>(shape[0]), nullptr);
  if (!raw.empty() && H5Dread(ds.id, mem.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0)
    fail(path_, "cannot read strings of dataset '" + name + "' (variable-length UTF-8 expected)");
  std::vector<std::string> out;
  for (char* s : raw) out.emplace_back(s ? s : "");
  if (!raw.empty()) {
    Handle space(H5Dget_space(ds.id), H5Sclose);
    H5Dvlen_reclaim(mem.id, space.id, H5P_DEFAULT, raw.data());
  }
  return out;
}

bool H5Reader::has_attr(const std::string& name) const { return H5Aexists(file_, name.c_str()) > 0; }

std::string H5Reader::attr(const std::string& name) const {
  if (!has_attr(name)) fail(path_, "missing attribute '" + name + "'");
  Handle a(H5Aopen(file_, name.c_str(), H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(a.id), H5Tclose);
  Handle space(H5Aget_space(a.id), H5Sclose);
  // One string: H5Aread writes every element of the attribute's dataspace.
  if (H5Tget_class(type.id) != H5T_STRING || H5Sget_simple_extent_npoints(space.id) != 1)
    fail(path_, "attribute '" + name + "' is not one string");
  if (H5Tis_variable_str(type.id) > 0) {
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.id, H5T_VARIABLE);
    H5Tset_cset(mem.id, H5Tget_cset(type.id));
    char* s = nullptr;
    if (H5Aread(a.id, mem.id, &s) < 0) fail(path_, "cannot read attribute '" + name + "'");
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  const size_t size = H5Tget_size(type.id);
  if (size > (1u << 20)) fail(path_, "attribute '" + name + "' is too long");
  std::string out(size, '\0');
  if (H5Aread(a.id, type.id, out.data()) < 0) fail(path_, "cannot read attribute '" + name + "'");
  out.erase(std::find(out.begin(), out.end(), '\0'), out.end());
  return out;
}

int64_t H5Reader::attr_int(const std::string& name) const {
  if (!has_attr(name)) fail(path_, "missing attribute '" + name + "'");
  Handle a(H5Aopen(file_, name.c_str(), H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(a.id), H5Tclose);
  Handle space(H5Aget_space(a.id), H5Sclose);
  if (H5Tget_class(type.id) != H5T_INTEGER || H5Sget_simple_extent_npoints(space.id) != 1)
    fail(path_, "attribute '" + name + "' is not one integer");
  int64_t v = 0;
  if (H5Aread(a.id, H5T_NATIVE_INT64, &v) < 0) fail(path_, "cannot read attribute '" + name + "'");
  return v;
}

// ---- writer --------------------------------------------------------------------------

H5Writer::H5Writer(const std::string& path)
    : path_(path), tmp_(path + ".tmp-" + std::to_string(::getpid())) {
  silence_hdf5();
  file_ = H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file_ < 0) fail(path, "cannot create (is the folder writable?)");
}

H5Writer::~H5Writer() {
  if (file_ >= 0) {
    H5Fclose(file_);
    std::remove(tmp_.c_str());
  }
}

void H5Writer::write(const std::string& name, const Tensor& t) {
  const Tensor c = t.device().is_cpu() ? t : t.detach().to(Device::cpu());
  std::vector<hsize_t> dims(c.shape().begin(), c.shape().end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  const hid_t type = c.dtype() == DType::F32 ? H5T_IEEE_F32LE : H5T_IEEE_F64LE;
  const hid_t mem = c.dtype() == DType::F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
  Handle ds(H5Dcreate2(file_, name.c_str(), type, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (ds.id < 0 || H5Dwrite(ds.id, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.raw_data()) < 0)
    fail(path_, "cannot write dataset '" + name + "'");
}

void H5Writer::write_ints(const std::string& name, const std::vector<int64_t>& values, const Shape& shape) {
  const Shape s = shape.empty() ? Shape{static_cast<int64_t>(values.size())} : shape;
  ENGINE_CHECK(numel_of(s) == static_cast<int64_t>(values.size()), path_, ": dataset '", name, "': ",
               values.size(), " values for shape ", shape_str(s));
  std::vector<hsize_t> dims(s.begin(), s.end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle ds(H5Dcreate2(file_, name.c_str(), H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
            H5Dclose);
  if (ds.id < 0 || H5Dwrite(ds.id, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0)
    fail(path_, "cannot write dataset '" + name + "'");
}

void H5Writer::write_strings(const std::string& name, const std::vector<std::string>& values) {
  const hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.id, H5T_VARIABLE);
  H5Tset_cset(type.id, H5T_CSET_UTF8);
  std::vector<const char*> ptrs;
  for (const std::string& s : values) ptrs.push_back(s.c_str());
  Handle ds(H5Dcreate2(file_, name.c_str(), type.id, space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (ds.id < 0 || H5Dwrite(ds.id, type.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0)
    fail(path_, "cannot write dataset '" + name + "'");
}

void H5Writer::set_attr(const std::string& name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.id, H5T_VARIABLE);
  H5Tset_cset(type.id, H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(file_, name.c_str(), type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const char* p = value.c_str();
  if (a.id < 0 || H5Awrite(a.id, type.id, &p) < 0) fail(path_, "cannot write attribute '" + name + "'");
}

void H5Writer::set_attr(const std::string& name, int64_t value) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(file_, name.c_str(), H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (a.id < 0 || H5Awrite(a.id, H5T_NATIVE_INT64, &value) < 0) fail(path_, "cannot write attribute '" + name + "'");
}

void H5Writer::commit() {
  ENGINE_CHECK(file_ >= 0, path_, ": already committed");
  const herr_t rc = H5Fclose(file_);
  file_ = -1;
  if (rc < 0) {
    std::remove(tmp_.c_str());
    fail(path_, "cannot finish writing");
  }
  std::error_code ec;
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::remove(tmp_.c_str());
    fail(path_, "cannot move the finished file into place: " + ec.message());
  }
}

}  // namespace engine::io
