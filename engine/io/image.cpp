// JPEG/PNG decoding, PNG writing and torchvision's transforms (see image.h).
//
// libjpeg and libpng report errors through callbacks that must not return. Each
// decoder therefore runs the library calls in one small function that calls setjmp and
// holds no objects with destructors; the callbacks copy the library's message and
// longjmp back there, and the caller (an ordinary C++ frame, never unwound by the
// longjmp) destroys the library state and throws engine::Error.
#include "engine/io/image.h"

#include <png.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <limits>

#include <unistd.h>

#include <jpeglib.h>
// After jpeglib.h: the message codes (JWRN_*, JERR_*) and ERREXIT.
#include <jerror.h>

#include "engine/error.h"
#include "kernels/common.h"

namespace engine::io {

Image::Image(int w, int h) : width(w), height(h) {
  ENGINE_CHECK(w >= 0 && h >= 0, "Image: negative size ", w, "x", h);
  rgb.assign(static_cast<size_t>(w) * static_cast<size_t>(h) * 3, 0);
}

namespace {

std::string quoted(const std::string& name) { return "image file '" + name + "': "; }

[[noreturn]] void fail(const std::string& name, const std::string& problem) {
  throw Error(quoted(name) + problem);
}

std::string pixel_limit_message(const char* format, int64_t w, int64_t h, int64_t limit) {
  return detail::concat("the ", format, " header claims ", w, "x", h, " = ", w * h,
                        " pixels, over the limit of ", limit, " (DecodeOptions::max_pixels)");
}

std::vector<uint8_t> read_file(const std::string& path) {
  errno = 0;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path, std::string("cannot open: ") + std::strerror(errno));
  std::vector<uint8_t> bytes;
  size_t used = 0;
  for (;;) {
    if (bytes.size() - used < (1u << 16)) bytes.resize(std::max<size_t>(bytes.size() * 2, 1u << 20));
    errno = 0;
    const size_t n = std::fread(bytes.data() + used, 1, bytes.size() - used, f);
    used += n;
    if (n == 0) break;
  }
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) fail(path, std::string("cannot read: ") + std::strerror(err != 0 ? err : EIO));
  bytes.resize(used);
  return bytes;
}

// ---- EXIF orientation ---------------------------------------------------------------

// The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block (the APP1 payload
// after "Exif\0\0"); 1 when absent, malformed or out of range.
int exif_orientation(const uint8_t* p, size_t n) {
  if (n < 8) return 1;
  bool big;
  if (p[0] == 'I' && p[1] == 'I') big = false;
  else if (p[0] == 'M' && p[1] == 'M') big = true;
  else return 1;
  auto u16 = [&](size_t at) -> uint32_t {
    return big ? (uint32_t(p[at]) << 8) | p[at + 1] : (uint32_t(p[at + 1]) << 8) | p[at];
  };
  auto u32 = [&](size_t at) -> uint32_t { return big ? (u16(at) << 16) | u16(at + 2) : (u16(at + 2) << 16) | u16(at); };
  if (u16(2) != 42) return 1;
  const size_t ifd = u32(4);
  if (ifd > n || n - ifd < 2) return 1;
  const size_t count = u16(ifd);
  for (size_t i = 0; i < count; ++i) {
    const size_t e = ifd + 2 + 12 * i;
    if (e > n || n - e < 12) return 1;
    if (u16(e) != 0x0112) continue;
    const uint32_t type = u16(e + 2), values = u32(e + 4);
    uint32_t v = 0;
    if (type == 3 && values >= 1) v = u16(e + 8);        // SHORT
    else if (type == 4 && values >= 1) v = u32(e + 8);   // LONG
    return v >= 1 && v <= 8 ? static_cast<int>(v) : 1;
  }
  return 1;
}

// The transform of PIL's ImageOps.exif_transpose for orientation 1..8.
Image apply_orientation(const Image& in, int orientation) {
  if (orientation <= 1 || orientation > 8) return in;
  const int w = in.width, h = in.height;
  const bool swap = orientation >= 5;
  Image out(swap ? h : w, swap ? w : h);
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = x, sy = y;
      switch (orientation) {
        case 2: sx = w - 1 - x; break;                      // mirror left-right
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;      // rotate 180
        case 4: sy = h - 1 - y; break;                      // mirror top-bottom
        case 5: sx = y; sy = x; break;                      // transpose
        case 6: sx = y; sy = h - 1 - x; break;              // rotate 90 clockwise
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;      // transverse
        case 8: sx = w - 1 - y; sy = x; break;              // rotate 90 anticlockwise
      }
      std::memcpy(out.pixel(x, y), in.pixel(sx, sy), 3);
    }
  }
  return out;
}

