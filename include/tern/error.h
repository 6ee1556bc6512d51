// tern::Error is the one exception type for user-facing failures: a bad file, a bad
// flag, a shape that does not fit. The CLI prints its message and exits with code 1.
// Messages name the file and the field, so users can tell what to fix.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace tern {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace tern
