// Internal to the engine's HDF5 code: an RAII holder for HDF5 ids, turning off HDF5's
// own error printing (the engine reports errors itself), and the lock that every call
// into libhdf5 holds.
#pragma once

#include <hdf5.h>

#include <mutex>

namespace engine::io::detail {

// Closes an HDF5 handle at scope exit.
struct Handle {
  hid_t id;
  herr_t (*close)(hid_t);
  Handle(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  ~Handle() {
    if (id >= 0) close(id);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
};

inline void silence_hdf5() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

// Debian's libhdf5 is the serial build, which is not thread-safe; and H5Reader forks a
// child process while it holds this lock, so no other thread can be inside libhdf5 (with
// its state half updated) at that moment. Held around every call into libhdf5, from any
// thread; recursive, so that a locked function may call another. Take it before creating
// any Handle, so that the handles close under it.
inline std::unique_lock<std::recursive_mutex> lock_hdf5() {
  static std::recursive_mutex mu;
  return std::unique_lock<std::recursive_mutex>(mu);
}

}  // namespace engine::io::detail
