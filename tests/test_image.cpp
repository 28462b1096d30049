// Image I/O and preprocessing: every PNG/JPEG kind decoded as PIL decodes it (files
// made by tests/reference/image_reference.py at test time), EXIF orientation, bad
// inputs, atomic PNG writing, PIL's resampling and torchvision's evaluation transform on
// every ImageNet sample, the training augmentation, and .npy files read by NumPy.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "engine/io/h5.h"
#include "engine/io/image.h"
#include "engine/io/npy.h"
#include "tests/test_util.h"

using namespace engine;
using io::Image;
namespace fs = std::filesystem;

namespace {

// Passes when f throws engine::Error whose message names `file` and contains `problem`.
::testing::AssertionResult throws_naming(const std::function<void()>& f, const std::string& file,
                                         const std::string& problem) {
  try {
    f();
  } catch (const Error& e) {
    const std::string m = e.what();
    if (m.find(file) == std::string::npos)
      return ::testing::AssertionFailure() << "message does not name '" << file << "': " << m;
    if (m.find(problem) == std::string::npos)
      return ::testing::AssertionFailure() << "message does not say '" << problem << "': " << m;
    return ::testing::AssertionSuccess() << m;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-engine exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::string> sample_paths(const std::string& data_dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(data_dir + "/imagenet/samples"))
    if (e.path().extension() == ".JPEG") out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

Image random_image(int w, int h, uint64_t seed) {
  Image img(w, h);
  std::mt19937_64 rng(seed);
  for (auto& v : img.rgb) v = static_cast<uint8_t>(rng() & 0xFF);
  return img;
}

// Our pixels against a float32 [H, W, 3] reference; reports the first difference.
::testing::AssertionResult same_pixels(const Image& ours, const Tensor& ref, const std::string& what) {
  if (ref.shape() != Shape{ours.height, ours.width, 3})
    return ::testing::AssertionFailure() << what << ": ours is " << ours.width << "x" << ours.height
                                         << ", the reference " << shape_str(ref.shape()) << " (HWC)";
  const auto r = ref.to_vector<float>();
  for (size_t i = 0; i < r.size(); ++i) {
    if (static_cast<float>(ours.rgb[i]) != r[i]) {
      const size_t p = i / 3;
      return ::testing::AssertionFailure() << what << ": pixel (x=" << p % ours.width << ", y=" << p / ours.width
                                           << ") channel " << i % 3 << " is " << int(ours.rgb[i]) << ", PIL has "
                                           << r[i];
    }
  }
  return ::testing::AssertionSuccess();
}

struct Diff {
  double max = 0, mean = 0;
};
Diff difference(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector<float>(), y = b.to_vector<float>();
  Diff d;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = std::fabs(static_cast<double>(x[i]) - y[i]);
    d.max = std::max(d.max, e);
    d.mean += e;
  }
  d.mean /= static_cast<double>(std::max<size_t>(x.size(), 1));
  return d;
}

uint32_t crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

void put32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<uint8_t>(x >> s));
}

void png_chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put32(out, static_cast<uint32_t>(data.size()));
  std::vector<uint8_t> body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  out.insert(out.end(), body.begin(), body.end());
  put32(out, crc32(body.data(), body.size()));
}

// A PNG with a valid IHDR claiming w x h RGB pixels, followed by a few bytes of IDAT.
std::vector<uint8_t> png_header_only(uint32_t w, uint32_t h) {
  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> ihdr;
  put32(ihdr, w);
  put32(ihdr, h);
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});
  png_chunk(out, "IHDR", ihdr);
  png_chunk(out, "IDAT", {0x78, 0x9C, 0x63, 0x60, 0x00, 0x00});
  png_chunk(out, "IEND", {});
  return out;
}

std::string shared_sample(const std::string& data_dir) { return sample_paths(data_dir).front(); }

}  // namespace

// ---- decoding against PIL ---------------------------------------------------------------

