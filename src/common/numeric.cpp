#include "common/numeric.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace seqmix::numeric {

uint16_t f32_to_bf16_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

float bf16_bits_to_f32(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

uint16_t f32_to_f16_bits(float value) {
  uint32_t x;
  std::memcpy(&x, &value, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);
  if (abs >= 0x47800000u) {  // >= 65536 after rounding region: overflow to inf
    // values in [65520, 65536) round to inf as well under RNE
    return static_cast<uint16_t>(sign | 0x7C00u);
  }
  if (abs < 0x38800000u) {  // subnormal f16 (|x| < 2^-14)
    const float magnitude = std::fabs(value);
    // f16 subnormal step is 2^-24; nearbyint uses the current (nearest-even) rounding mode
    const float scaled = std::nearbyint(magnitude * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(scaled));
  }
  const uint32_t exponent = ((abs >> 23) - 127 + 15);
  uint32_t mantissa = abs & 0x7FFFFFu;
  uint32_t half = (exponent << 10) | (mantissa >> 13);
  const uint32_t remainder = mantissa & 0x1FFFu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;
  return static_cast<uint16_t>(sign | half);
}

float f16_bits_to_f32(uint16_t bits) {
  const uint32_t sign = (bits & 0x8000u) ? 1u : 0u;
  const int exponent = (bits >> 10) & 0x1F;
  const uint32_t mantissa = bits & 0x3FFu;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa | 0x400u), exponent - 25);
  }
  return sign ? -magnitude : magnitude;
}

namespace {

// Positive fp8 codes are monotonic in value, so encoding is a binary search for the
// neighbouring codes followed by round-to-nearest-even on the code's last bit.
struct Fp8Format {
  int exponent_bits;
  int mantissa_bits;
  int bias;
  uint8_t max_finite_code;  // largest positive finite code
  bool overflow_to_nan;     // e4m3fn has no inf
};

constexpr Fp8Format kE4m3{4, 3, 7, 0x7E, true};
constexpr Fp8Format kE5m2{5, 2, 15, 0x7B, false};

double decode_positive(const Fp8Format& f, uint8_t code) {
  const int exponent = code >> f.mantissa_bits;
  const int mantissa = code & ((1 << f.mantissa_bits) - 1);
  if (exponent == 0) return std::ldexp(static_cast<double>(mantissa), 1 - f.bias - f.mantissa_bits);
  return std::ldexp(static_cast<double>(mantissa + (1 << f.mantissa_bits)), exponent - f.bias - f.mantissa_bits);
}

double decode(const Fp8Format& f, uint8_t bits) {
  const bool negative = bits & 0x80u;
  const uint8_t code = bits & 0x7Fu;
  double magnitude;
  if (code > f.max_finite_code) {
    if (f.overflow_to_nan || code != 0x7C) {
      magnitude = std::numeric_limits<double>::quiet_NaN();
    } else {
      magnitude = std::numeric_limits<double>::infinity();
    }
  } else {
    magnitude = decode_positive(f, code);
  }
  return negative ? -magnitude : magnitude;
}

uint8_t encode(const Fp8Format& f, double value) {
  const uint8_t sign = std::signbit(value) ? 0x80u : 0x00u;
  if (std::isnan(value)) return 0x7Fu;
  const double magnitude = std::fabs(value);
  const uint8_t overflow = f.overflow_to_nan ? 0x7Fu : 0x7Cu;
  const double max_value = decode_positive(f, f.max_finite_code);
  // Round-to-nearest-even past the largest finite code: above the midpoint to the next
  // (non-finite) code overflows; at the midpoint the even code wins, which is max for e4m3fn
  // (0x7E, so 464 -> 448 and 464.5 -> NaN, as torch) and inf for e5m2 (0x7C).
  const double midpoint = max_value + (max_value - decode_positive(f, f.max_finite_code - 1)) / 2.0;
  const bool max_code_is_odd = f.max_finite_code & 1;
  if (std::isinf(magnitude) || magnitude > midpoint || (magnitude == midpoint && max_code_is_odd)) {
    return static_cast<uint8_t>(sign | overflow);
  }
  int lo = 0;
  int hi = f.max_finite_code;
  while (lo < hi) {  // largest code with value <= magnitude
    const int mid = (lo + hi + 1) / 2;
    if (decode_positive(f, static_cast<uint8_t>(mid)) <= magnitude) lo = mid; else hi = mid - 1;
  }
  int code = lo;
  if (code < f.max_finite_code) {
    const double below = decode_positive(f, static_cast<uint8_t>(code));
    const double above = decode_positive(f, static_cast<uint8_t>(code + 1));
    const double d_below = magnitude - below;
    const double d_above = above - magnitude;
    if (d_above < d_below || (d_above == d_below && (code & 1))) code += 1;
  }
  return static_cast<uint8_t>(sign | code);
}

}  // namespace

uint8_t f64_to_fp8_e4m3_bits(double value) { return encode(kE4m3, value); }
double fp8_e4m3_bits_to_f64(uint8_t bits) { return decode(kE4m3, bits); }
uint8_t f64_to_fp8_e5m2_bits(double value) { return encode(kE5m2, value); }
double fp8_e5m2_bits_to_f64(uint8_t bits) { return decode(kE5m2, bits); }

double round_to_bf16(double value) { return bf16_bits_to_f32(f32_to_bf16_bits(static_cast<float>(value))); }
double round_to_f16(double value) { return f16_bits_to_f32(f32_to_f16_bits(static_cast<float>(value))); }
double round_to_fp8_e4m3(double value) { return fp8_e4m3_bits_to_f64(f64_to_fp8_e4m3_bits(value)); }
double round_to_fp8_e5m2(double value) { return fp8_e5m2_bits_to_f64(f64_to_fp8_e5m2_bits(value)); }

}  // namespace seqmix::numeric
