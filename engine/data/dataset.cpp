#include "engine/data/dataset.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "engine/error.h"

namespace engine::data {

namespace fs = std::filesystem;

namespace {

bool hidden(const fs::path& p) {
  const std::string n = p.filename().string();
  return !n.empty() && n[0] == '.';
}

bool is_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_directory(p, ec);
}

// Sub-folders of dir, sorted by name.
std::vector<std::string> class_folders(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (!hidden(it->path()) && is_dir(it->path())) out.push_back(it->path().filename().string());
  ENGINE_CHECK(!ec, dir.string(), ": cannot list the folder (", ec.message(), ")");
  std::sort(out.begin(), out.end());
  return out;
}

// The images under dir as torchvision's make_dataset lists them: folders (dir and every
// folder below it) in sorted path order, and within each the file names sorted.
std::vector<std::string> images_under(const fs::path& dir) {
  std::vector<fs::path> folders{dir};
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, ec), end;
       !ec && it != end; it.increment(ec)) {
    if (hidden(it->path())) {
      if (is_dir(it->path())) it.disable_recursion_pending();
      continue;
    }
    if (is_dir(it->path())) folders.push_back(it->path());
  }
  ENGINE_CHECK(!ec, dir.string(), ": cannot list the folder (", ec.message(), ")");
  std::sort(folders.begin(), folders.end(), [](const fs::path& a, const fs::path& b) { return a.string() < b.string(); });
  std::vector<std::string> out;
  for (const fs::path& f : folders) {
    std::vector<std::string> names;
    for (fs::directory_iterator it(f, ec), end; !ec && it != end; it.increment(ec)) {
      const fs::path& p = it->path();
      if (hidden(p) || is_dir(p) || !is_image_name(p.filename().string())) continue;
      names.push_back(p.filename().string());
    }
    ENGINE_CHECK(!ec, f.string(), ": cannot list the folder (", ec.message(), ")");
    std::sort(names.begin(), names.end());
    for (const std::string& n : names) out.push_back((f / n).string());
  }
  return out;
}

// Every class folder's images; an empty class folder is an error.
std::vector<std::vector<std::string>> read_classes(const fs::path& dir, const std::vector<std::string>& classes) {
  std::vector<std::vector<std::string>> out;
  for (const std::string& c : classes) {
    out.push_back(images_under(dir / c));
    ENGINE_CHECK(!out.back().empty(), "empty class folder ", (dir / c).string(),
                 ": it holds no JPEG or PNG images (.jpg, .jpeg, .png)");
  }
  return out;
}

std::vector<Sample> flatten_classes(const std::vector<std::vector<std::string>>& files) {
  std::vector<Sample> out;
  for (size_t c = 0; c < files.size(); ++c)
    for (const std::string& f : files[c]) out.push_back({f, static_cast<int64_t>(c)});
  return out;
}

// Holds out round(n * fraction) images of every class (at least one, leaving at least
// one for training), chosen by a seeded permutation per class; both parts keep the
// folder's order.
void split(const fs::path& dir, const std::vector<std::string>& classes, const std::vector<std::vector<std::string>>& files,
           const ImageFolderOptions& opt, ImageFolder& out) {
  ENGINE_CHECK(opt.test_fraction > 0 && opt.test_fraction < 1, dir.string(),
               ": no test folder, so a fraction of each class is held out; the test fraction must be in (0, 1), got ",
               opt.test_fraction);
  for (size_t c = 0; c < files.size(); ++c) {
    const int64_t n = static_cast<int64_t>(files[c].size());
    ENGINE_CHECK(n >= 2, "class folder ", (dir / classes[c]).string(),
                 " holds a single image: it cannot be split into training and test images");
    const int64_t n_test = std::clamp<int64_t>(std::llround(static_cast<double>(n) * opt.test_fraction), 1, n - 1);
    const std::vector<int64_t> perm = permutation(n, derive_seed(opt.seed, {0x5b117ULL, c}));
    std::vector<bool> is_test(static_cast<size_t>(n), false);
    for (int64_t i = 0; i < n_test; ++i) is_test[static_cast<size_t>(perm[static_cast<size_t>(i)])] = true;
    for (int64_t i = 0; i < n; ++i)
      (is_test[static_cast<size_t>(i)] ? out.test : out.train).push_back({files[c][static_cast<size_t>(i)], static_cast<int64_t>(c)});
  }
}

}  // namespace

bool is_image_name(const std::string& name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos) return false;
  std::string e = name.substr(dot);
  for (char& ch : e) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return e == ".jpg" || e == ".jpeg" || e == ".png";
}

ImageFolder open_image_folder(const std::string& root, const ImageFolderOptions& opt) {
  const fs::path r(root);
  std::error_code ec;
  ENGINE_CHECK(fs::exists(r, ec), root, ": no such folder");
  ENGINE_CHECK(is_dir(r), root, ": not a folder");
  ImageFolder out;
  out.root = root;

  const fs::path train_dir = r / "train";
  if (is_dir(train_dir)) {
    out.classes = class_folders(train_dir);
    ENGINE_CHECK(!out.classes.empty(), train_dir.string(), ": no class folders (expected train/<class>/<images>)");
    const auto train_files = read_classes(train_dir, out.classes);
    fs::path test_dir;
    if (is_dir(r / "test")) test_dir = r / "test";
    else if (is_dir(r / "val")) test_dir = r / "val";
    if (test_dir.empty()) {
      out.layout = "train (split)";
      split(train_dir, out.classes, train_files, opt, out);
      return out;
    }
    out.layout = "train/" + test_dir.filename().string();
    const std::vector<std::string> test_classes = class_folders(test_dir);
    for (const std::string& c : out.classes)
      ENGINE_CHECK(std::binary_search(test_classes.begin(), test_classes.end(), c), "the test split ",
                   test_dir.string(), " is missing class '", c, "' (expected the folder ", (test_dir / c).string(), ")");
    for (const std::string& c : test_classes)
      ENGINE_CHECK(std::binary_search(out.classes.begin(), out.classes.end(), c), "the test split has class folder ",
                   (test_dir / c).string(), " but the training split has no class '", c, "'");
    out.train = flatten_classes(train_files);
    out.test = flatten_classes(read_classes(test_dir, out.classes));
    return out;
  }
  out.classes = class_folders(r);
  ENGINE_CHECK(!out.classes.empty(), root,
               ": no class folders (expected ROOT/train/<class>/, ROOT/test/<class>/, or ROOT/<class>/)");
  out.layout = "classes (split)";
  split(r, out.classes, read_classes(r, out.classes), opt, out);
  return out;
}

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t derive_seed(uint64_t seed, std::initializer_list<uint64_t> parts) {
  uint64_t h = mix64(seed);
  for (uint64_t p : parts) h = mix64(h ^ mix64(p + 0x632be59bd9b4e019ULL));
  return h;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> out(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = i;
  uint64_t state = seed;
  for (int64_t i = n - 1; i > 0; --i) {
    state += 0x9e3779b97f4a7c15ULL;
    const uint64_t r = mix64(state);
    // Multiply-shift maps r to [0, i] (bias below 2^-40 for any realistic n).
    const auto j = static_cast<int64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(i + 1)) >> 64);
    std::swap(out[static_cast<size_t>(i)], out[static_cast<size_t>(j)]);
  }
  return out;
}

}  // namespace engine::data
