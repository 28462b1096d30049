// Image datasets in torchvision's ImageFolder layout, and the seeded orderings used to
// split and shuffle them.
//
// Layouts (checked in this order):
//   ROOT/train/<class>/... with ROOT/test/<class>/... or ROOT/val/<class>/...
//   ROOT/train/<class>/... alone: the train folder is split (stratified, seeded)
//   ROOT/<class>/...: the whole folder is split (stratified, seeded)
// Classes are the sub-folders, sorted by name (byte order, as Python's sorted()); the
// images of a class are the JPEG/PNG files (by extension, any case) anywhere under its
// folder, in the order torchvision's make_dataset lists them. Hidden entries are ignored.
// An empty class folder, or a test folder that lacks a training class (or has one the
// training folder lacks), is an error naming the folder.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace engine::data {

struct Sample {
  std::string path;
  int64_t label = 0;
};

struct ImageFolder {
  std::string root;
  std::string layout;  // "train/test", "train/val", "train (split)", "classes (split)"
  std::vector<std::string> classes;
  std::vector<Sample> train, test;
};

struct ImageFolderOptions {
  // Fraction of each class held out for testing when the layout has no test folder.
  double test_fraction = 0.2;
  // Seed of the stratified split.
  uint64_t seed = 0;
};

ImageFolder open_image_folder(const std::string& root, const ImageFolderOptions& options = {});

// True for names ending in .jpg, .jpeg or .png (any case).
bool is_image_name(const std::string& name);

// ---- seeded orderings (independent of the platform's standard library) -------------

// splitmix64's finaliser: a bijective 64-bit mix.
uint64_t mix64(uint64_t x);
// A seed derived from a parent seed and a list of integers (an epoch, a sample index).
uint64_t derive_seed(uint64_t seed, std::initializer_list<uint64_t> parts);
// A permutation of [0, n) by Fisher-Yates driven by splitmix64 from `seed`.
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

}  // namespace engine::data
