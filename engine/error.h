// The engine's one exception type, and a check macro that builds its message.
// Library code throws; tools catch, print the message and exit 1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace engine {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Args> std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace engine

// ENGINE_CHECK(cond, parts...): throws engine::Error with the parts streamed together.
#define ENGINE_CHECK(cond, ...)                                                   \
  do {                                                                            \
    if (!(cond)) throw ::engine::Error(::engine::detail::concat(__VA_ARGS__));    \
  } while (0)
