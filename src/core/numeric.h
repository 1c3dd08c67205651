// numeric.h: host-side conversions between float and the 16-bit formats (IEEE fp16, bfloat16),
// round-to-nearest-even, NaN and infinity preserved. Used by reference_cpu, the CLI and tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "flashlane/tensor.h"

namespace flashlane::numeric {

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_fp16(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero in fp16: round abs / 2^-24 to an integer
    const float a = bits_float(abs);
    const float scaled = a * 16777216.0f;  // 2^24
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t mant = abs & 0x7fffffu;
  uint32_t exp = (abs >> 23) - 127 + 15;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h += 1;  // may carry into the exponent
  return static_cast<uint16_t>(sign | h);
}
inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/// Rounds a double to float with round-to-odd: truncate, then set the last bit when inexact.
/// Rounding that result to a 16-bit format (round-to-nearest-even) equals rounding the double
/// directly, which a plain double -> float -> 16-bit chain does not always give.
inline float double_to_float_round_odd(double d) {
  float f = static_cast<float>(d);
  if (!std::isfinite(d) || static_cast<double>(f) == d) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return bits_float(float_bits(f) | 1u);
}

/// Reads element `index` (in elements from `base`) of a floating tensor as double.
inline double load(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kFloat16: return fp16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::kFloat32: return static_cast<const float*>(base)[index];
    case DType::kFloat64: return static_cast<const double*>(base)[index];
    case DType::kInt32: return static_cast<const int32_t*>(base)[index];
  }
  return 0.0;
}
/// Writes `value` rounded to `dtype` at element `index` of `base`.
inline void store(void* base, DType dtype, int64_t index, double value) {
  switch (dtype) {
    case DType::kFloat16: static_cast<uint16_t*>(base)[index] = float_to_fp16(double_to_float_round_odd(value)); break;
    case DType::kBFloat16: static_cast<uint16_t*>(base)[index] = float_to_bf16(double_to_float_round_odd(value)); break;
    case DType::kFloat32: static_cast<float*>(base)[index] = static_cast<float>(value); break;
    case DType::kFloat64: static_cast<double*>(base)[index] = value; break;
    case DType::kInt32: static_cast<int32_t*>(base)[index] = static_cast<int32_t>(value); break;
  }
}
/// Rounds `value` through `dtype` (what storing and reloading would give).
inline double round_to(DType dtype, double value) {
  switch (dtype) {
    case DType::kFloat16: return fp16_to_float(float_to_fp16(double_to_float_round_odd(value)));
    case DType::kBFloat16: return bf16_to_float(float_to_bf16(double_to_float_round_odd(value)));
    case DType::kFloat32: return static_cast<float>(value);
    default: return value;
  }
}

}  // namespace flashlane::numeric