// ---- JPEG ---------------------------------------------------------------------------

struct JpegErrorManager {
  jpeg_error_mgr pub;  // first: libjpeg sees a jpeg_error_mgr*
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings that leave every pixel decoded as the file says: tolerated. All others
// (premature end of file, a marker inside the entropy-coded data, bad Huffman or
// arithmetic codes, lost restart sync, invalid scan parameters) mean that pixels were
// invented, and are errors.
bool jpeg_warning_is_benign(int code) {
  return code == JWRN_ADOBE_XFORM || code == JWRN_EXTRANEOUS_DATA || code == JWRN_JFIF_MAJOR ||
         code == JWRN_BOGUS_ICC || code == JWRN_BOGUS_PROGRESSION;
}

void jpeg_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  if (jpeg_warning_is_benign(cinfo->err->msg_code)) {
    cinfo->err->num_warnings++;
    return;
  }
  jpeg_fail(cinfo);
}

enum DecodeStatus { kDecoded = 0, kLibraryError, kOverLimit, kUnsupported };

struct JpegJob {
  const uint8_t* data = nullptr;
  size_t size = 0;
  int64_t max_pixels = 0;
  bool read_exif = true;
  int width = 0, height = 0, components = 0;
  int orientation = 1;
  std::vector<uint8_t>* pixels = nullptr;  // RGB output
  std::vector<uint8_t>* row = nullptr;     // one decoded row, for grey and CMYK
};

// PIL's "CMYK;I" unpacking (Adobe's inverted polarity) followed by its CMYK -> RGB
// conversion: nk = 255 - k, out = nk - nk * c / 255 (rounded as MULDIV255).
inline uint8_t cmyk_channel(int c, int nk) {
  const int t = c * nk + 128;
  const int v = nk - (((t >> 8) + t) >> 8);
  return static_cast<uint8_t>(std::clamp(v, 0, 255));
}

int run_jpeg(jpeg_decompress_struct* cinfo, JpegErrorManager* err, JpegJob* job) {
  if (setjmp(err->jump)) return kLibraryError;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, job->data, static_cast<unsigned long>(job->size));
  if (job->read_exif) jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(cinfo, TRUE);
  job->width = static_cast<int>(cinfo->image_width);
  job->height = static_cast<int>(cinfo->image_height);
  job->components = cinfo->num_components;
  if (static_cast<int64_t>(job->width) * job->height > job->max_pixels) return kOverLimit;
  switch (cinfo->num_components) {
    case 1: cinfo->out_color_space = JCS_GRAYSCALE; break;
    case 3: cinfo->out_color_space = JCS_RGB; break;
    case 4: cinfo->out_color_space = JCS_CMYK; break;  // YCCK is converted to CMYK by libjpeg
    default: return kUnsupported;
  }
  for (jpeg_saved_marker_ptr m = cinfo->marker_list; m != nullptr; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      job->orientation = exif_orientation(m->data + 6, m->data_length - 6);
      break;  // the first EXIF block, as PIL
    }
  }
  jpeg_start_decompress(cinfo);
  const int w = static_cast<int>(cinfo->output_width), h = static_cast<int>(cinfo->output_height);
  const int comps = cinfo->output_components;
  if (w != job->width || h != job->height || comps != job->components) return kUnsupported;
  job->pixels->resize(static_cast<size_t>(w) * h * 3);
  job->row->resize(static_cast<size_t>(w) * comps);
  while (cinfo->output_scanline < cinfo->output_height) {
    const size_t y = cinfo->output_scanline;
    uint8_t* dst = job->pixels->data() + y * w * 3;
    JSAMPROW target = comps == 3 ? dst : job->row->data();
    if (jpeg_read_scanlines(cinfo, &target, 1) != 1) ERREXIT(cinfo, JERR_INPUT_EOF);
    const uint8_t* src = job->row->data();
    if (comps == 1) {
      for (int x = 0; x < w; ++x) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = src[x];
    } else if (comps == 4) {
      for (int x = 0; x < w; ++x) {
        const int nk = src[4 * x + 3];  // 255 - (255 - k) after the polarity inversion
        for (int c = 0; c < 3; ++c) dst[3 * x + c] = cmyk_channel(255 - src[4 * x + c], nk);
      }
    }
  }
  jpeg_finish_decompress(cinfo);
  return kDecoded;
}

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opt) {
  jpeg_decompress_struct cinfo{};
  JpegErrorManager err{};
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = jpeg_fail;
  err.pub.emit_message = jpeg_message;
  err.message[0] = '\0';
  std::vector<uint8_t> pixels, row;
  JpegJob job;
  job.data = data;
  job.size = size;
  job.max_pixels = opt.max_pixels;
  job.read_exif = opt.apply_exif_orientation;
  job.pixels = &pixels;
  job.row = &row;
  struct Destroy {
    jpeg_decompress_struct* c;
    ~Destroy() { jpeg_destroy_decompress(c); }
  } destroy{&cinfo};
  const int status = run_jpeg(&cinfo, &err, &job);
  switch (status) {
    case kLibraryError: fail(name, std::string("corrupt or truncated JPEG data: ") + err.message);
    case kOverLimit: fail(name, pixel_limit_message("JPEG", job.width, job.height, opt.max_pixels));
    case kUnsupported: fail(name, detail::concat("unsupported JPEG with ", job.components, " colour components"));
    default: break;
  }
  Image img;
  img.width = job.width;
  img.height = job.height;
  img.rgb = std::move(pixels);
  if (opt.apply_exif_orientation && job.orientation != 1) return apply_orientation(img, job.orientation);
  return img;
}

