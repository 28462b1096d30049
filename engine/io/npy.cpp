// NumPy .npy reading and writing (see npy.h). The format: the magic "\x93NUMPY", a
// major and minor version byte, the header length (uint16 in 1.0, uint32 in 2.0/3.0),
// a Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } padded
// with spaces and ended by '\n', then the raw little-endian elements.
#include "engine/io/npy.h"

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include <unistd.h>

#include "engine/error.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.cpp writes and reads the host's memory as little-endian data"
#endif

namespace engine::io {

namespace {

const char kMagic[] = "\x93NUMPY";  // 6 bytes

std::string header_for(const Tensor& t) {
  std::string shape = "(";
  for (size_t i = 0; i < t.shape().size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape()[i]);
  if (t.shape().size() == 1) shape += ",";
  shape += ")";
  std::string dict = std::string("{'descr': '") + (t.dtype() == DType::F32 ? "<f4" : "<f8") +
                     "', 'fortran_order': False, 'shape': " + shape + ", }";
  // magic (6) + version (2) + length (2) + dict + padding + '\n' is a multiple of 64.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  return dict;
}

[[noreturn]] void bad(const std::string& path, const std::string& problem) {
  throw Error("npy file '" + path + "': " + problem);
}

// The text after `'key':` in the header dict, with leading spaces skipped.
size_t value_of(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) at = header.find("\"" + key + "\"");
  if (at == std::string::npos) bad(path, "header has no '" + key + "': " + header);
  at = header.find(':', at);
  if (at == std::string::npos) bad(path, "malformed header: " + header);
  ++at;
  while (at < header.size() && std::isspace(static_cast<unsigned char>(header[at]))) ++at;
  return at;
}

}  // namespace

void write_npy(const std::string& path, const Tensor& t) {
  ENGINE_CHECK(t.defined(), "write_npy: undefined tensor for '", path, "'");
  const std::string header = header_for(t);
  ENGINE_CHECK(header.size() <= 65535, "write_npy: shape ", shape_str(t.shape()), " is too long for an .npy header");
  std::vector<char> bytes;
  if (t.dtype() == DType::F32) {
    const auto v = t.to_vector<float>();
    bytes.resize(v.size() * sizeof(float));
    if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
  } else {
    const auto v = t.to_vector<double>();
    bytes.resize(v.size() * sizeof(double));
    if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
  }
  static std::atomic<uint64_t> counter{0};
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  errno = 0;
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error("write_npy: cannot create '" + tmp + "': " + std::strerror(errno));
  const unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                    static_cast<unsigned char>(header.size() & 0xFF),
                                    static_cast<unsigned char>(header.size() >> 8)};
  errno = 0;
  bool ok = std::fwrite(prefix, 1, sizeof(prefix), f) == sizeof(prefix) &&
            std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            (bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size()) && std::fflush(f) == 0;
  int err = errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error("write_npy: cannot write '" + path + "': " + std::strerror(err != 0 ? err : EIO));
  }
}

Tensor read_npy(const std::string& path) {
  errno = 0;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) bad(path, std::string("cannot open: ") + std::strerror(errno));
  std::vector<char> bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.insert(bytes.end(), buf, buf + n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) bad(path, "read error");
  if (bytes.size() < 10 || std::memcmp(bytes.data(), kMagic, 6) != 0) bad(path, "not an .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  auto byte = [&](size_t i) { return static_cast<size_t>(static_cast<unsigned char>(bytes[i])); };
  if (major == 1) {
    header_len = byte(8) | (byte(9) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) bad(path, "truncated header");
    header_len = byte(8) | (byte(9) << 8) | (byte(10) << 16) | (byte(11) << 24);
    offset = 12;
  } else {
    bad(path, "unsupported format version " + std::to_string(major));
  }
  if (bytes.size() - offset < header_len) bad(path, "truncated header");
  const std::string header(bytes.data() + offset, header_len);
  offset += header_len;

  size_t at = value_of(header, "descr", path);
  if (at >= header.size() || (header[at] != '\'' && header[at] != '"')) bad(path, "malformed descr: " + header);
  const size_t end = header.find(header[at], at + 1);
  if (end == std::string::npos) bad(path, "malformed descr: " + header);
  const std::string descr = header.substr(at + 1, end - at - 1);
  DType dtype;
  if (descr == "<f4") dtype = DType::F32;
  else if (descr == "<f8") dtype = DType::F64;
  else bad(path, "dtype '" + descr + "' is not supported (only little-endian float32 '<f4' and float64 '<f8')");

  at = value_of(header, "fortran_order", path);
  if (header.compare(at, 4, "True") == 0) bad(path, "Fortran-order arrays are not supported");
  if (header.compare(at, 5, "False") != 0) bad(path, "malformed fortran_order: " + header);

  at = value_of(header, "shape", path);
  if (at >= header.size() || header[at] != '(') bad(path, "malformed shape: " + header);
  const size_t close = header.find(')', at);
  if (close == std::string::npos) bad(path, "malformed shape: " + header);
  Shape shape;
  size_t i = at + 1;
  while (i < close) {
    while (i < close && (std::isspace(static_cast<unsigned char>(header[i])) || header[i] == ',')) ++i;
    if (i >= close) break;
    if (!std::isdigit(static_cast<unsigned char>(header[i]))) bad(path, "malformed shape: " + header);
    int64_t d = 0;
    while (i < close && std::isdigit(static_cast<unsigned char>(header[i]))) {
      d = d * 10 + (header[i] - '0');
      if (d > (int64_t(1) << 40)) bad(path, "dimension too large in shape: " + header);
      ++i;
    }
    shape.push_back(d);
  }
  int64_t count = 1;
  for (int64_t d : shape) {
    if (d != 0 && count > (int64_t(1) << 40) / d) bad(path, "shape " + shape_str(shape) + " is too large");
    count *= d;
  }
  const size_t need = static_cast<size_t>(count) * element_size(dtype);
  if (bytes.size() - offset != need)
    bad(path, detail::concat("shape ", shape_str(shape), " needs ", need, " bytes of data, the file holds ",
                             bytes.size() - offset));
  if (dtype == DType::F32) {
    std::vector<float> v(static_cast<size_t>(count));
    if (count) std::memcpy(v.data(), bytes.data() + offset, need);
    return Tensor::from_vector(shape, v);
  }
  std::vector<double> v(static_cast<size_t>(count));
  if (count) std::memcpy(v.data(), bytes.data() + offset, need);
  return Tensor::from_vector(shape, v);
}

}  // namespace engine::io