TEST(ImageDecode, GeneratedPngAndJpegFilesMatchPil) {
  REQUIRE_TORCH();
  const std::string dir = testing_util::temp_dir();
  ASSERT_EQ(testing_util::run_reference_script("image_reference.py", "make-decode-cases --out " + dir), 0);
  io::H5Reader ref(dir + "/expected.h5");
  const auto names = ref.names();
  ASSERT_EQ(names.size(), 56u);
  int exif = 0, png = 0;
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    Image img;
    ASSERT_NO_THROW(img = io::read_image(dir + "/" + name));
    EXPECT_TRUE(same_pixels(img, ref.read(name), name));
    exif += name.rfind("exif", 0) == 0;
    png += name.size() > 4 && name.compare(name.size() - 4, 4, ".png") == 0;
  }
  EXPECT_EQ(exif, 10);
  EXPECT_EQ(png, 39);
  // Without EXIF handling, a rotated JPEG decodes as stored.
  io::DecodeOptions raw;
  raw.apply_exif_orientation = false;
  const Image stored = io::read_image(dir + "/exif6.jpg", raw);
  EXPECT_EQ(stored, io::read_image(dir + "/exif1.jpg"));
  EXPECT_EQ(io::read_image(dir + "/exif6.jpg").width, stored.height);
  fs::remove_all(dir);
}

TEST(ImageDecode, InMemoryDecodeEqualsFileDecode) {
  const std::string dir = testing_util::temp_dir();
  const Image img = random_image(31, 17, 5);
  io::write_png(dir + "/a.png", img);
  const auto bytes = read_bytes(dir + "/a.png");
  EXPECT_EQ(io::decode_image(bytes.data(), bytes.size(), "in memory"), img);
  EXPECT_EQ(io::read_image(dir + "/a.png"), img);
  fs::remove_all(dir);
}

// ---- bad inputs ---------------------------------------------------------------------------

TEST(ImageErrors, MissingEmptyTextAndDirectory) {
  const std::string dir = testing_util::temp_dir();
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/missing.jpg"); }, dir + "/missing.jpg", "No such file"));
  write_bytes(dir + "/empty.jpg", {});
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/empty.jpg"); }, dir + "/empty.jpg", "empty"));
  std::ofstream(dir + "/notes.jpg") << "hello, this is not a picture\n";
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/notes.jpg"); }, dir + "/notes.jpg", "not a JPEG or PNG"));
  write_bytes(dir + "/anim.png", {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0});
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/anim.png"); }, dir + "/anim.png", "GIF"));
  fs::create_directory(dir + "/folder.png");
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/folder.png"); }, dir + "/folder.png", "cannot read"));
  fs::remove_all(dir);
}

TEST(ImageErrors, TruncatedPngAtEveryCutThrows) {
  const std::string dir = testing_util::temp_dir();
  io::write_png(dir + "/full.png", random_image(61, 47, 6));
  const auto bytes = read_bytes(dir + "/full.png");
  ASSERT_GT(bytes.size(), 1000u);
  std::vector<uint8_t> half(bytes.begin(), bytes.begin() + bytes.size() / 2);
  write_bytes(dir + "/half.png", half);
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/half.png"); }, dir + "/half.png", "truncated"));
  int checked = 0;
  for (size_t cut = 1; cut < bytes.size(); cut += (cut + 30 > bytes.size() ? 1 : 7)) {
    const std::string name = "cut at " + std::to_string(cut);
    EXPECT_TRUE(throws_naming([&] { io::decode_image(bytes.data(), cut, name); }, name, ""));
    ++checked;
  }
  EXPECT_GT(checked, 1000);
  fs::remove_all(dir);
}

TEST(ImageErrors, CorruptPngThrows) {
  const std::string dir = testing_util::temp_dir();
  io::write_png(dir + "/ok.png", random_image(20, 10, 7));
  auto bytes = read_bytes(dir + "/ok.png");
  auto bad_crc = bytes;
  bad_crc[17] ^= 0x40;  // inside IHDR's width: its CRC no longer matches
  write_bytes(dir + "/crc.png", bad_crc);
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/crc.png"); }, dir + "/crc.png", "corrupt"));
  auto bad_zlib = bytes;
  // The first IDAT's zlib data (after 8 signature + 25 IHDR + 8 IDAT header bytes).
  for (size_t i = 43; i < 60; ++i) bad_zlib[i] ^= 0x5A;
  write_bytes(dir + "/zlib.png", bad_zlib);
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/zlib.png"); }, dir + "/zlib.png", "corrupt"));
  fs::remove_all(dir);
}