// ---- PNG ----------------------------------------------------------------------------

struct PngJob {
  const uint8_t* data = nullptr;
  size_t size = 0, pos = 0;
  int64_t max_pixels = 0;
  std::jmp_buf jump;
  char message[256] = {0};
  uint32_t width = 0, height = 0;
  int color_type = 0, bit_depth = 0;
  uint8_t palette[256 * 3];
  std::vector<uint8_t>* pixels = nullptr;   // RGB output
  std::vector<uint8_t>* raw = nullptr;      // libpng's rows
  std::vector<png_bytep>* rows = nullptr;   // row pointers into raw (interlaced images)
};

void png_fail(png_structp png, png_const_charp message) {
  auto* job = static_cast<PngJob*>(png_get_error_ptr(png));
  std::snprintf(job->message, sizeof(job->message), "%s", message);
  std::longjmp(job->jump, 1);
}

void png_ignore_warning(png_structp, png_const_charp) {}

void png_read_memory(png_structp png, png_bytep out, size_t n) {
  auto* job = static_cast<PngJob*>(png_get_io_ptr(png));
  if (n > job->size - job->pos) png_error(png, "file is truncated");
  std::memcpy(out, job->data + job->pos, n);
  job->pos += n;
}

// One row of libpng's output (after the transforms set in run_png) to RGB.
void png_row_to_rgb(const PngJob& job, const uint8_t* src, uint8_t* dst) {
  const uint32_t w = job.width;
  switch (job.color_type) {
    case PNG_COLOR_TYPE_GRAY:
      if (job.bit_depth == 16) {  // PIL reads 16-bit grey as "I" and clips it to 255
        for (uint32_t x = 0; x < w; ++x) {
          const unsigned v = (unsigned(src[2 * x]) << 8) | src[2 * x + 1];
          dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = static_cast<uint8_t>(std::min(v, 255u));
        }
      } else {
        for (uint32_t x = 0; x < w; ++x) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = src[x];
      }
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      for (uint32_t x = 0; x < w; ++x) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = src[2 * x];
      break;
    case PNG_COLOR_TYPE_RGB:
      std::memcpy(dst, src, static_cast<size_t>(w) * 3);
      break;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      for (uint32_t x = 0; x < w; ++x) std::memcpy(dst + 3 * x, src + 4 * x, 3);
      break;
    case PNG_COLOR_TYPE_PALETTE:
      for (uint32_t x = 0; x < w; ++x) std::memcpy(dst + 3 * x, job.palette + 3 * src[x], 3);
      break;
  }
}

