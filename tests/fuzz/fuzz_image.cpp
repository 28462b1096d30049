// libFuzzer target: image decoding (JPEG and PNG, chosen by the magic bytes) followed by
// torchvision's evaluation preprocessing, as `predict` and `saliency` run them on a file.
//
// A finding is anything but a clean return or an engine::Error: a crash, a sanitizer
// report, another exception escaping, or a decoded image that breaks its invariants.
// The pixel limit is lowered to 4 Mpixel so that each run stays fast; the limit itself
// is covered by test_image and test_bad_input.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "engine/error.h"
#include "engine/io/image.h"

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_image: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  engine::io::DecodeOptions options;
  options.max_pixels = int64_t(1) << 22;
  engine::io::Image image;
  try {
    image = engine::io::decode_image(data, size, "fuzz-input", options);
  } catch (const engine::Error&) {
    return 0;  // refused with a message: the expected outcome for most inputs
  }
  if (image.width <= 0 || image.height <= 0) finding("decoded an empty image");
  if (static_cast<int64_t>(image.width) * image.height > options.max_pixels) finding("decoded past the pixel limit");
  if (image.rgb.size() != static_cast<size_t>(image.width) * image.height * 3) finding("pixel buffer of the wrong size");
  try {
    const engine::io::Preprocessed pre = engine::io::eval_transform(image);
    if (pre.tensor.shape() != engine::Shape{3, 224, 224}) finding("eval_transform gave the wrong shape");
    if (pre.image.width != 224 || pre.image.height != 224) finding("eval_transform cropped to the wrong size");
  } catch (const engine::Error&) {
    // e.g. an image too elongated to resize: refused with a message
  }
  return 0;
}