TEST(ImageErrors, PixelLimitRefusesHugeHeadersBeforeAllocating) {
  const std::string dir = testing_util::temp_dir();
  write_bytes(dir + "/huge.png", png_header_only(30000, 30000));
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/huge.png"); }, dir + "/huge.png",
                            "claims 30000x30000 = 900000000 pixels, over the limit of 100000000"));
  // The limit is configurable, and applies exactly.
  io::write_png(dir + "/small.png", random_image(100, 80, 8));
  io::DecodeOptions opt;
  opt.max_pixels = 7999;
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/small.png", opt); }, dir + "/small.png", "limit of 7999"));
  opt.max_pixels = 8000;
  EXPECT_EQ(io::read_image(dir + "/small.png", opt).width, 100);
  fs::remove_all(dir);
}

TEST(ImageErrors, TruncatedAndCorruptJpegThrow) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  const std::string dir = testing_util::temp_dir();
  const auto bytes = read_bytes(shared_sample(data));
  ASSERT_GT(bytes.size(), 10000u);
  ASSERT_NO_THROW(io::decode_image(bytes.data(), bytes.size(), "whole"));
  std::vector<uint8_t> half(bytes.begin(), bytes.begin() + bytes.size() / 2);
  write_bytes(dir + "/half.jpg", half);
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/half.jpg"); }, dir + "/half.jpg", "Premature end of JPEG"));
  // Any cut, in the headers, the scan or the final marker, is an error.
  for (size_t cut = 1; cut < bytes.size(); cut += (cut + 8 > bytes.size() ? 1 : 211)) {
    const std::string name = "cut at " + std::to_string(cut);
    EXPECT_TRUE(throws_naming([&] { io::decode_image(bytes.data(), cut, name); }, name, ""));
  }
  // An end-of-image marker in the middle of the entropy-coded data.
  auto marker = bytes;
  marker[bytes.size() / 2] = 0xFF;
  marker[bytes.size() / 2 + 1] = 0xD9;
  write_bytes(dir + "/marker.jpg", marker);
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/marker.jpg"); }, dir + "/marker.jpg", "Corrupt JPEG data"));
  // A frame header claiming 60000x60000 pixels.
  auto huge = bytes;
  size_t sof = 0;
  for (size_t i = 2; i + 9 < huge.size(); ++i)
    if (huge[i] == 0xFF && (huge[i + 1] == 0xC0 || huge[i + 1] == 0xC1 || huge[i + 1] == 0xC2)) {
      sof = i;
      break;
    }
  ASSERT_GT(sof, 0u);
  huge[sof + 5] = 0xEA;  // height 0xEA60 = 60000
  huge[sof + 6] = 0x60;
  huge[sof + 7] = 0xEA;  // width
  huge[sof + 8] = 0x60;
  write_bytes(dir + "/huge.jpg", huge);
  EXPECT_TRUE(throws_naming([&] { io::read_image(dir + "/huge.jpg"); }, dir + "/huge.jpg",
                            "claims 60000x60000 = 3600000000 pixels, over the limit"));
  fs::remove_all(dir);
}

// ---- writing ------------------------------------------------------------------------------

TEST(ImageWrite, PngRoundTripRgbAndGray) {
  const std::string dir = testing_util::temp_dir();
  const Image rgb = random_image(37, 23, 9);
  io::write_png(dir + "/rgb.png", rgb);
  EXPECT_EQ(io::read_image(dir + "/rgb.png"), rgb);
  std::vector<uint8_t> grey(29 * 11);
  for (size_t i = 0; i < grey.size(); ++i) grey[i] = static_cast<uint8_t>(i * 7 + 3);
  io::write_png_gray(dir + "/grey.png", 29, 11, grey);
  const Image back = io::read_image(dir + "/grey.png");
  ASSERT_EQ(back.width, 29);
  ASSERT_EQ(back.height, 11);
  for (size_t i = 0; i < grey.size(); ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(back.rgb[3 * i + c], grey[i]) << "pixel " << i;
  fs::remove_all(dir);
}

TEST(ImageWrite, AtomicAndLeavesNoPartialFile) {
  const std::string dir = testing_util::temp_dir();
  const std::string out = dir + "/out.png";
  const Image first = random_image(8, 5, 10), second = random_image(9, 4, 11);
  io::write_png(out, first);
  io::write_png(out, second);  // replaces
  EXPECT_EQ(io::read_image(out), second);
  // Bad arguments throw before touching the file.
  Image broken = first;
  broken.rgb.pop_back();
  EXPECT_TRUE(throws_naming([&] { io::write_png(out, broken); }, "write_png", "holds"));
  EXPECT_TRUE(throws_naming([&] { io::write_png_gray(out, 4, 4, std::vector<uint8_t>(15)); }, "write_png_gray",
                            "needs 16 bytes"));
  EXPECT_EQ(io::read_image(out), second);
  // A folder that does not exist; a target that is a folder (the rename fails).
  EXPECT_TRUE(throws_naming([&] { io::write_png(dir + "/no/such/x.png", first); }, dir + "/no/such/x.png", "cannot"));
  fs::create_directory(dir + "/taken.png");
  EXPECT_TRUE(throws_naming([&] { io::write_png(dir + "/taken.png", first); }, dir + "/taken.png", "cannot write"));
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"out.png", "taken.png"}));
  fs::remove_all(dir);
}