int run_png(png_structp png, png_infop info, PngJob* job) {
  if (setjmp(job->jump)) return kLibraryError;
  png_set_read_fn(png, job, png_read_memory);
  png_read_info(png, info);
  int interlace = 0;
  png_get_IHDR(png, info, &job->width, &job->height, &job->bit_depth, &job->color_type, &interlace, nullptr,
               nullptr);
  if (static_cast<int64_t>(job->width) * job->height > job->max_pixels) return kOverLimit;
  int expected_channels = 0;
  switch (job->color_type) {
    case PNG_COLOR_TYPE_GRAY: expected_channels = 1; break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: expected_channels = 2; break;
    case PNG_COLOR_TYPE_RGB: expected_channels = 3; break;
    case PNG_COLOR_TYPE_RGB_ALPHA: expected_channels = 4; break;
    case PNG_COLOR_TYPE_PALETTE: expected_channels = 1; break;
    default: return kUnsupported;
  }
  if (job->color_type == PNG_COLOR_TYPE_PALETTE) {
    // Indices as bytes; PIL's palette starts as a grey ramp and PLTE overwrites its head.
    png_set_packing(png);
    for (int i = 0; i < 256; ++i) job->palette[3 * i] = job->palette[3 * i + 1] = job->palette[3 * i + 2] = uint8_t(i);
    png_colorp plte = nullptr;
    int n = 0;
    if (png_get_PLTE(png, info, &plte, &n) & PNG_INFO_PLTE) {
      for (int i = 0; i < std::min(n, 256); ++i) {
        job->palette[3 * i] = plte[i].red;
        job->palette[3 * i + 1] = plte[i].green;
        job->palette[3 * i + 2] = plte[i].blue;
      }
    }
  } else if (job->color_type == PNG_COLOR_TYPE_GRAY && job->bit_depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);  // scales to 0..255, as PIL's "1", "L;2", "L;4"
  }
  // 16-bit samples keep their high byte (PIL's ";16B" unpackers); 16-bit grey stays
  // 16-bit for the clip in png_row_to_rgb.
  if (job->bit_depth == 16 && job->color_type != PNG_COLOR_TYPE_GRAY) png_set_strip_16(png);
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int channels = png_get_channels(png, info);
  const int out_depth = png_get_bit_depth(png, info);
  const int want_depth = job->color_type == PNG_COLOR_TYPE_GRAY && job->bit_depth == 16 ? 16 : 8;
  if (channels != expected_channels || out_depth != want_depth) return kUnsupported;
  job->bit_depth = out_depth;
  const size_t rowbytes = png_get_rowbytes(png, info);
  const size_t w = job->width, h = job->height;
  if (rowbytes < w * channels * (out_depth / 8)) return kUnsupported;
  job->pixels->resize(w * h * 3);
  if (passes > 1) {
    job->raw->resize(rowbytes * h);
    job->rows->resize(h);
    for (size_t y = 0; y < h; ++y) (*job->rows)[y] = job->raw->data() + y * rowbytes;
    png_read_image(png, job->rows->data());
    for (size_t y = 0; y < h; ++y) png_row_to_rgb(*job, (*job->rows)[y], job->pixels->data() + y * w * 3);
  } else {
    job->raw->resize(rowbytes);
    for (size_t y = 0; y < h; ++y) {
      png_read_row(png, job->raw->data(), nullptr);
      png_row_to_rgb(*job, job->raw->data(), job->pixels->data() + y * w * 3);
    }
  }
  png_read_end(png, nullptr);
  return kDecoded;
}

Image decode_png(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opt) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  if (!png) fail(name, "libpng could not allocate a reader");
  png_infop info = png_create_info_struct(png);
  struct Destroy {
    png_structp* p;
    png_infop* i;
    ~Destroy() { png_destroy_read_struct(p, *i ? i : nullptr, nullptr); }
  } destroy{&png, &info};
  if (!info) fail(name, "libpng could not allocate a reader");
  std::vector<uint8_t> pixels, raw;
  std::vector<png_bytep> rows;
  PngJob job;
  job.data = data;
  job.size = size;
  job.max_pixels = opt.max_pixels;
  job.pixels = &pixels;
  job.raw = &raw;
  job.rows = &rows;
  png_set_error_fn(png, &job, png_fail, png_ignore_warning);
  const int status = run_png(png, info, &job);
  switch (status) {
    case kLibraryError: fail(name, std::string("corrupt or truncated PNG data: ") + job.message);
    case kOverLimit: fail(name, pixel_limit_message("PNG", job.width, job.height, opt.max_pixels));
    case kUnsupported:
      fail(name, detail::concat("unsupported PNG (colour type ", job.color_type, ", bit depth ", job.bit_depth, ")"));
    default: break;
  }
  Image img;
  img.width = static_cast<int>(job.width);
  img.height = static_cast<int>(job.height);
  img.rgb = std::move(pixels);
  return img;
}

