// Error types. Exceptions end a command; asserts are for programmer errors only.
// UserError: bad input or arguments (CLI exit code 1). Anything else: internal (exit code 2).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace prime {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// A problem with what the user gave us: a file, a flag, a config. Exit code 1.
class UserError : public Error {
 public:
  explicit UserError(const std::string& message) : Error(message) {}
};

// An internal inconsistency (a bug). Exit code 2.
class InternalError : public Error {
 public:
  explicit InternalError(const std::string& message) : Error(message) {}
};

namespace detail {
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

// user_error("tensor ", name, " has shape ", shape) builds the message from its parts.
template <typename... Parts>
UserError user_error(Parts&&... parts) {
  return UserError(detail::concat(std::forward<Parts>(parts)...));
}

template <typename... Parts>
InternalError internal_error(Parts&&... parts) {
  return InternalError(detail::concat(std::forward<Parts>(parts)...));
}

}  // namespace prime

// Programmer-error check that stays on in release builds and names the place.
#define PRIME_CHECK(cond, ...)                                                               \
  do {                                                                                       \
    if (!(cond))                                                                             \
      throw ::prime::internal_error(__FILE__, ":", __LINE__, ": check failed: " #cond ". ", \
                                    ##__VA_ARGS__);                                          \
  } while (0)