// ---- PIL resampling and torchvision's geometry ----------------------------------------------

TEST(ImagePreprocess, ResizeMatchesPilOnSmallCases) {
  Image row(4, 1);
  row.rgb = {0, 0, 0, 100, 50, 1, 200, 250, 3, 255, 7, 9};
  // Values from PIL 9.4: Image.fromarray(row).resize((n, 1), Image.BILINEAR).
  EXPECT_EQ(io::resize_bilinear(row, 2, 1).rgb, (std::vector<uint8_t>{71, 57, 1, 209, 117, 5}));
  EXPECT_EQ(io::resize_bilinear(row, 3, 1).rgb, (std::vector<uint8_t>{30, 15, 0, 150, 150, 2, 239, 80, 7}));
  EXPECT_EQ(io::resize_bilinear(row, 7, 1).rgb,
            (std::vector<uint8_t>{0, 0, 0, 36, 18, 0, 93, 46, 1, 150, 150, 2, 204, 233, 3, 235, 94, 7, 255, 7, 9}));
  Image grid(3, 5);
  for (size_t i = 0; i < grid.rgb.size(); ++i) grid.rgb[i] = static_cast<uint8_t>(i * 5);
  EXPECT_EQ(io::resize_bilinear(grid, 3, 2).rgb, (std::vector<uint8_t>{45, 50, 55, 60, 65, 70, 75, 80, 85, 135, 140,
                                                                       145, 150, 155, 160, 165, 170, 175}));
  // Constant images stay constant; the same size is the identity.
  Image flat(33, 21);
  for (size_t i = 0; i < flat.rgb.size(); ++i) flat.rgb[i] = static_cast<uint8_t>(40 + i % 3 * 90);
  for (auto [w, h] : {std::pair{7, 5}, std::pair{33, 9}, std::pair{50, 21}, std::pair{101, 77}}) {
    const Image r = io::resize_bilinear(flat, w, h);
    ASSERT_EQ(r.width, w);
    ASSERT_EQ(r.height, h);
    for (size_t i = 0; i < r.rgb.size(); ++i) ASSERT_EQ(r.rgb[i], 40 + i % 3 * 90) << w << "x" << h << " at " << i;
  }
  const Image noisy = random_image(13, 8, 12);
  EXPECT_EQ(io::resize_bilinear(noisy, 13, 8), noisy);
  EXPECT_TRUE(throws_naming([&] { io::resize_bilinear(noisy, 0, 8); }, "resize_bilinear", "positive"));
}

TEST(ImagePreprocess, ResizedSizeFollowsTorchvision014) {
  using S = std::array<int, 2>;
  EXPECT_EQ(io::resized_shorter_size(500, 375, 256), (S{341, 256}));
  EXPECT_EQ(io::resized_shorter_size(375, 500, 256), (S{256, 341}));
  EXPECT_EQ(io::resized_shorter_size(333, 500, 256), (S{256, 384}));  // int(384.38...)
  EXPECT_EQ(io::resized_shorter_size(256, 256, 256), (S{256, 256}));
  EXPECT_EQ(io::resized_shorter_size(1000, 3, 256), (S{85333, 256}));
  EXPECT_EQ(io::resized_shorter_size(100, 80, 256), (S{320, 256}));  // upscaling
}