// ---- PNG writing --------------------------------------------------------------------

struct PngWriteJob {
  std::FILE* file = nullptr;
  std::jmp_buf jump;
  char message[256] = {0};
  int width = 0, height = 0, channels = 0;
  const uint8_t* data = nullptr;
};

void png_write_fail(png_structp png, png_const_charp message) {
  auto* job = static_cast<PngWriteJob*>(png_get_error_ptr(png));
  std::snprintf(job->message, sizeof(job->message), "%s", message);
  std::longjmp(job->jump, 1);
}

int run_png_write(png_structp png, png_infop info, PngWriteJob* job) {
  if (setjmp(job->jump)) return kLibraryError;
  png_init_io(png, job->file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(job->width), static_cast<png_uint_32>(job->height), 8,
               job->channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(job->width) * job->channels;
  for (int y = 0; y < job->height; ++y) png_write_row(png, job->data + y * stride);
  png_write_end(png, info);
  return kDecoded;
}

std::string temporary_path(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

void write_png_pixels(const std::string& path, int width, int height, int channels, const uint8_t* data) {
  const std::string tmp = temporary_path(path);
  errno = 0;
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Error("write_png: cannot create '" + tmp + "': " + std::strerror(errno));
  PngWriteJob job;
  job.file = f;
  job.width = width;
  job.height = height;
  job.channels = channels;
  job.data = data;
  int status = kLibraryError;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (png && info) {
    png_set_error_fn(png, &job, png_write_fail, png_ignore_warning);
    status = run_png_write(png, info, &job);
  } else {
    std::snprintf(job.message, sizeof(job.message), "libpng could not allocate a writer");
  }
  if (png) png_destroy_write_struct(&png, info ? &info : nullptr);
  errno = 0;
  const bool flushed = std::fflush(f) == 0 && std::ferror(f) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(f) == 0;
  const int close_errno = errno;
  std::string problem;
  if (status != kDecoded) problem = job.message;
  else if (!flushed) problem = std::strerror(flush_errno != 0 ? flush_errno : EIO);
  else if (!closed) problem = std::strerror(close_errno != 0 ? close_errno : EIO);
  if (problem.empty() && std::rename(tmp.c_str(), path.c_str()) != 0) problem = std::strerror(errno);
  if (!problem.empty()) {
    std::remove(tmp.c_str());
    throw Error("write_png: cannot write '" + path + "': " + problem);
  }
}

// ---- PIL's resampling ---------------------------------------------------------------

// PIL's fixed point: coefficients carry 22 fractional bits; a sum starts at one half.
constexpr int kPrecisionBits = 32 - 8 - 2;

inline double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

inline uint8_t clip8(int v) {
  const int s = v >> kPrecisionBits;  // arithmetic shift, as PIL's lookup index
  return static_cast<uint8_t>(s < 0 ? 0 : (s > 255 ? 255 : s));
}

// Per output position: the first input index, how many inputs, and their fixed-point
// weights (ksize slots each). PIL's precompute_coeffs + normalize_coeffs_8bpc for the
// box [0, in_size).
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

Coefficients precompute_coefficients(int in_size, int out_size) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;  // BILINEAR's support is 1
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    double ww = 0.0;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      const double w = bilinear_filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
    }
    int32_t* out = c.weights.data() + static_cast<size_t>(xx) * c.ksize;
    for (int x = 0; x < xmax; ++x) {
      out[x] = k[x] < 0 ? static_cast<int32_t>(-0.5 + k[x] * (1 << kPrecisionBits))
                        : static_cast<int32_t>(0.5 + k[x] * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

// Rows [row0, row0 + rows) of `in`, resampled horizontally to out_width.
Image resample_horizontal(const Image& in, int out_width, int row0, int rows, const Coefficients& c) {
  Image out(out_width, rows);
  for (int yy = 0; yy < rows; ++yy) {
    const uint8_t* src = in.pixel(0, yy + row0);
    uint8_t* dst = out.pixel(0, yy);
    for (int xx = 0; xx < out_width; ++xx) {
      const int xmin = c.first[xx], xmax = c.count[xx];
      const int32_t* k = c.weights.data() + static_cast<size_t>(xx) * c.ksize;
      int s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; ++x) {
        const uint8_t* p = src + 3 * (x + xmin);
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      dst[3 * xx] = clip8(s0);
      dst[3 * xx + 1] = clip8(s1);
      dst[3 * xx + 2] = clip8(s2);
    }
  }
  return out;
}

// Vertical pass; c.first is relative to the first row of `in`.
Image resample_vertical(const Image& in, int out_height, const Coefficients& c, int first_shift) {
  Image out(in.width, out_height);
  const size_t stride = static_cast<size_t>(in.width) * 3;
  for (int yy = 0; yy < out_height; ++yy) {
    const int ymin = c.first[yy] - first_shift, ymax = c.count[yy];
    const int32_t* k = c.weights.data() + static_cast<size_t>(yy) * c.ksize;
    uint8_t* dst = out.pixel(0, yy);
    const uint8_t* base = in.rgb.data() + static_cast<size_t>(ymin) * stride;
    for (size_t i = 0; i < stride; ++i) {
      int s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; ++y) s += base[y * stride + i] * k[y];
      dst[i] = clip8(s);
    }
  }
  return out;
}

// The most pixels resize_shorter produces (64 Mpixel: a 1024:1 image at 256).
constexpr int64_t kMaxResizedPixels = int64_t(1) << 26;

// round(d / 2) for d >= 0 with ties to even, as Python's round().
int half_rounded_to_even(int d) {
  const int q = d / 2;
  if (d % 2 == 0 || q % 2 == 0) return q;
  return q + 1;
}

// Uniform in [lo, hi) from one counter of the generator.
double uniform(Generator& gen, double lo, double hi) {
  const double u = kernels::philox_uniform<double>(gen.seed(), gen.advance(1));
  return lo + (hi - lo) * u;
}

// Uniform integer in [0, n).
int uniform_int(Generator& gen, int n) {
  const int v = static_cast<int>(uniform(gen, 0.0, 1.0) * n);
  return std::min(v, n - 1);
}

void check_image(const Image& image, const char* what) {
  ENGINE_CHECK(image.width > 0 && image.height > 0, what, ": empty image (", image.width, "x", image.height, ")");
  ENGINE_CHECK(image.rgb.size() == static_cast<size_t>(image.width) * image.height * 3, what, ": image of ",
               image.width, "x", image.height, " holds ", image.rgb.size(), " bytes, expected ",
               static_cast<size_t>(image.width) * image.height * 3);
}

}  // namespace

// ---- decoding -----------------------------------------------------------------------

Image decode_image(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options) {
  if (size == 0) fail(name, "the file is empty (0 bytes)");
  ENGINE_CHECK(data != nullptr, quoted(name), "no data");
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return decode_jpeg(data, size, name, options);
  if (size >= 8 && std::memcmp(data, kPng, 8) == 0) return decode_png(data, size, name, options);
  auto starts = [&](const char* magic, size_t n) { return size >= n && std::memcmp(data, magic, n) == 0; };
  std::string kind;
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) kind = "a GIF image";
  else if (starts("BM", 2)) kind = "a BMP image";
  else if (starts("II*\0", 4) || starts("MM\0*", 4)) kind = "a TIFF image";
  else if (starts("RIFF", 4) && size >= 12 && std::memcmp(data + 8, "WEBP", 4) == 0) kind = "a WebP image";
  if (!kind.empty()) fail(name, "is " + kind + "; only JPEG and PNG are supported");
  std::string head;
  for (size_t i = 0; i < std::min<size_t>(size, 8); ++i) {
    char b[4];
    std::snprintf(b, sizeof(b), "%02x", data[i]);
    head += (i ? " " : "") + std::string(b);
  }
  fail(name, "not a JPEG or PNG image (it starts with bytes " + head + ")");
}

