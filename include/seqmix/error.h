// seqmix::Error and SEQMIX_CHECK: every public entry validates its arguments and throws
// an Error whose message names the argument, the expected and the actual value.
#pragma once

#include <charconv>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace seqmix {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
// Appends without iostreams for strings and numbers: on the H100 machine (pip torch 2.11, g++ 13.3) an
// ostream insertion of an integer inside the PyTorch extension crashed with SIGSEGV in
// basic_ostream::_M_insert<long> (the locale's num_put facet); to_chars does not touch the locale.
template <class T>
void append(std::string& out, const T& value) {
  using D = std::decay_t<T>;
  if constexpr (std::is_same_v<D, bool>) {
    out += value ? "true" : "false";
  } else if constexpr (std::is_same_v<D, char>) {
    out += value;
  } else if constexpr (std::is_arithmetic_v<D>) {
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
    out.append(buffer, result.ptr);
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    out += std::string_view(value);
  } else {
    std::ostringstream os;
    os << value;
    out += os.str();
  }
}

template <class... Args>
std::string str_cat(Args&&... args) {
  std::string out;
  (append(out, args), ...);
  return out;
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