TEST(ImagePreprocess, CenterCropRoundsHalfToEvenAndPads) {
  auto rows = [](int h) {
    Image img(3, h);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < 3; ++x) img.pixel(x, y)[0] = static_cast<uint8_t>(y);
    return img;
  };
  // (257 - 224) / 2 = 16.5 -> 16; (259 - 224) / 2 = 17.5 -> 18; (258 - 224) / 2 = 17.
  EXPECT_EQ(io::center_crop(rows(257), 224, 3).pixel(0, 0)[0], 16);
  EXPECT_EQ(io::center_crop(rows(259), 224, 3).pixel(0, 0)[0], 18);
  EXPECT_EQ(io::center_crop(rows(258), 224, 3).pixel(0, 0)[0], 17);
  // Larger than the image: zero padding, left/top getting the smaller half.
  Image small(5, 4);
  for (auto& v : small.rgb) v = 200;
  const Image padded = io::center_crop(small, 7, 8);
  ASSERT_EQ(padded.width, 8);
  ASSERT_EQ(padded.height, 7);
  EXPECT_EQ(padded.pixel(0, 0)[0], 0);
  EXPECT_EQ(padded.pixel(1, 1)[0], 200);
  EXPECT_EQ(padded.pixel(5, 4)[0], 200);
  EXPECT_EQ(padded.pixel(6, 4)[0], 0);
  EXPECT_EQ(padded.pixel(5, 5)[0], 0);
  // Padded in one dimension, cropped in the other.
  const Image mixed = io::center_crop(rows(9), 4, 6);  // 3 wide -> pad 1 left, 2 right
  EXPECT_EQ(mixed.pixel(0, 0)[0], 0);
  EXPECT_EQ(mixed.pixel(1, 0)[0], 2);  // top = round(2.5) = 2
}

TEST(ImagePreprocess, ToTensorNormalisesInFloat32) {
  Image img(2, 1);
  img.rgb = {0, 128, 255, 10, 20, 30};
  const Tensor t = io::to_tensor(img);
  ASSERT_EQ(t.shape(), (Shape{3, 1, 2}));
  EXPECT_EQ(t.dtype(), DType::F32);
  const auto v = t.to_vector<float>();
  EXPECT_EQ(v[0], (0.0f / 255.0f - 0.485f) / 0.229f);
  EXPECT_EQ(v[1], (10.0f / 255.0f - 0.485f) / 0.229f);
  EXPECT_EQ(v[2], (128.0f / 255.0f - 0.456f) / 0.224f);
  EXPECT_EQ(v[4], (255.0f / 255.0f - 0.406f) / 0.225f);
  const auto out = io::eval_transform(random_image(300, 250, 13));
  EXPECT_EQ(out.tensor.shape(), (Shape{3, 224, 224}));
  EXPECT_EQ(out.image.width, 224);
  EXPECT_EQ(out.image.height, 224);
  EXPECT_EQ(difference(out.tensor, io::to_tensor(out.image)).max, 0.0);
}

TEST(ImagePreprocess, RandomResizedCropBoxesFollowTorchvision) {
  const io::RandomResizedCropOptions opt;
  Generator a(21), b(21), c(22);
  int differ = 0;
  for (int i = 0; i < 300; ++i) {
    const io::CropBox box = io::random_resized_crop_box(500, 375, a, opt);
    const io::CropBox same = io::random_resized_crop_box(500, 375, b, opt);
    const io::CropBox other = io::random_resized_crop_box(500, 375, c, opt);
    ASSERT_EQ(box.top, same.top);
    ASSERT_EQ(box.left, same.left);
    ASSERT_EQ(box.height, same.height);
    ASSERT_EQ(box.width, same.width);
    differ += box.top != other.top || box.width != other.width;
    ASSERT_GE(box.top, 0);
    ASSERT_GE(box.left, 0);
    ASSERT_LE(box.top + box.height, 375);
    ASSERT_LE(box.left + box.width, 500);
    const double area = static_cast<double>(box.width) * box.height / (500.0 * 375.0);
    const double ratio = static_cast<double>(box.width) / box.height;
    // Rounding w and h to integers moves area and ratio a little past the ranges.
    EXPECT_GE(area, 0.08 * 0.9);
    EXPECT_LE(area, 1.0);
    EXPECT_GE(ratio, 0.75 * (1 - 2.0 / box.height) - 1e-9);
    EXPECT_LE(ratio, 4.0 / 3.0 * (1 + 2.0 / box.height) + 1e-9);
  }
  EXPECT_GT(differ, 250);
  EXPECT_GT(a.offset(), 0u);
  // No box fits in 10 tries: the central crop clamped to the ratio range.
  Generator g(23);
  const io::CropBox wide = io::random_resized_crop_box(1000, 10, g, opt);
  EXPECT_EQ((std::array<int, 4>{wide.top, wide.left, wide.height, wide.width}), (std::array<int, 4>{0, 493, 10, 13}));
  const io::CropBox tall = io::random_resized_crop_box(10, 1000, g, opt);
  EXPECT_EQ((std::array<int, 4>{tall.top, tall.left, tall.height, tall.width}), (std::array<int, 4>{493, 0, 13, 10}));
  EXPECT_EQ(g.offset(), 40u);  // 2 x 10 attempts x 2 draws
}