Image read_image(const std::string& path, const DecodeOptions& options) {
  const std::vector<uint8_t> bytes = read_file(path);
  return decode_image(bytes.data(), bytes.size(), path, options);
}

void write_png(const std::string& path, const Image& image) {
  check_image(image, "write_png");
  write_png_pixels(path, image.width, image.height, 3, image.rgb.data());
}

void write_png_gray(const std::string& path, int width, int height, const std::vector<uint8_t>& pixels) {
  ENGINE_CHECK(width > 0 && height > 0, "write_png_gray: empty image (", width, "x", height, ")");
  ENGINE_CHECK(pixels.size() == static_cast<size_t>(width) * height, "write_png_gray: ", width, "x", height,
               " image needs ", static_cast<size_t>(width) * height, " bytes, got ", pixels.size());
  write_png_pixels(path, width, height, 1, pixels.data());
}

// ---- transforms ---------------------------------------------------------------------

Image resize_bilinear(const Image& image, int width, int height) {
  check_image(image, "resize_bilinear");
  ENGINE_CHECK(width > 0 && height > 0, "resize_bilinear: output size ", width, "x", height, " must be positive");
  if (width == image.width && height == image.height) return image;
  // As PIL: vertical coefficients first, to know which rows the horizontal pass needs.
  const Coefficients vert = precompute_coefficients(image.height, height);
  const int first_row = vert.first[0];
  const int last_row = vert.first[height - 1] + vert.count[height - 1];
  if (width == image.width) return resample_vertical(image, height, vert, 0);
  const Coefficients horiz = precompute_coefficients(image.width, width);
  if (height == image.height) return resample_horizontal(image, width, 0, image.height, horiz);
  const Image temp = resample_horizontal(image, width, first_row, last_row - first_row, horiz);
  return resample_vertical(temp, height, vert, first_row);
}

