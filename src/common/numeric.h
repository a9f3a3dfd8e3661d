// Scalar conversions between double and the storage dtypes (bf16, f16, fp8 e4m3fn / e5m2).
// Rounding is round-to-nearest-even, as PyTorch's casts; fp8 e4m3fn overflow gives NaN and
// e5m2 overflow gives inf (torch's non-saturating cast): quantizers clamp before casting.
#pragma once

#include <cstdint>

namespace seqmix::numeric {

uint16_t f32_to_bf16_bits(float value);
float bf16_bits_to_f32(uint16_t bits);
uint16_t f32_to_f16_bits(float value);
float f16_bits_to_f32(uint16_t bits);
uint8_t f64_to_fp8_e4m3_bits(double value);
double fp8_e4m3_bits_to_f64(uint8_t bits);
uint8_t f64_to_fp8_e5m2_bits(double value);
double fp8_e5m2_bits_to_f64(uint8_t bits);

inline constexpr double kFp8E4m3Max = 448.0;
inline constexpr double kFp8E5m2Max = 57344.0;

// Round a double through a storage dtype and back (emulates storing in that dtype).
double round_to_bf16(double value);
double round_to_f16(double value);
double round_to_fp8_e4m3(double value);
double round_to_fp8_e5m2(double value);

}  // namespace seqmix::numeric