TEST(ImagePreprocess, AugmentationFlipsHalfTheTimeAndIsReproducible) {
  const Image img = random_image(120, 90, 14);
  io::RandomResizedCropOptions opt;
  opt.size = 32;
  Generator g(31);
  int flipped = 0;
  for (int i = 0; i < 400; ++i) {
    const io::Augmented a = io::random_resized_crop_flip(img, g, opt);
    ASSERT_EQ(a.image.width, 32);
    ASSERT_EQ(a.image.height, 32);
    const Image plain = io::resized_crop(img, a.box, 32, 32);
    ASSERT_EQ(a.image, a.flipped ? io::hflip(plain) : plain);
    flipped += a.flipped;
  }
  EXPECT_GT(flipped, 160);
  EXPECT_LT(flipped, 240);
  Generator g1(5), g2(5);
  const Tensor t1 = io::train_transform(img, g1, opt), t2 = io::train_transform(img, g2, opt);
  EXPECT_EQ(t1.shape(), (Shape{3, 32, 32}));
  EXPECT_EQ(difference(t1, t2).max, 0.0);
  EXPECT_EQ(g1.offset(), g2.offset());
  opt.flip_probability = 0.0;
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(io::random_resized_crop_flip(img, g, opt).flipped);
}

// ---- torchvision parity on the real photographs ----------------------------------------------

namespace {

struct ParityReport {
  double worst_max = -1, worst_mean = -1;
  std::string worst_max_file, worst_mean_file;
  void add(const Diff& d, const std::string& file) {
    if (d.max > worst_max) worst_max = d.max, worst_max_file = file;
    if (d.mean > worst_mean) worst_mean = d.mean, worst_mean_file = file;
  }
  std::string str() const {
    return detail::concat("worst max |diff| ", worst_max, " (", fs::path(worst_max_file).filename().string(),
                          "), worst mean |diff| ", worst_mean, " (", fs::path(worst_mean_file).filename().string(), ")");
  }
};

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream f(path);
  for (const auto& l : lines) f << l << "\n";
}

// Our eval_transform of each path against torchvision's; with pixels, the decoded
// images against PIL's as well.
ParityReport check_eval(const std::vector<std::string>& paths, int resize, int crop, bool pixels) {
  const std::string dir = testing_util::temp_dir();
  write_lines(dir + "/list.txt", paths);
  const std::string args = detail::concat("eval --list ", dir, "/list.txt --resize ", resize, " --crop ", crop,
                                          " --out ", dir, "/ref.h5", pixels ? " --pixels" : "");
  ParityReport report;
  EXPECT_EQ(testing_util::run_reference_script("image_reference.py", args), 0);
  if (::testing::Test::HasFailure()) return report;
  io::H5Reader ref(dir + "/ref.h5");
  io::EvalTransformOptions opt;
  opt.resize = resize;
  opt.crop = crop;
  for (size_t k = 0; k < paths.size(); ++k) {
    SCOPED_TRACE(paths[k]);
    const Image img = io::read_image(paths[k]);
    if (pixels) {
      EXPECT_TRUE(same_pixels(img, ref.read("pixels." + std::to_string(k)), paths[k]));
    }
    const io::Preprocessed ours = io::eval_transform(img, opt);
    const Tensor theirs = ref.read("tensor." + std::to_string(k));
    EXPECT_EQ(ours.tensor.shape(), theirs.shape());
    if (ours.tensor.shape() != theirs.shape()) continue;
    const Diff d = difference(ours.tensor, theirs);
    EXPECT_LT(d.max, 0.02);
    EXPECT_LT(d.mean, 0.002);
    report.add(d, paths[k]);
  }
  fs::remove_all(dir);
  return report;
}

}  // namespace