std::array<int, 2> resized_shorter_size(int width, int height, int size) {
  ENGINE_CHECK(width > 0 && height > 0, "resize: empty image (", width, "x", height, ")");
  ENGINE_CHECK(size > 0, "resize: size must be positive, got ", size);
  const int shorter = std::min(width, height), longer = std::max(width, height);
  const double scaled_long = static_cast<double>(static_cast<int64_t>(size) * longer) / shorter;
  // A very elongated image (1 x 200000 pixels is a 500-byte PNG) would otherwise become
  // hundreds of gigabytes before the centre crop: refuse it before allocating.
  ENGINE_CHECK(scaled_long * size <= static_cast<double>(kMaxResizedPixels), "resize: a ", width, "x", height,
               " image with its shorter side resized to ", size, " would have ", static_cast<int64_t>(scaled_long),
               "x", size, " pixels, over the limit of ", kMaxResizedPixels, " (the image is too elongated)");
  const int new_long = static_cast<int>(scaled_long);
  return width <= height ? std::array<int, 2>{size, new_long} : std::array<int, 2>{new_long, size};
}

Image resize_shorter(const Image& image, int size) {
  const auto [w, h] = resized_shorter_size(image.width, image.height, size);
  return resize_bilinear(image, w, h);
}

Image crop(const Image& image, int top, int left, int height, int width) {
  ENGINE_CHECK(height > 0 && width > 0, "crop: size ", width, "x", height, " must be positive");
  Image out(width, height);
  const int x0 = std::max(left, 0), x1 = std::min(left + width, image.width);
  if (x1 <= x0) return out;
  for (int y = 0; y < height; ++y) {
    const int sy = top + y;
    if (sy < 0 || sy >= image.height) continue;
    std::memcpy(out.pixel(x0 - left, y), image.pixel(x0, sy), static_cast<size_t>(x1 - x0) * 3);
  }
  return out;
}

Image center_crop(const Image& image, int height, int width) {
  check_image(image, "center_crop");
  ENGINE_CHECK(height > 0 && width > 0, "center_crop: size ", width, "x", height, " must be positive");
  const int pad_left = width > image.width ? (width - image.width) / 2 : 0;
  const int pad_top = height > image.height ? (height - image.height) / 2 : 0;
  const int padded_w = width > image.width ? width : image.width;
  const int padded_h = height > image.height ? height : image.height;
  const int top = half_rounded_to_even(padded_h - height);
  const int left = half_rounded_to_even(padded_w - width);
  return crop(image, top - pad_top, left - pad_left, height, width);
}

