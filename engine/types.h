// Element types, devices and shapes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace engine {

enum class DType { F32, F64 };

inline std::size_t element_size(DType t) { return t == DType::F32 ? 4 : 8; }
inline const char* dtype_name(DType t) { return t == DType::F32 ? "float32" : "float64"; }

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };

enum class DeviceType { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }
  // "cpu", "cuda", "cuda:1" or "auto" (CUDA when a device is present, else CPU).
  static Device parse(const std::string& name);

  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

// True when at least one CUDA device can be used (never throws).
bool cuda_available();

using Shape = std::vector<int64_t>;

int64_t numel_of(const Shape& shape);
// "[2, 3, 224, 224]"
std::string shape_str(const Shape& shape);

// Calls f(T{}) with T = float or double according to dtype.
template <typename F> decltype(auto) dispatch_dtype(DType t, F&& f) {
  if (t == DType::F32) return f(float{});
  return f(double{});
}

}  // namespace engine