TEST(ImageTorchvision, EvalTransformMatchesOnEverySample) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  REQUIRE_TORCH();
  const auto paths = sample_paths(data);
  ASSERT_EQ(paths.size(), 71u);
  const ParityReport r = check_eval(paths, 256, 224, /*pixels=*/true);
  std::cout << "[ image parity ] Resize(256) CenterCrop(224) over " << paths.size() << " samples: " << r.str() << "\n";
  RecordProperty("worst_max_abs_diff", std::to_string(r.worst_max));
  RecordProperty("worst_mean_abs_diff", std::to_string(r.worst_mean));
}

TEST(ImageTorchvision, OtherSizesMatchIncludingUpscalingAndPadding) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  REQUIRE_TORCH();
  auto all = sample_paths(data);
  std::vector<std::string> some;
  for (size_t i = 0; i < all.size(); i += 12) some.push_back(all[i]);
  // Upscaling (short side 600 > every sample's), and a crop larger than the resized image.
  for (auto [resize, crop] : {std::pair{600, 512}, std::pair{100, 120}, std::pair{299, 299}}) {
    const ParityReport r = check_eval(some, resize, crop, /*pixels=*/false);
    std::cout << "[ image parity ] Resize(" << resize << ") CenterCrop(" << crop << ") over " << some.size()
              << " samples: " << r.str() << "\n";
  }
}

TEST(ImageTorchvision, ResizedCropAndFlipMatchTorchvision) {
  std::string data;
  REQUIRE_SHARED_DATA(data);
  REQUIRE_TORCH();
  const std::string dir = testing_util::temp_dir();
  const auto all = sample_paths(data);
  Generator gen(77);
  io::RandomResizedCropOptions opt;
  std::vector<std::string> lines;
  std::vector<Tensor> ours;
  for (size_t i = 0; i < all.size(); i += 5) {
    const io::Augmented a = io::random_resized_crop_flip(io::read_image(all[i]), gen, opt);
    lines.push_back(detail::concat(a.box.top, " ", a.box.left, " ", a.box.height, " ", a.box.width, " ",
                                   a.flipped ? 1 : 0, " ", all[i]));
    ours.push_back(io::to_tensor(a.image));
  }
  write_lines(dir + "/list.txt", lines);
  ASSERT_EQ(testing_util::run_reference_script("image_reference.py",
                                               "resized-crop --list " + dir + "/list.txt --size 224 --out " + dir +
                                                   "/ref.h5"),
            0);
  io::H5Reader ref(dir + "/ref.h5");
  ParityReport report;
  for (size_t k = 0; k < ours.size(); ++k) {
    SCOPED_TRACE(lines[k]);
    const Diff d = difference(ours[k], ref.read("tensor." + std::to_string(k)));
    EXPECT_LT(d.max, 0.02);
    EXPECT_LT(d.mean, 0.002);
    report.add(d, lines[k]);
  }
  std::cout << "[ image parity ] RandomResizedCrop + flip over " << ours.size() << " crops: " << report.str() << "\n";
  fs::remove_all(dir);
}

// ---- .npy ---------------------------------------------------------------------------------