Image hflip(const Image& image) {
  Image out(image.width, image.height);
  for (int y = 0; y < image.height; ++y)
    for (int x = 0; x < image.width; ++x) std::memcpy(out.pixel(x, y), image.pixel(image.width - 1 - x, y), 3);
  return out;
}

Tensor to_tensor(const Image& image, const Normalization& norm) {
  check_image(image, "to_tensor");
  const int64_t plane = static_cast<int64_t>(image.width) * image.height;
  Tensor t = Tensor::empty({3, image.height, image.width}, DType::F32);
  float* out = t.data<float>();
  for (int c = 0; c < 3; ++c) {
    const float mean = norm.mean[c], std = norm.std[c];
    ENGINE_CHECK(std != 0.0f, "to_tensor: std[", c, "] is zero");
    float* o = out + c * plane;
    const uint8_t* p = image.rgb.data() + c;
    // torchvision: float(v) / 255, then (x - mean) / std, each in float32.
    for (int64_t i = 0; i < plane; ++i) o[i] = (static_cast<float>(p[3 * i]) / 255.0f - mean) / std;
  }
  return t;
}

Preprocessed eval_transform(const Image& image, const EvalTransformOptions& options) {
  ENGINE_CHECK(options.resize > 0 && options.crop > 0, "eval_transform: resize ", options.resize, " and crop ",
               options.crop, " must be positive");
  Preprocessed out;
  out.image = center_crop(resize_shorter(image, options.resize), options.crop, options.crop);
  out.tensor = to_tensor(out.image, options.norm);
  return out;
}

CropBox random_resized_crop_box(int width, int height, Generator& gen, const RandomResizedCropOptions& o) {
  ENGINE_CHECK(width > 0 && height > 0, "random_resized_crop: empty image (", width, "x", height, ")");
  ENGINE_CHECK(o.scale_min > 0 && o.scale_min <= o.scale_max, "random_resized_crop: bad scale range [",
               o.scale_min, ", ", o.scale_max, "]");
  ENGINE_CHECK(o.ratio_min > 0 && o.ratio_min <= o.ratio_max, "random_resized_crop: bad ratio range [",
               o.ratio_min, ", ", o.ratio_max, "]");
  const double area = static_cast<double>(width) * height;
  const double log_lo = std::log(o.ratio_min), log_hi = std::log(o.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * uniform(gen, o.scale_min, o.scale_max);
    const double aspect = std::exp(uniform(gen, log_lo, log_hi));
    const double wf = std::nearbyint(std::sqrt(target_area * aspect));  // Python's round: ties to even
    const double hf = std::nearbyint(std::sqrt(target_area / aspect));
    if (wf > 0 && wf <= width && hf > 0 && hf <= height) {
      const int w = static_cast<int>(wf), h = static_cast<int>(hf);
      const int top = uniform_int(gen, height - h + 1);
      const int left = uniform_int(gen, width - w + 1);
      return {top, left, h, w};
    }
  }
  // Fallback: the central crop, clamped to the ratio range.
  const double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < o.ratio_min) h = static_cast<int>(std::nearbyint(w / o.ratio_min));
  else if (in_ratio > o.ratio_max) w = static_cast<int>(std::nearbyint(h * o.ratio_max));
  return {(height - h) / 2, (width - w) / 2, h, w};
}

Image resized_crop(const Image& image, const CropBox& box, int height, int width) {
  check_image(image, "resized_crop");
  return resize_bilinear(crop(image, box.top, box.left, box.height, box.width), width, height);
}

Augmented random_resized_crop_flip(const Image& image, Generator& gen, const RandomResizedCropOptions& options) {
  check_image(image, "random_resized_crop");
  ENGINE_CHECK(options.size > 0, "random_resized_crop: size must be positive, got ", options.size);
  Augmented out;
  out.box = random_resized_crop_box(image.width, image.height, gen, options);
  out.image = resized_crop(image, out.box, options.size, options.size);
  out.flipped = uniform(gen, 0.0, 1.0) < options.flip_probability;
  if (out.flipped) out.image = hflip(out.image);
  return out;
}

Tensor train_transform(const Image& image, Generator& gen, const RandomResizedCropOptions& options) {
  return to_tensor(random_resized_crop_flip(image, gen, options).image, options.norm);
}

}  // namespace engine::io
