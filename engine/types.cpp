#include "engine/types.h"

#include <sstream>

#include "engine/error.h"
#include "kernels/cuda_runtime.h"

namespace engine {

bool cuda_available() { return kernels::cuda::device_count() > 0; }

Device Device::parse(const std::string& name) {
  if (name == "cpu") return cpu();
  if (name == "auto") return cuda_available() ? cuda(0) : cpu();
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (name.size() > 5) {
      try {
        size_t used = 0;
        index = std::stoi(name.substr(5), &used);
        ENGINE_CHECK(used == name.size() - 5 && index >= 0, "bad device name '", name, "'");
      } catch (const std::logic_error&) {
        throw Error("bad device name '" + name + "': expected cpu, cuda, cuda:N or auto");
      }
    }
    const int count = kernels::cuda::device_count();
    ENGINE_CHECK(count > 0, "device '", name,
                 "' requested but no CUDA device is available (no GPU, no driver, or a build "
                 "without CUDA); use --device cpu or auto");
    ENGINE_CHECK(index < count, "device '", name, "' requested but only ", count,
                 " CUDA device(s) exist");
    kernels::cuda::set_device(index);
    return cuda(index);
  }
  throw Error("bad device name '" + name + "': expected cpu, cuda, cuda:N or auto");
}

std::string Device::str() const {
  return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
}

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

}  // namespace engine
