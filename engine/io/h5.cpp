#include "engine/io/h5.h"

#include <fcntl.h>
#include <hdf5.h>
#include <poll.h>
#include <signal.h>
#include <string.h>  // memmem
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <new>
#include <stdexcept>
#include <thread>

#include "engine/error.h"
#include "engine/io/h5_handle.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "h5.cpp takes values as stored in little-endian files as the host's own"
#endif

#if defined(__SANITIZE_ADDRESS__)
#define ENGINE_H5_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
#define ENGINE_H5_SANITIZED 1
#endif
#endif
#ifdef ENGINE_H5_SANITIZED
#include <sanitizer/common_interface_defs.h>
#endif

namespace engine::io {

namespace detail {

// A block of memory for large reads. From 8 MiB up it is mapped directly and asked to be
// backed by 2 MiB pages (transparent huge pages): filling 244 MB of fresh 4 KiB pages
// costs a page fault per page, most of the time of reading a file into memory; below,
// it comes from the heap (where the sanitizers watch it).
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t size) : size_(size) {
    constexpr size_t kHuge = size_t(2) << 20;
    if (size < 4 * kHuge) {
      heap_.reset(new (std::nothrow) uint8_t[size]);
      data_ = heap_.get();
      return;
    }
    // Mapped with room to start on a 2 MiB boundary, and trimmed to it.
    const size_t span = (size + kHuge - 1) / kHuge * kHuge;
    void* p = ::mmap(nullptr, span + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    auto* raw = static_cast<uint8_t*>(p);
    const size_t head = (kHuge - reinterpret_cast<uintptr_t>(raw) % kHuge) % kHuge;
    uint8_t* start = raw + head;
    if (head > 0) ::munmap(raw, head);
    ::munmap(start + span, kHuge - head);
    ::madvise(start, span, MADV_HUGEPAGE);
    data_ = start;
    mapped_ = span;
  }
  ~Buffer() {
    if (mapped_) ::munmap(data_, mapped_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer& operator=(Buffer&& o) noexcept {
    std::swap(heap_, o.heap_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(mapped_, o.mapped_);
    return *this;
  }
  uint8_t* data() const { return data_; }  // null when the memory could not be had
  size_t size() const { return size_; }

 private:
  std::unique_ptr<uint8_t[]> heap_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0, mapped_ = 0;
};

// A file's bytes, read once. libhdf5's core driver reads them in place through the
// file-image callbacks below (no copy); read-only, so libhdf5 never writes them.
struct FileImage {
  Buffer buffer;
  uint8_t* bytes() const { return buffer.data(); }
  size_t size() const { return buffer.size(); }
};

}  // namespace detail

namespace {

constexpr int kMaxRank = 8;
constexpr int64_t kMaxElements = int64_t(1) << 33;  // 32 GiB of float32: larger is not a weight file
constexpr int64_t kMaxStrings = int64_t(1) << 24;   // class names and the like
constexpr size_t kMaxAttributes = 4096;             // at the root; the engine writes five
// Stored data expands at most this much when read: deflate's limit is 1032:1. An
// unfiltered dataset's bytes must all be in the file.
constexpr int64_t kMaxFilterExpansion = 1032;
// The largest file a reader takes into memory: AlexNet's weights are 244 MB.
constexpr int64_t kMaxFileBytes = int64_t(4) << 30;
// The checking child: its time limit (plus 1 s per kChildBytesPerSecond of file) and the
// address space it may add to what it inherits (plus twice the file).
constexpr int kChildSeconds = 60;
constexpr int64_t kChildBytesPerSecond = int64_t(10) << 20;
constexpr int64_t kChildMemory = int64_t(1) << 30;

using detail::Buffer;
using detail::FileImage;
using detail::Handle;
using detail::silence_hdf5;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw Error(path + ": " + what);
}

// ---- the file's bytes, checked before libhdf5 sees them -------------------------------

std::unique_ptr<FileImage> read_whole_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    fail(path, e == ENOENT || e == ENOTDIR ? "no such file" : std::string("cannot open: ") + std::strerror(e));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path, std::string("cannot read: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  if (st.st_size > kMaxFileBytes)
    fail(path, "is " + std::to_string(st.st_size) + " bytes; HDF5 files over " +
                   std::to_string(kMaxFileBytes >> 30) + " GiB are not read");
  auto image = std::make_unique<FileImage>();
  image->buffer = Buffer(static_cast<size_t>(st.st_size));
  if (!image->bytes()) fail(path, "cannot allocate " + std::to_string(st.st_size) + " bytes to read it");
  for (size_t done = 0; done < image->size();) {
    const ssize_t n = ::pread(fd, image->bytes() + done, image->size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(path, std::string("cannot read: ") + std::strerror(errno));
    if (n == 0) fail(path, "became shorter while it was read");
    done += static_cast<size_t>(n);
  }
  return image;
}

// Little-endian unsigned integer of `bytes` bytes (1..8).
uint64_t le(const uint8_t* p, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = bytes; i-- > 0;) v = (v << 8) | p[i];
  return v;
}

// Where libhdf5 finds the superblock: its signature at byte 0, 512, 1024, 2048, ...
// (after a user block). n when there is none.
size_t superblock_at(const uint8_t* b, size_t n) {
  static const uint8_t kSignature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1A, '\n'};
  for (size_t at = 0; at + 8 <= n; at = at == 0 ? 512 : at * 2)
    if (std::memcmp(b + at, kSignature, 8) == 0) return at;
  return n;
}

// libhdf5 1.10 loops forever (or reads past its buffer) on a global heap collection
// whose object list does not tile it: a free-space entry of size 0, or an object that
// runs past the collection's end. Variable-length strings (the attributes and class
// names of a weights file) live in such collections, so every collection in the file
// ("GCOL", version 1, three zero bytes, its length) is walked here the way libhdf5's
// H5HG__cache_heap_deserialize walks it, before libhdf5 reads any of it. The loop would
// also end in the checking child's time limit; refused here, it costs nothing and gets
// a precise message.
void check_global_heaps(const std::string& path, const FileImage& image) {
  const uint8_t* b = image.bytes();
  const size_t n = image.size();
  // The size of lengths, from the superblock.
  const size_t super = superblock_at(b, n);
  if (super + 16 > n) return;  // nothing libhdf5 could open either
  const size_t lengths = b[super + 8] <= 1 ? b[super + 14] : b[super + 10];  // versions 0-1 / 2-3
  if (lengths != 2 && lengths != 4 && lengths != 8) fail(path, "corrupt superblock (size of lengths)");
  const size_t header = 8 + lengths, object_header = 8 + lengths;
  // libhdf5 ignores the three reserved bytes after the version, so a collection is looked
  // for by its first five bytes. Five bytes turn up by chance in about one random 244 MB
  // file in 5,000, so where the reserved bytes are not all zero, a length that does not
  // fit the file means random bytes (libhdf5 could not read such a collection either: it
  // refuses a file shorter than its superblock says) and is passed over; a length that
  // fits (another 2^-36 by chance) is walked.
  static const uint8_t kCollection[5] = {'G', 'C', 'O', 'L', 1};
  for (size_t at = 0; at + header <= n; ++at) {
    const void* hit = ::memmem(b + at, n - at, kCollection, sizeof(kCollection));
    if (!hit) break;
    at = static_cast<size_t>(static_cast<const uint8_t*>(hit) - b);
    if (at + header > n) break;
    const bool reserved_zero = b[at + 5] == 0 && b[at + 6] == 0 && b[at + 7] == 0;
    const uint64_t size = le(b + at + 8, lengths);
    auto corrupt = [&](const std::string& why) {
      fail(path, "corrupt global heap at byte " + std::to_string(at) + ": " + why);
    };
    if (size < header || size > n - at) {
      if (!reserved_zero) continue;
      corrupt("its length " + std::to_string(size) + " does not fit the file");
    }
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

// ---- opening the image ------------------------------------------------------------------

// File-image callbacks that hand libhdf5 the image itself instead of copies: every
// "allocation" is the image, every "copy" is onto itself, nothing is freed (the reader
// owns the bytes) and nothing grows (the file is opened read-only).
void* image_malloc(size_t size, H5FD_file_image_op_t, void* udata) {
  auto* image = static_cast<FileImage*>(udata);
  return size <= image->size() ? image->bytes() : nullptr;
}
void* image_memcpy(void* dest, const void* src, size_t, H5FD_file_image_op_t, void*) {
  return dest == src ? dest : nullptr;
}
void* image_realloc(void*, size_t, H5FD_file_image_op_t, void*) { return nullptr; }
herr_t image_free(void*, H5FD_file_image_op_t, void*) { return 0; }
void* image_udata_copy(void* udata) { return udata; }
herr_t image_udata_free(void*) { return 0; }

// The image opened read-only through the core driver; < 0 when libhdf5 cannot open it.
// The name is only libhdf5's key for "is this file already open": unique per open, and
// one that no file system holds (a component longer than NAME_MAX), since the core
// driver refuses an image whose name exists as a file.
hid_t open_image(FileImage& image) {
  static uint64_t opened = 0;
  const std::string name = "/" + std::string(NAME_MAX + 1, 'i') + "/" + std::to_string(++opened);
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5FD_file_image_callbacks_t callbacks = {image_malloc, image_memcpy,     image_realloc, image_free,
                                           image_udata_copy, image_udata_free, &image};
  if (fapl.id < 0 || H5Pset_fapl_core(fapl.id, 1 << 16, false) < 0 ||
      H5Pset_file_image_callbacks(fapl.id, &callbacks) < 0 ||
      H5Pset_file_image(fapl.id, image.bytes(), image.size()) < 0)
    return -1;
  return H5Fopen(name.c_str(), H5F_ACC_RDONLY, fapl.id);
}

// ---- the reads (read_contents below makes each for every name) ------------------------

// One open file: its handle, its path (for messages), its bytes and their number.
struct Source {
  hid_t file;
  const std::string& path;
  const uint8_t* image;
  int64_t bytes;
};

Source source_of(hid_t file, const std::string& path, const FileImage& image) {
  return Source{file, path, image.bytes(), static_cast<int64_t>(image.size())};
}

bool link_exists(const Source& f, const std::string& name) { return H5Lexists(f.file, name.c_str(), H5P_DEFAULT) > 0; }

bool attribute_exists(const Source& f, const std::string& name) { return H5Aexists(f.file, name.c_str()) > 0; }

// Whether the object a hard link at the root names is a dataset (not a group or a type).
bool is_dataset(const Source& f, const std::string& name) {
#if H5_VERSION_GE(1, 12, 0)
  H5O_info2_t info;
  const herr_t rc = H5Oget_info_by_name3(f.file, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT);
#else
  H5O_info_t info;
  const herr_t rc = H5Oget_info_by_name2(f.file, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT);
#endif
  return rc >= 0 && info.type == H5O_TYPE_DATASET;
}

// A root dataset reached by a hard link and keeping its data in this file. A soft or
// external link, external storage or a virtual dataset would make libhdf5 read other
// files, which nothing has checked. The caller closes the handle.
hid_t open_dataset(const Source& f, const std::string& name) {
  if (!link_exists(f, name)) fail(f.path, "missing dataset '" + name + "'");
  H5L_info_t link;
  if (H5Lget_info(f.file, name.c_str(), &link, H5P_DEFAULT) < 0)
    fail(f.path, "cannot read the link to dataset '" + name + "'");
  if (link.type != H5L_TYPE_HARD) fail(f.path, "dataset '" + name + "' is a soft or external link (not supported)");
  if (!is_dataset(f, name)) fail(f.path, "'" + name + "' is not a dataset");
  Handle ds(H5Dopen2(f.file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (ds.id < 0) fail(f.path, "cannot open dataset '" + name + "'");
  Handle dcpl(H5Dget_create_plist(ds.id), H5Pclose);
  if (dcpl.id < 0) fail(f.path, "dataset '" + name + "': cannot read its layout");
  if (H5Pget_layout(dcpl.id) == H5D_VIRTUAL || H5Pget_external_count(dcpl.id) != 0)
    fail(f.path, "dataset '" + name + "' keeps its data in other files (virtual or external storage; not supported)");
  const hid_t id = ds.id;
  ds.id = -1;
  return id;
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
void check_stored_size(const Source& f, const std::string& name, hid_t ds, int64_t elements) {
  Handle type(H5Dget_type(ds), H5Tclose);
  Handle dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (type.id < 0 || dcpl.id < 0) fail(f.path, "dataset '" + name + "': cannot read its type or layout");
  const int filters = H5Pget_nfilters(dcpl.id);
  const size_t element = H5Tget_size(type.id);
  if (filters < 0 || element == 0) fail(f.path, "dataset '" + name + "': cannot read its layout");
  const int64_t limit = f.bytes * (filters > 0 ? kMaxFilterExpansion : 1);
  if (elements > limit / static_cast<int64_t>(element))
    fail(f.path, "dataset '" + name + "': claims " + std::to_string(elements) + " elements of " +
                     std::to_string(element) + " bytes, more than the file (" + std::to_string(f.bytes) +
                     " bytes) can hold (truncated or corrupt file)");
}

// Every link at the root (`links`), and those that are hard links to datasets, sorted
// (`datasets`: a soft or external link is not followed, it could leave the file).
void list_root(const Source& f, std::vector<std::string>* links, std::vector<std::string>* datasets) {
  H5G_info_t info;
  if (H5Gget_info(f.file, &info) < 0) fail(f.path, "cannot list the root group");
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(f.file, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (len < 0) fail(f.path, "cannot read a link name in the root group");
    std::string name(static_cast<size_t>(len), '\0');
    if (H5Lget_name_by_idx(f.file, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), static_cast<size_t>(len) + 1,
                           H5P_DEFAULT) < 0)
      fail(f.path, "cannot read a link name in the root group");
    links->push_back(name);
    H5L_info_t link;
    if (H5Lget_info(f.file, name.c_str(), &link, H5P_DEFAULT) < 0)
      fail(f.path, "cannot read the link to '" + name + "'");
    if (link.type == H5L_TYPE_HARD && is_dataset(f, name)) datasets->push_back(name);
  }
  std::sort(datasets->begin(), datasets->end());
}

std::vector<std::string> attribute_names(const Source& f) {
  std::vector<std::string> out;
  const H5A_operator2_t collect = [](hid_t, const char* name, const H5A_info_t*, void* op) -> herr_t {
    auto* names = static_cast<std::vector<std::string>*>(op);
    if (names->size() >= kMaxAttributes) return 1;  // stop; refused below
    try {
      names->emplace_back(name);
    } catch (...) {
      return -1;  // nothing may unwind through libhdf5
    }
    return 0;
  };
  if (H5Aiterate2(f.file, H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, collect, &out) < 0)
    fail(f.path, "cannot list the attributes of the root group");
  if (out.size() >= kMaxAttributes) fail(f.path, "the root group has too many attributes");
  return out;
}

Shape shape_of(const Source& f, const std::string& name) {
  Handle ds(open_dataset(f, name), H5Dclose);
  return dataset_shape(f.path, name, ds.id);
}

std::string type_of(const Source& f, const std::string& name) {
  Handle ds(open_dataset(f, name), H5Dclose);
  Handle type(H5Dget_type(ds.id), H5Tclose);
  if (type.id < 0) fail(f.path, "dataset '" + name + "': cannot read its type");
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

bool is_integer_type(const std::string& type) { return type.rfind("int", 0) == 0 || type.rfind("uint", 0) == 0; }

// A dataset's values exactly as stored (an IEEE float or a plain integer: type_of), into
// `out`, which holds numel * the stored size. The memory type is the stored type, so
// libhdf5 copies the bytes and converts nothing: its conversions from a byte order or size
// other than the machine's go bit by bit, and a small compressed file can hold millions
// of values. The caller swaps and widens them.
struct Stored {
  size_t size = 0;
  bool big_endian = false, is_signed = false;
};
Stored read_stored(const Source& f, const std::string& name, hid_t ds, void* out) {
  Handle type(H5Dget_type(ds), H5Tclose);
  if (type.id < 0) fail(f.path, "dataset '" + name + "': cannot read its type");
  Stored s;
  s.size = H5Tget_size(type.id);
  const H5T_order_t order = H5Tget_order(type.id);
  if (s.size == 0 || s.size > 8 || (order != H5T_ORDER_LE && order != H5T_ORDER_BE))
    fail(f.path, "dataset '" + name + "': cannot read its type");
  s.big_endian = order == H5T_ORDER_BE && s.size > 1;
  s.is_signed = H5Tget_class(type.id) == H5T_INTEGER && H5Tget_sign(type.id) == H5T_SGN_2;
  if (H5Dread(ds, type.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    fail(f.path, "cannot read dataset '" + name + "' (truncated or corrupt file)");
  return s;
}

// Reverses the bytes of each of `n` values of `size` bytes.
void byte_swap(uint8_t* p, int64_t n, size_t size) {
  for (int64_t i = 0; i < n; ++i, p += size) std::reverse(p, p + size);
}

// A float dataset's values, as float32 or float64 as stored, into the buffer that
// `destination(shape, dtype)` returns (its size checked against the file first).
void read_floats(const Source& f, const std::string& name,
                 const std::function<void*(const Shape&, DType)>& destination) {
  const std::string type = type_of(f, name);
  if (type != "float32" && type != "float64")
    fail(f.path, "dataset '" + name + "' has type " + type + ", expected float32 or float64");
  Handle ds(open_dataset(f, name), H5Dclose);
  const Shape shape = dataset_shape(f.path, name, ds.id);
  check_stored_size(f, name, ds.id, numel_of(shape));
  const DType dtype = type == "float32" ? DType::F32 : DType::F64;
  void* out = destination(shape, dtype);
  const int64_t n = numel_of(shape);
  if (n == 0) return;
  const Stored stored = read_stored(f, name, ds.id, out);
  if (stored.big_endian) byte_swap(static_cast<uint8_t*>(out), n, stored.size);
}

std::vector<int64_t> read_ints(const Source& f, const std::string& name) {
  const std::string type = type_of(f, name);
  if (!is_integer_type(type)) fail(f.path, "dataset '" + name + "' has type " + type + ", expected integers");
  Handle ds(open_dataset(f, name), H5Dclose);
  const Shape shape = dataset_shape(f.path, name, ds.id);
  check_stored_size(f, name, ds.id, numel_of(shape));
  const size_t n = static_cast<size_t>(numel_of(shape));
  std::vector<int64_t> out(n);
  if (n == 0) return out;
  // As stored (1 to 8 bytes each), then widened here: in place, from the last value down,
  // so that no value is overwritten before it is read.
  const Stored stored = read_stored(f, name, ds.id, out.data());
  auto* bytes = reinterpret_cast<uint8_t*>(out.data());
  if (stored.big_endian) byte_swap(bytes, static_cast<int64_t>(n), stored.size);
  const int shift = 64 - static_cast<int>(stored.size * 8);
  for (size_t i = n; i-- > 0;) {
    uint64_t u = 0;
    std::memcpy(&u, bytes + i * stored.size, stored.size);  // little-endian: the low bytes
    if (stored.is_signed) {
      out[i] = static_cast<int64_t>(u << shift) >> shift;
    } else {
      // libhdf5's own conversion clamps an unsigned value above the int64 range to its maximum.
      constexpr auto kMax = std::numeric_limits<int64_t>::max();
      out[i] = u > static_cast<uint64_t>(kMax) ? kMax : static_cast<int64_t>(u);
    }
  }
  return out;
}

// libhdf5 1.10 allocates (and clears) as many bytes as a variable-length string's stored
// length says before it looks the string up in its heap: a few corrupt bytes cost
// gigabytes. Where the strings are stored contiguously in the file without a user block
// (as the engine and h5py write them), each one's stored length (the first 4 bytes of its
// entry: the length, then the heap collection's address and the object's index) is
// checked here against the file's size first; a string cannot be longer than the file
// that holds it. Any other layout is left to libhdf5 (and the child's limits).
void check_string_lengths(const Source& f, const std::string& name, hid_t ds, int64_t count) {
  if (count <= 0 || superblock_at(f.image, static_cast<size_t>(f.bytes)) != 0 || f.bytes < 16) return;
  const size_t offsets = f.image[8] <= 1 ? f.image[13] : f.image[9];  // superblock versions 0-1 / 2-3
  if (offsets != 2 && offsets != 4 && offsets != 8) return;
  const uint64_t entry = 4 + offsets + 4;
  Handle dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (dcpl.id < 0 || H5Pget_layout(dcpl.id) != H5D_CONTIGUOUS || H5Pget_nfilters(dcpl.id) != 0) return;
  const haddr_t at = H5Dget_offset(ds);
  const uint64_t bytes = static_cast<uint64_t>(count) * entry;
  // Whatever size the layout states (a corrupt one may say 0), libhdf5 reads the entries
  // from this address: a valid file has them all there.
  if (at == HADDR_UNDEF || at > static_cast<uint64_t>(f.bytes) || bytes > static_cast<uint64_t>(f.bytes) - at) return;
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t length = le(f.image + at + static_cast<uint64_t>(i) * entry, 4);
    if (length > static_cast<uint64_t>(f.bytes))
      fail(f.path, "dataset '" + name + "': string " + std::to_string(i) + " claims " + std::to_string(length) +
                       " bytes, more than the file holds (corrupt file)");
  }
}

std::vector<std::string> read_strings(const Source& f, const std::string& name) {
  if (type_of(f, name) != "string") fail(f.path, "dataset '" + name + "' is not a list of strings");
  Handle ds(open_dataset(f, name), H5Dclose);
  const Shape shape = dataset_shape(f.path, name, ds.id);
  if (shape.size() != 1) fail(f.path, "dataset '" + name + "' must be one-dimensional");
  if (shape[0] > kMaxStrings)
    fail(f.path, "dataset '" + name + "': " + std::to_string(shape[0]) + " strings is too many");
  check_stored_size(f, name, ds.id, shape[0]);
  Handle stored(H5Dget_type(ds.id), H5Tclose);
  if (stored.id < 0 || H5Tis_variable_str(stored.id) <= 0)
    fail(f.path, "dataset '" + name + "' holds fixed-length strings (variable-length UTF-8 expected)");
  const H5T_cset_t cset = H5Tget_cset(stored.id);
  if (cset != H5T_CSET_UTF8 && cset != H5T_CSET_ASCII)
    fail(f.path, "dataset '" + name + "' holds strings of an unknown character set (variable-length UTF-8 expected)");
  // The stored type itself (in memory): libhdf5 then copies each string's bytes. Another
  // memory type makes it convert every character of every string through its generic,
  // bit-by-bit integer conversion, which the string's stored type chooses.
  Handle mem(H5Tcopy(stored.id), H5Tclose);
  if (mem.id < 0) fail(f.path, "dataset '" + name + "': cannot read its type");
  check_string_lengths(f, name, ds.id, shape[0]);
  std::vector<char*> raw(static_cast<size_t>(shape[0]), nullptr);
  if (!raw.empty() && H5Dread(ds.id, mem.id, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) < 0)
    fail(f.path, "cannot read strings of dataset '" + name + "' (variable-length UTF-8 expected)");
  std::vector<std::string> out;
  for (char* s : raw) out.emplace_back(s ? s : "");
  if (!raw.empty()) {
    Handle space(H5Dget_space(ds.id), H5Sclose);
    H5Dvlen_reclaim(mem.id, space.id, H5P_DEFAULT, raw.data());
  }
  return out;
}

std::string attr_string(const Source& f, const std::string& name) {
  if (!attribute_exists(f, name)) fail(f.path, "missing attribute '" + name + "'");
  Handle a(H5Aopen(f.file, name.c_str(), H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(a.id), H5Tclose);
  Handle space(H5Aget_space(a.id), H5Sclose);
  // One string: H5Aread writes every element of the attribute's dataspace.
  if (H5Tget_class(type.id) != H5T_STRING || H5Sget_simple_extent_npoints(space.id) != 1)
    fail(f.path, "attribute '" + name + "' is not one string");
  if (H5Tis_variable_str(type.id) > 0) {
    Handle mem(H5Tcopy(type.id), H5Tclose);  // as stored: copied, not converted (read_strings)
    if (mem.id < 0) fail(f.path, "cannot read attribute '" + name + "'");
    char* s = nullptr;
    if (H5Aread(a.id, mem.id, &s) < 0) fail(f.path, "cannot read attribute '" + name + "'");
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  const size_t size = H5Tget_size(type.id);
  if (size > (1u << 20)) fail(f.path, "attribute '" + name + "' is too long");
  std::string out(size, '\0');
  if (H5Aread(a.id, type.id, out.data()) < 0) fail(f.path, "cannot read attribute '" + name + "'");
  out.erase(std::find(out.begin(), out.end(), '\0'), out.end());
  return out;
}

int64_t attr_int(const Source& f, const std::string& name) {
  if (!attribute_exists(f, name)) fail(f.path, "missing attribute '" + name + "'");
  Handle a(H5Aopen(f.file, name.c_str(), H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(a.id), H5Tclose);
  Handle space(H5Aget_space(a.id), H5Sclose);
  if (H5Tget_class(type.id) != H5T_INTEGER || H5Sget_simple_extent_npoints(space.id) != 1)
    fail(f.path, "attribute '" + name + "' is not one integer");
  int64_t v = 0;
  if (H5Aread(a.id, H5T_NATIVE_INT64, &v) < 0) fail(f.path, "cannot read attribute '" + name + "'");
  return v;
}

// ---- what a file holds, read once --------------------------------------------------

// Set whenever a libhdf5 call fails while read_contents runs (H5Eset_auto2 calls this
// where libhdf5 would have printed its error stack).
bool hdf5_failed = false;
herr_t note_hdf5_failure(hid_t, void*) {
  hdf5_failed = true;
  return 0;
}

// libhdf5 reports to note_hdf5_failure while this lives; silent again afterwards.
struct WatchHdf5Failures {
  WatchHdf5Failures() {
    hdf5_failed = false;
    H5Eset_auto2(H5E_DEFAULT, note_hdf5_failure, nullptr);
  }
  ~WatchHdf5Failures() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

// Appends bytes to a file at `*end` (the values file below), advancing `*end`.
void append(int fd, const void* data, size_t bytes, uint64_t* end) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t done = 0; done < bytes;) {
    const ssize_t n = ::pwrite(fd, p + done, bytes - done, static_cast<off_t>(*end + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error(std::string("cannot keep the values read: ") + std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  *end += bytes;
}

}  // namespace

namespace detail {

// Every answer an H5Reader gives, for every name in its file: the value a method returns
// or the message of the error it throws. Taken once by read_contents (in the checking
// child, or in this process with ENGINE_H5_ISOLATION=0); the reader answers from it and
// never calls libhdf5 again. Values (floats and integers) are in a separate file
// (`values`, at the offsets recorded here), strings here.
struct FileContents {
  struct Dataset {
    std::string shape_error, type_error, floats_error, ints_error, strings_error;
    Shape shape;
    std::string type;
    Shape floats_shape;  // read(): the shape and dtype of the values at floats_at
    DType floats_dtype = DType::F32;
    uint64_t floats_at = 0, floats_bytes = 0;
    uint64_t floats_in_image = 0;  // 1: floats_at is an offset in the file's image, not in `values`
    uint64_t ints_at = 0, ints_count = 0;  // read_ints(): int64 values
    std::vector<std::string> strings;      // read_strings()
  };
  struct Attribute {
    std::string text, text_error, number_error;
    int64_t number = 0;
  };
  std::vector<std::string> datasets;             // names()
  std::map<std::string, Dataset> links;          // every link at the root: has(), shape_of(), ...
  std::map<std::string, Attribute> attributes;   // every root attribute
  // The values file, mapped read-only, and the file's image (where most float values are
  // already, as stored: see read_contents).
  const uint8_t* values = nullptr;
  size_t values_size = 0;
  std::unique_ptr<FileImage> image;
  FileContents() = default;
  FileContents(const FileContents&) = delete;
  FileContents& operator=(const FileContents&) = delete;
  ~FileContents() {
    if (values) ::munmap(const_cast<uint8_t*>(values), values_size);
  }
};

}  // namespace detail

namespace {

using detail::FileContents;

// Where a dataset's values lie in the file's image exactly as libhdf5 returned them
// (`values`, `bytes` long), or kNotStored. True of an unfiltered contiguous dataset
// stored in the machine's own format (float32 or float64, little-endian here), which is
// what the engine and h5py write: then the reader copies the values from the image and
// nothing else has to carry them. The comparison with what libhdf5 returned is the proof.
constexpr uint64_t kNotStored = ~uint64_t{0};
uint64_t stored_at(const Source& f, const std::string& name, const void* values, uint64_t bytes) {
  if (bytes == 0) return kNotStored;
  Handle ds(open_dataset(f, name), H5Dclose);
  Handle dcpl(H5Dget_create_plist(ds.id), H5Pclose);
  if (dcpl.id < 0 || H5Pget_layout(dcpl.id) != H5D_CONTIGUOUS || H5Pget_nfilters(dcpl.id) != 0) return kNotStored;
  const haddr_t at = H5Dget_offset(ds.id);
  if (at == HADDR_UNDEF || at > static_cast<uint64_t>(f.bytes) || bytes > static_cast<uint64_t>(f.bytes) - at)
    return kNotStored;
  return std::memcmp(f.image + at, values, bytes) == 0 ? at : kNotStored;
}

// Reads everything H5Reader's methods can return, as they return it: for every link at
// the root shape_of, type_of, read, read_ints and read_strings, for every root attribute
// attr and attr_int, each value or the message of its error; values go to `values_fd`.
// The file is refused (this throws) when libhdf5 fails on any of it: a part of the file
// that libhdf5 cannot read is corrupt, and libhdf5's error paths are where it leaks and
// worse. An engine error with no libhdf5 failure behind it (a dataset of another type or
// rank than a method takes, an attribute that is not one string) is that method's answer
// for that name, given to whoever asks.
void read_contents(const Source& f, int values_fd, FileContents* contents) {
  const WatchHdf5Failures watch;
  FileContents& c = *contents;
  uint64_t end = 0;
  auto corrupt_if_failed = [&](const std::string& what) {
    if (hdf5_failed) fail(f.path, "corrupt HDF5 file (the HDF5 library failed to read " + what + ")");
  };
  // One method's answer: its error message, unless libhdf5 failed on the way.
  auto answer = [&](const std::string& what, std::string* error, const std::function<void()>& read) {
    try {
      read();
    } catch (const Error& e) {
      if (hdf5_failed) throw;
      *error = e.what();
    }
    corrupt_if_failed(what);
  };
  std::vector<std::string> links;
  list_root(f, &links, &c.datasets);
  corrupt_if_failed("the root group");
  const std::vector<std::string> attributes = attribute_names(f);
  corrupt_if_failed("the root group's attributes");
  for (const std::string& name : attributes) {
    FileContents::Attribute& a = c.attributes[name];
    const std::string what = "attribute '" + name + "'";
    answer(what, &a.text_error, [&] { a.text = attr_string(f, name); });
    answer(what, &a.number_error, [&] { a.number = attr_int(f, name); });
  }
  Buffer scratch;  // the values of one dataset after another, on their way to values_fd
  for (const std::string& name : links) {
    FileContents::Dataset& d = c.links[name];
    const std::string what = "dataset '" + name + "'";
    answer(what, &d.shape_error, [&] { d.shape = shape_of(f, name); });
    answer(what, &d.type_error, [&] { d.type = type_of(f, name); });
    answer(what, &d.floats_error, [&] {
      read_floats(f, name, [&](const Shape& shape, DType dtype) -> void* {
        d.floats_shape = shape;
        d.floats_dtype = dtype;
        d.floats_bytes = static_cast<uint64_t>(numel_of(shape)) * (dtype == DType::F32 ? 4 : 8);
        if (d.floats_bytes > scratch.size() || !scratch.data()) scratch = Buffer(std::max<uint64_t>(d.floats_bytes, 1));
        if (!scratch.data()) throw std::bad_alloc();
        return scratch.data();
      });
      const uint64_t stored = stored_at(f, name, scratch.data(), d.floats_bytes);
      d.floats_in_image = stored != kNotStored;
      d.floats_at = d.floats_in_image ? stored : end;
      if (!d.floats_in_image) append(values_fd, scratch.data(), d.floats_bytes, &end);
    });
    answer(what, &d.ints_error, [&] {
      const std::vector<int64_t> v = read_ints(f, name);
      d.ints_at = end;
      d.ints_count = v.size();
      append(values_fd, v.data(), v.size() * sizeof(int64_t), &end);
    });
    answer(what, &d.strings_error, [&] { d.strings = read_strings(f, name); });
  }
  // Lookups of names that are not there, after everything else was read.
  const std::string absent = "\x7f no such name";
  link_exists(f, absent);
  attribute_exists(f, absent);
  corrupt_if_failed("the root group");
}

// ---- the contents on their way from the child ------------------------------------------

class Serializer {
 public:
  void u64(uint64_t v) { out_.append(reinterpret_cast<const char*>(&v), sizeof(v)); }
  void str(const std::string& s) {
    u64(s.size());
    out_ += s;
  }
  void shape(const Shape& s) {
    u64(s.size());
    for (int64_t d : s) u64(static_cast<uint64_t>(d));
  }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

// Reads what Serializer wrote; every length is checked against what is left, so a
// malformed report (a child that went wrong in a way that still exited cleanly) is an
// error, never a read out of bounds.
class Deserializer {
 public:
  Deserializer(const uint8_t* p, size_t n, const std::string& path) : p_(p), n_(n), path_(path) {}
  uint64_t u64() {
    need(sizeof(uint64_t));
    uint64_t v;
    std::memcpy(&v, p_, sizeof(v));
    p_ += sizeof(v);
    n_ -= sizeof(v);
    return v;
  }
  std::string str() {
    const uint64_t len = u64();
    need(len);
    std::string s(reinterpret_cast<const char*>(p_), static_cast<size_t>(len));
    p_ += len;
    n_ -= static_cast<size_t>(len);
    return s;
  }
  Shape shape() {
    const uint64_t rank = u64();
    if (rank > static_cast<uint64_t>(kMaxRank)) bad();
    Shape s;
    for (uint64_t i = 0; i < rank; ++i) s.push_back(static_cast<int64_t>(u64()));
    return s;
  }
  uint64_t count() {  // a number of entries, each at least 8 bytes
    const uint64_t n = u64();
    if (n > n_ / 8) bad();
    return n;
  }
  bool done() const { return n_ == 0; }
  [[noreturn]] void bad() const { fail(path_, "corrupt HDF5 file (the process that read it reported nonsense)"); }

 private:
  void need(uint64_t bytes) const {
    if (bytes > n_) bad();
  }
  const uint8_t* p_;
  size_t n_;
  const std::string& path_;
};

std::string serialize(const FileContents& c) {
  Serializer w;
  w.u64(c.datasets.size());
  for (const std::string& n : c.datasets) w.str(n);
  w.u64(c.links.size());
  for (const auto& [name, d] : c.links) {
    w.str(name);
    for (const std::string* e : {&d.shape_error, &d.type_error, &d.floats_error, &d.ints_error, &d.strings_error})
      w.str(*e);
    w.shape(d.shape);
    w.str(d.type);
    w.shape(d.floats_shape);
    w.u64(d.floats_dtype == DType::F32 ? 4 : 8);
    for (uint64_t v : {d.floats_at, d.floats_bytes, d.floats_in_image, d.ints_at, d.ints_count}) w.u64(v);
    w.u64(d.strings.size());
    for (const std::string& s : d.strings) w.str(s);
  }
  w.u64(c.attributes.size());
  for (const auto& [name, a] : c.attributes) {
    for (const std::string* s : {&name, &a.text, &a.text_error, &a.number_error}) w.str(*s);
    w.u64(static_cast<uint64_t>(a.number));
  }
  return w.bytes();
}

void deserialize(Deserializer& r, FileContents* c) {
  for (uint64_t i = 0, n = r.count(); i < n; ++i) c->datasets.push_back(r.str());
  for (uint64_t i = 0, n = r.count(); i < n; ++i) {
    FileContents::Dataset& d = c->links[r.str()];
    for (std::string* e : {&d.shape_error, &d.type_error, &d.floats_error, &d.ints_error, &d.strings_error})
      *e = r.str();
    d.shape = r.shape();
    d.type = r.str();
    d.floats_shape = r.shape();
    d.floats_dtype = r.u64() == 4 ? DType::F32 : DType::F64;
    for (uint64_t* v : {&d.floats_at, &d.floats_bytes, &d.floats_in_image, &d.ints_at, &d.ints_count}) *v = r.u64();
    for (uint64_t k = 0, m = r.count(); k < m; ++k) d.strings.push_back(r.str());
  }
  for (uint64_t i = 0, n = r.count(); i < n; ++i) {
    FileContents::Attribute& a = c->attributes[r.str()];
    a.text = r.str();
    a.text_error = r.str();
    a.number_error = r.str();
    a.number = static_cast<int64_t>(r.u64());
  }
  if (!r.done()) r.bad();
}

// A file of `size` bytes mapped read-only (null for an empty one).
const uint8_t* map_values(const std::string& path, int fd, size_t size) {
  if (size == 0) return nullptr;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) fail(path, std::string("cannot map the values read: ") + std::strerror(errno));
  return static_cast<const uint8_t*>(p);
}

// A memory file for the values read (memfd: it lives in memory, and the child shares it).
int values_file(const std::string& path) {
  const int fd = ::memfd_create("engine-h5-values", MFD_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot make a memory file for its values: ") + std::strerror(errno));
  return fd;
}

struct FdCloser {
  int fd;
  ~FdCloser() { ::close(fd); }
};

// ---- the checking child ---------------------------------------------------------------

bool isolation_enabled() {
  const char* v = std::getenv("ENGINE_H5_ISOLATION");
  return !(v && std::strcmp(v, "0") == 0);
}

// The child's time limit: kChildSeconds plus 1 s per kChildBytesPerSecond of file, or
// ENGINE_H5_TIME_LIMIT seconds when set (0 refuses every file: a test of that path).
int child_seconds(const FileImage& image) {
  if (const char* v = std::getenv("ENGINE_H5_TIME_LIMIT")) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (end != v && *end == '\0' && n >= 0 && n <= 86400) return static_cast<int>(n);
  }
  return kChildSeconds + static_cast<int>(static_cast<int64_t>(image.size()) / kChildBytesPerSecond);
}

std::string signal_name(int sig) {
  static const std::pair<int, const char*> kNames[] = {
      {SIGSEGV, "SIGSEGV"}, {SIGBUS, "SIGBUS"}, {SIGILL, "SIGILL"},   {SIGFPE, "SIGFPE"},   {SIGABRT, "SIGABRT"},
      {SIGKILL, "SIGKILL"}, {SIGXCPU, "SIGXCPU"}, {SIGTRAP, "SIGTRAP"}, {SIGSYS, "SIGSYS"}, {SIGTERM, "SIGTERM"}};
  for (const auto& [s, name] : kNames)
    if (s == sig) return std::string("killed by ") + name;
  return "killed by signal " + std::to_string(sig);
}

// Lowers a resource's soft limit to `value` (never above the hard limit).
void lower_limit(int resource, rlim_t value) {
  struct rlimit r {};
  if (::getrlimit(resource, &r) != 0) return;
  if (r.rlim_max != RLIM_INFINITY) value = std::min(value, r.rlim_max);
  if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur <= value) return;
  r.rlim_cur = value;
  ::setrlimit(resource, &r);
}

// This process's address space in bytes (0 when /proc cannot tell).
uint64_t address_space_bytes() {
  const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char text[64] = {};
  const ssize_t n = ::read(fd, text, sizeof(text) - 1);
  ::close(fd);
  if (n <= 0) return 0;
  return std::strtoull(text, nullptr, 10) * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

// The child's setting up: default signal handling (a crash ends it with its signal, and
// no handler of the host program, a fuzzer's for instance, runs here), death with the
// parent, output to /dev/null (libhdf5's or a sanitizer's report is not the user's
// message), no core file, and limits on CPU time and on the address space it may add.
void isolate_child(pid_t parent, const FileImage& image, int seconds) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int s = 1; s < NSIG; ++s)
    if (s != SIGKILL && s != SIGSTOP) ::sigaction(s, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(3);
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, STDOUT_FILENO);
    ::dup2(null, STDERR_FILENO);
  }
#ifdef ENGINE_H5_SANITIZED
  __sanitizer_set_death_callback(nullptr);  // a sanitizer report ends the child, nothing more
#endif
  lower_limit(RLIMIT_CORE, 0);
  lower_limit(RLIMIT_CPU, static_cast<rlim_t>(std::max(seconds, 1)));
  if (const uint64_t now = address_space_bytes())
    lower_limit(RLIMIT_AS, static_cast<rlim_t>(now + kChildMemory + 2 * image.size()));
}

void write_all(int fd, const std::string& s) {
  for (size_t done = 0; done < s.size();) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

// The child: opens the image, reads its contents (values into `values_fd`, the rest
// after them), reports on the pipe and exits; it never returns or throws into the
// caller's code. "K" with the offset and size of the serialized contents, status 0: the
// file read cleanly. "E" and the message, status 1: an engine error that makes the file
// unusable. Anything else (a signal, a sanitizer's exit, no report) is a failure inside
// libhdf5.
[[noreturn]] void run_child(const std::string& path, FileImage& image, int report, int values_fd, pid_t parent,
                            int seconds) {
  std::string message;
  int status = 2;
  try {
    isolate_child(parent, image, seconds);
    const hid_t file = open_image(image);
    if (file < 0) fail(path, "cannot open as HDF5 (corrupt or truncated)");
    FileContents contents;
    read_contents(source_of(file, path, image), values_fd, &contents);
    const std::string serialized = serialize(contents);
    struct stat st {};
    if (::fstat(values_fd, &st) != 0) throw std::runtime_error("cannot keep the values read");
    uint64_t at = (static_cast<uint64_t>(st.st_size) + 63) / 64 * 64, end = at;
    append(values_fd, serialized.data(), serialized.size(), &end);
    const uint64_t size = serialized.size();
    message = "K";
    message.append(reinterpret_cast<const char*>(&at), sizeof(at));
    message.append(reinterpret_cast<const char*>(&size), sizeof(size));
    status = 0;
  } catch (const Error& e) {
    message = std::string("E") + e.what();
    status = 1;
  } catch (const std::bad_alloc&) {
    message = "E" + path + ": corrupt HDF5 file (reading it needed more memory than the file can justify)";
    status = 1;
  } catch (const std::exception& e) {
    message = "E" + path + ": " + e.what();
    status = 1;
  } catch (...) {
  }
  write_all(report, message);
  ::_exit(status);
}

// Waits for the child until `deadline`; false when it had not ended by then.
bool wait_child(const std::string& path, pid_t pid, int* status, std::chrono::steady_clock::time_point deadline) {
  for (auto pause = std::chrono::microseconds(100);; pause = std::min(pause * 2, std::chrono::microseconds(10000))) {
    const pid_t r = ::waitpid(pid, status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR)
      fail(path, std::string("cannot wait for the process that checks the file: ") + std::strerror(errno));
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(pause);
  }
}

// The image's contents, read by a child process (read_contents); throws unless it
// finished cleanly: an engine error is rethrown as the child wrote it, and a child that
// died or ran out of time makes a "corrupt HDF5 file" error.
std::unique_ptr<FileContents> read_in_child(const std::string& path, FileImage& image) {
  const int seconds = child_seconds(image);
  const int values_fd = values_file(path);
  const FdCloser values_closer{values_fd};
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    fail(path, std::string("cannot start the process that reads the file: ") + std::strerror(errno));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    run_child(path, image, fds[1], values_fd, parent, seconds);
  }
  ::close(fds[1]);
  const FdCloser closer{fds[0]};
  if (pid < 0) fail(path, std::string("cannot start the process that reads the file: ") + std::strerror(errno));

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  std::string report;
  bool finished = false;
  for (;;) {  // the report, until the child closes the pipe (by exiting) or time runs out
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    struct pollfd p = {fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (ready < 0 && errno != EINTR) break;
    if (ready <= 0) continue;
    char chunk[4096];
    const ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      finished = true;
      break;
    }
    if (report.size() < (1u << 20)) report.append(chunk, static_cast<size_t>(n));
  }
  int status = 0;
  if (!finished || !wait_child(path, pid, &status, deadline)) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    fail(path, "corrupt HDF5 file (reading it did not finish in " + std::to_string(seconds) + " s)");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 1 && report.size() > 1 && report[0] == 'E')
    throw Error(report.substr(1));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || report.size() != 1 + 2 * sizeof(uint64_t) || report[0] != 'K')
    fail(path, "corrupt HDF5 file (the HDF5 library failed while reading it: " +
                   (WIFSIGNALED(status) ? signal_name(WTERMSIG(status))
                                        : "exit status " + std::to_string(WEXITSTATUS(status))) +
                   ")");
  uint64_t at = 0, size = 0;
  std::memcpy(&at, report.data() + 1, sizeof(at));
  std::memcpy(&size, report.data() + 1 + sizeof(at), sizeof(size));
  struct stat st {};
  if (::fstat(values_fd, &st) != 0) fail(path, std::string("cannot read the values read: ") + std::strerror(errno));
  auto contents = std::make_unique<FileContents>();
  contents->values_size = static_cast<size_t>(st.st_size);
  contents->values = map_values(path, values_fd, contents->values_size);
  if (at > contents->values_size || size != contents->values_size - at)
    Deserializer(nullptr, 0, path).bad();
  Deserializer r(contents->values + at, size, path);
  deserialize(r, contents.get());
  return contents;
}

// The same in this process (ENGINE_H5_ISOLATION=0): libhdf5's own failures happen here.
std::unique_ptr<FileContents> read_here(const std::string& path, FileImage& image) {
  const int values_fd = values_file(path);
  const FdCloser values_closer{values_fd};
  const hid_t file = open_image(image);
  if (file < 0) fail(path, "cannot open as HDF5 (corrupt or truncated)");
  const Handle closer(file, H5Fclose);
  auto contents = std::make_unique<FileContents>();
  try {
    read_contents(source_of(file, path, image), values_fd, contents.get());
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    fail(path, "corrupt HDF5 file (reading it needed more memory than the file can justify)");
  } catch (const std::exception& e) {
    fail(path, e.what());
  }
  struct stat st {};
  if (::fstat(values_fd, &st) != 0) fail(path, std::string("cannot read the values read: ") + std::strerror(errno));
  contents->values_size = static_cast<size_t>(st.st_size);
  contents->values = map_values(path, values_fd, contents->values_size);
  return contents;
}

}  // namespace

// ---- reader --------------------------------------------------------------------------

H5Reader::H5Reader(const std::string& path) : path_(path) {
  std::unique_ptr<FileImage> image = read_whole_file(path);
  if (superblock_at(image->bytes(), image->size()) == image->size()) fail(path, "not an HDF5 file (or truncated)");
  check_global_heaps(path, *image);
  const auto lock = detail::lock_hdf5();
  silence_hdf5();
  std::unique_ptr<FileContents> contents = isolation_enabled() ? read_in_child(path, *image) : read_here(path, *image);
  contents->image = std::move(image);
  contents_ = std::move(contents);
}

H5Reader::~H5Reader() = default;

namespace {

const FileContents::Dataset& dataset_of(const FileContents& c, const std::string& path, const std::string& name) {
  const auto it = c.links.find(name);
  if (it == c.links.end()) fail(path, "missing dataset '" + name + "'");
  return it->second;
}

const FileContents::Attribute& attribute_of(const FileContents& c, const std::string& path, const std::string& name) {
  const auto it = c.attributes.find(name);
  if (it == c.attributes.end()) fail(path, "missing attribute '" + name + "'");
  return it->second;
}

void throw_if(const std::string& error) {
  if (!error.empty()) throw Error(error);
}

// The values at [at, at + bytes) of the values file or of the image, checked to lie in it.
const uint8_t* values_at(const FileContents& c, const std::string& path, uint64_t at, uint64_t bytes) {
  if (at > c.values_size || bytes > c.values_size - at)
    fail(path, "corrupt HDF5 file (the process that read it reported nonsense)");
  return c.values + at;
}

const uint8_t* image_at(const FileContents& c, const std::string& path, uint64_t at, uint64_t bytes) {
  if (!c.image || at > c.image->size() || bytes > c.image->size() - at)
    fail(path, "corrupt HDF5 file (the process that read it reported nonsense)");
  return c.image->bytes() + at;
}

}  // namespace

std::vector<std::string> H5Reader::names() const { return contents_->datasets; }

bool H5Reader::has(const std::string& name) const { return contents_->links.count(name) > 0; }

Shape H5Reader::shape_of(const std::string& name) const {
  const FileContents::Dataset& d = dataset_of(*contents_, path_, name);
  throw_if(d.shape_error);
  return d.shape;
}

std::string H5Reader::type_of(const std::string& name) const {
  const FileContents::Dataset& d = dataset_of(*contents_, path_, name);
  throw_if(d.type_error);
  return d.type;
}

Tensor H5Reader::read(const std::string& name) const {
  const FileContents::Dataset& d = dataset_of(*contents_, path_, name);
  throw_if(d.floats_error);
  // The shape is checked against the values before a tensor of that shape is allocated.
  uint64_t elements = 1;
  bool sane = true;
  for (int64_t n : d.floats_shape) {
    if (n < 0 || (n > 0 && elements > static_cast<uint64_t>(kMaxElements) / static_cast<uint64_t>(n))) sane = false;
    if (sane) elements *= static_cast<uint64_t>(n);
  }
  const uint64_t bytes = elements * (d.floats_dtype == DType::F32 ? 4 : 8);
  if (!sane || bytes != d.floats_bytes) fail(path_, "corrupt HDF5 file (the process that read it reported nonsense)");
  const uint8_t* values = d.floats_in_image ? image_at(*contents_, path_, d.floats_at, bytes)
                                            : values_at(*contents_, path_, d.floats_at, bytes);
  Tensor t = Tensor::empty(d.floats_shape, d.floats_dtype);
  if (bytes > 0) std::memcpy(t.raw_data(), values, bytes);
  return t;
}

std::vector<int64_t> H5Reader::read_ints(const std::string& name) const {
  const FileContents::Dataset& d = dataset_of(*contents_, path_, name);
  throw_if(d.ints_error);
  if (d.ints_count > std::numeric_limits<uint64_t>::max() / sizeof(int64_t))
    fail(path_, "corrupt HDF5 file (the process that read it reported nonsense)");
  const uint8_t* p = values_at(*contents_, path_, d.ints_at, d.ints_count * sizeof(int64_t));
  std::vector<int64_t> out(static_cast<size_t>(d.ints_count));
  if (!out.empty()) std::memcpy(out.data(), p, out.size() * sizeof(int64_t));
  return out;
}

std::vector<std::string> H5Reader::read_strings(const std::string& name) const {
  const FileContents::Dataset& d = dataset_of(*contents_, path_, name);
  throw_if(d.strings_error);
  return d.strings;
}

bool H5Reader::has_attr(const std::string& name) const { return contents_->attributes.count(name) > 0; }

std::string H5Reader::attr(const std::string& name) const {
  const FileContents::Attribute& a = attribute_of(*contents_, path_, name);
  throw_if(a.text_error);
  return a.text;
}

int64_t H5Reader::attr_int(const std::string& name) const {
  const FileContents::Attribute& a = attribute_of(*contents_, path_, name);
  throw_if(a.number_error);
  return a.number;
}

// ---- writer --------------------------------------------------------------------------

H5Writer::H5Writer(const std::string& path)
    : path_(path), tmp_(path + ".tmp-" + std::to_string(::getpid())) {
  const auto lock = detail::lock_hdf5();
  silence_hdf5();
  file_ = H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file_ < 0) fail(path, "cannot create (is the folder writable?)");
}

H5Writer::~H5Writer() {
  const auto lock = detail::lock_hdf5();
  if (file_ >= 0) {
    H5Fclose(file_);
    std::remove(tmp_.c_str());
  }
}

void H5Writer::write(const std::string& name, const Tensor& t) {
  const auto lock = detail::lock_hdf5();
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
  const auto lock = detail::lock_hdf5();
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
  const auto lock = detail::lock_hdf5();
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
  const auto lock = detail::lock_hdf5();
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.id, H5T_VARIABLE);
  H5Tset_cset(type.id, H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(file_, name.c_str(), type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const char* p = value.c_str();
  if (a.id < 0 || H5Awrite(a.id, type.id, &p) < 0) fail(path_, "cannot write attribute '" + name + "'");
}

void H5Writer::set_attr(const std::string& name, int64_t value) {
  const auto lock = detail::lock_hdf5();
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(file_, name.c_str(), H5T_STD_I64LE, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (a.id < 0 || H5Awrite(a.id, H5T_NATIVE_INT64, &value) < 0) fail(path_, "cannot write attribute '" + name + "'");
}

void H5Writer::commit() {
  const auto lock = detail::lock_hdf5();
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
