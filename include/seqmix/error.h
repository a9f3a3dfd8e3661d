// seqmix::Error and SEQMIX_CHECK: every public entry validates its arguments and throws
// an Error whose message names the argument, the expected and the actual value.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace seqmix {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <class... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace seqmix

#define SEQMIX_CHECK(cond, ...)                                                     \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      throw ::seqmix::Error(::seqmix::detail::str_cat("seqmix: ", __VA_ARGS__));    \
    }                                                                               \
  } while (0)

#define SEQMIX_NOT_IMPLEMENTED(...) \
  throw ::seqmix::Error(::seqmix::detail::str_cat("seqmix: not implemented: ", __VA_ARGS__))