TEST(ImageNpy, RoundTripAndHeaderLayout) {
  const std::string dir = testing_util::temp_dir();
  for (const Shape& shape : {Shape{3, 5, 7}, Shape{4}, Shape{2, 0, 3}, Shape{1, 1, 1, 1, 129}}) {
    for (DType dt : {DType::F32, DType::F64}) {
      SCOPED_TRACE(shape_str(shape) + " " + dtype_name(dt));
      const Tensor t = testing_util::randn(shape, 40, dt);
      io::write_npy(dir + "/t.npy", t);
      const Tensor back = io::read_npy(dir + "/t.npy");
      ASSERT_EQ(back.shape(), shape);
      ASSERT_EQ(back.dtype(), dt);
      if (t.numel() > 0) {
        EXPECT_EQ(difference(back.to(DType::F32), t.to(DType::F32)).max, 0.0);
      }
      const auto bytes = read_bytes(dir + "/t.npy");
      ASSERT_GE(bytes.size(), 10u);
      EXPECT_EQ(std::string(bytes.begin(), bytes.begin() + 6), "\x93NUMPY");
      EXPECT_EQ(bytes[6], 1);
      EXPECT_EQ(bytes[7], 0);
      const size_t header_len = bytes[8] | (bytes[9] << 8);
      EXPECT_EQ((10 + header_len) % 64, 0u);
      EXPECT_EQ(bytes[10 + header_len - 1], '\n');
      EXPECT_EQ(bytes.size(), 10 + header_len + t.numel() * element_size(dt));
      const std::string header(bytes.begin() + 10, bytes.begin() + 10 + header_len);
      EXPECT_NE(header.find(dt == DType::F32 ? "'descr': '<f4'" : "'descr': '<f8'"), std::string::npos) << header;
      EXPECT_NE(header.find("'fortran_order': False"), std::string::npos) << header;
    }
  }
  io::write_npy(dir + "/v.npy", Tensor::from_vector({3}, std::vector<float>{1, 2, 3}));
  const auto header = read_bytes(dir + "/v.npy");
  EXPECT_NE(std::string(header.begin(), header.end()).find("'shape': (3,)"), std::string::npos);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"t.npy", "v.npy"}));
  fs::remove_all(dir);
}

TEST(ImageNpy, BadFilesThrowNamingTheFile) {
  const std::string dir = testing_util::temp_dir();
  EXPECT_TRUE(throws_naming([&] { io::read_npy(dir + "/missing.npy"); }, dir + "/missing.npy", "cannot open"));
  std::ofstream(dir + "/text.npy") << "not numpy at all";
  EXPECT_TRUE(throws_naming([&] { io::read_npy(dir + "/text.npy"); }, dir + "/text.npy", "bad magic"));
  io::write_npy(dir + "/ok.npy", testing_util::randn({4, 6}, 41, DType::F32));
  auto bytes = read_bytes(dir + "/ok.npy");
  write_bytes(dir + "/short.npy", std::vector<uint8_t>(bytes.begin(), bytes.end() - 5));
  EXPECT_TRUE(throws_naming([&] { io::read_npy(dir + "/short.npy"); }, dir + "/short.npy", "needs 96 bytes"));
  auto swap = [&](const std::string& from, const std::string& to, const std::string& file) {
    std::string s(bytes.begin(), bytes.end());
    const size_t at = s.find(from);
    ASSERT_NE(at, std::string::npos);
    s.replace(at, from.size(), to);
    write_bytes(dir + "/" + file, std::vector<uint8_t>(s.begin(), s.end()));
  };
  swap("<f4", ">f4", "big.npy");
  EXPECT_TRUE(throws_naming([&] { io::read_npy(dir + "/big.npy"); }, dir + "/big.npy", "'>f4' is not supported"));
  swap("False", "True ", "fortran.npy");
  EXPECT_TRUE(throws_naming([&] { io::read_npy(dir + "/fortran.npy"); }, dir + "/fortran.npy", "Fortran"));
  EXPECT_TRUE(throws_naming([&] { io::write_npy(dir + "/no/such/x.npy", Tensor::zeros({2})); },
                            dir + "/no/such/x.npy", "cannot"));
  fs::remove_all(dir);
}

TEST(ImageNpy, NumpyLoadsOursAndWeReadNumpys) {
  REQUIRE_TORCH();
  const std::string dir = testing_util::temp_dir();
  std::vector<float> v(3 * 5 * 7);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 1000) * 0.25f - 7.0f;
  io::write_npy(dir + "/ours.npy", Tensor::from_vector({3, 5, 7}, v));
  ASSERT_EQ(testing_util::run_reference_script("image_reference.py", "check-npy --ours " + dir +
                                                                          "/ours.npy --shape 3,5,7 --numpy-out " +
                                                                          dir + "/theirs.npy"),
            0);
  const Tensor t = io::read_npy(dir + "/theirs.npy");
  ASSERT_EQ(t.shape(), (Shape{2, 3, 4}));
  ASSERT_EQ(t.dtype(), DType::F32);
  const auto got = t.to_vector<float>();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], static_cast<float>(i) * 0.5f - 1.0f) << i;
  fs::remove_all(dir);
}
