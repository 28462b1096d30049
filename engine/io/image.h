// Image files and torchvision's preprocessing.
//
// Decoding: JPEG (libjpeg-turbo) and PNG (libpng), chosen by the file's magic bytes, to
// 8-bit RGB with the pixels PIL gives after Image.open(...).convert("RGB"): the same
// libjpeg settings (islow DCT, fancy upsampling), grey replicated, CMYK/YCCK JPEGs read
// with Adobe's inverted polarity and converted by PIL's formula, PNG alpha and tRNS
// dropped without compositing, 16-bit samples cut to their high byte (16-bit grey is
// clipped to 255, as PIL's "I" -> "RGB" does), palette indices past the end of PLTE
// mapped to PIL's grey ramp. A JPEG's EXIF orientation is applied (as
// ImageOps.exif_transpose does) unless turned off. The header's size is checked
// against a pixel limit before any pixel memory is allocated. Every failure throws
// engine::Error naming the file and the problem; corrupt or truncated data is an error,
// never a partly grey image.
//
// Preprocessing: Resize (shorter side, torchvision 0.14's output-size rule) with PIL's
// antialiased BILINEAR resampling reproduced exactly (separable, horizontal then
// vertical, 22-bit fixed-point coefficients, rounding to uint8 between the passes),
// CenterCrop (zero padding when the crop is larger), ToTensor and Normalize in float32
// as torchvision computes them; and the training augmentation RandomResizedCrop +
// RandomHorizontalFlip driven by an explicit engine::Generator.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/random.h"
#include "engine/tensor.h"

namespace engine::io {

// 8-bit RGB, rows top to bottom, pixels interleaved: rgb[(y * width + x) * 3 + c].
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;

  Image() = default;
  Image(int w, int h);  // zero-filled
  const uint8_t* pixel(int x, int y) const { return rgb.data() + (static_cast<size_t>(y) * width + x) * 3; }
  uint8_t* pixel(int x, int y) { return rgb.data() + (static_cast<size_t>(y) * width + x) * 3; }
  bool operator==(const Image& o) const { return width == o.width && height == o.height && rgb == o.rgb; }
};

struct DecodeOptions {
  // Images whose header claims more pixels than this are refused before allocation.
  int64_t max_pixels = 100'000'000;
  // Rotate/flip JPEGs by their EXIF Orientation tag (torchvision's own pipeline, which
  // opens files with PIL directly, does not).
  bool apply_exif_orientation = true;
};

// Reads and decodes a JPEG or PNG file.
Image read_image(const std::string& path, const DecodeOptions& options = {});
// Decodes an in-memory file; `name` is used in error messages.
Image decode_image(const uint8_t* data, size_t size, const std::string& name,
                   const DecodeOptions& options = {});

// Writes an RGB PNG, or an 8-bit greyscale PNG of width*height bytes, through a
// temporary file in the same folder renamed over `path`: no partial file on error.
void write_png(const std::string& path, const Image& image);
void write_png_gray(const std::string& path, int width, int height, const std::vector<uint8_t>& pixels);

// ---- torchvision transforms -------------------------------------------------------

// PIL's Image.resize(size, BILINEAR) of the whole image (antialiased when shrinking).
Image resize_bilinear(const Image& image, int width, int height);
// Output {width, height} of torchvision's Resize(size) with an int size: the shorter
// side becomes `size`, the longer int(size * long / short). Throws when that output
// would exceed 64 Mpixel (an image more elongated than 1024:1 at 256).
std::array<int, 2> resized_shorter_size(int width, int height, int size);
Image resize_shorter(const Image& image, int size);
// The rectangle [top, top + height) x [left, left + width); pixels outside the image
// are zero (PIL's crop).
Image crop(const Image& image, int top, int left, int height, int width);
// torchvision's CenterCrop: zero padding where the crop exceeds the image, then
// top = int(round((H - height) / 2.0)) with Python's round-half-to-even, likewise left.
Image center_crop(const Image& image, int height, int width);
Image hflip(const Image& image);

struct Normalization {
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
};
// ToTensor + Normalize: float32 [3, H, W], (v / 255 - mean[c]) / std[c] in float32.
Tensor to_tensor(const Image& image, const Normalization& norm = {});

struct EvalTransformOptions {
  int resize = 256;
  int crop = 224;
  Normalization norm;
};
struct Preprocessed {
  Tensor tensor;  // float32 [3, crop, crop], normalised
  Image image;    // the cropped uint8 image the tensor was made from (for overlays)
};
// Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize.
Preprocessed eval_transform(const Image& image, const EvalTransformOptions& options = {});

// ---- training augmentation ----------------------------------------------------------

struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
};
struct RandomResizedCropOptions {
  int size = 224;
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  double flip_probability = 0.5;
  Normalization norm;
};
// RandomResizedCrop.get_params: up to 10 draws of an area fraction in [scale_min,
// scale_max) and a log-uniform aspect ratio; the first box that fits is placed
// uniformly; otherwise the central crop clamped to the ratio range. Each draw uses
// one counter of `gen`.
CropBox random_resized_crop_box(int width, int height, Generator& gen, const RandomResizedCropOptions& options = {});
// Crop, then PIL bilinear resize to width x height (torchvision's resized_crop).
Image resized_crop(const Image& image, const CropBox& box, int height, int width);

struct Augmented {
  Image image;  // size x size, after the flip
  CropBox box;
  bool flipped = false;
};
// RandomResizedCrop(size) then RandomHorizontalFlip(flip_probability).
Augmented random_resized_crop_flip(const Image& image, Generator& gen, const RandomResizedCropOptions& options = {});
// The augmentation followed by ToTensor + Normalize: float32 [3, size, size].
Tensor train_transform(const Image& image, Generator& gen, const RandomResizedCropOptions& options = {});

}  // namespace engine::io
