// exp2_fma.h: 2^x computed on the FMA units instead of the MUFU unit (FlashAttention-4,
// "software emulation of exp2", Zadouri, Shah, Dao et al. 2025, sec. 3.2; there on Blackwell).
//
// The forward's softmax needs one exp2 per score. On Hopper the MUFU unit runs 16 ex2 per clock
// per SM, the FMA units 128 FFMA: at head_dim 64 the ex2 of a tile take as long as its two GEMMs.
// Computing a fraction of the exp2s here moves that work to the FMA pipe, which runs in parallel.
//
// Algorithm (Cody-Waite range reduction, then a polynomial):
//   x = x < -125 ? -125 : x          clamp (-inf included; NaN stays NaN): keeps 2^j normal
//   t = x + 1.5 * 2^23 (round to nearest)  -> the low mantissa bits of t hold j = rint(x)
//   j = t - 1.5 * 2^23, f = x - j    both exact; f in [-1/2, 1/2]
//   p = c0 + f (c1 + f (c2 + f (c3 + f c4)))   ~ 2^f, in [0.707, 1.415]
//   2^j = the float of bits (bits(t) << 23) + (127 << 23): the shift keeps the low 9 bits of
//         t's mantissa, j mod 512, so the exponent field is j + 127 (in [2, 191] for the domain)
//   2^x = p * 2^j, exact (a power-of-two scaling of a normal float); NaN x gives NaN p, NaN out.
// Every step is an FADD, FFMA, FMUL or integer op: nothing runs on MUFU.
//
// The polynomial is the degree-4 minimax approximation of 2^f on [-1/2, 1/2] in relative error
// (Remez exchange, 40 digits, coefficients then rounded to fp32): max relative error 2.59e-6 in
// exact arithmetic. Measured over every fp32 f in [-1/2, 1/2] with fp32 coefficients and
// Horner's rule in FFMA the maximum is 2.70e-6, within kExp2FmaMaxRelError below
// (tests/cpu/test_exp2_fma.cpp).
// Degree 4, not FlashAttention-4's 3: the degree-3 minimax error is 7.5e-5, and when the row's
// maximum falls on an emulated column the row sum, hence LSE, inherits it; FlashAttention's
// rule here allows LSE 1e-5 beyond twice the low-precision reference's error. Degree 4 keeps even
// a row whose every exp2 is emulated within 2.6e-6 of LSE.
//
// Domain: x <= 64 (the softmax passes x <= its rescaling threshold, common/score_math.h); x =
// -inf and x < -125 give 2^-125 * p(f) ~ 2.4e-38 instead of 0. The softmax therefore decides
// "no visible key" from the row maximum, never from a zero row sum (fwd/softmax.h), and such a
// tiny p next to the row maximum's p >= 2^-1 changes the row sum by < 1e-37 relative.
// Host and device compute bit-identical results (fmaf is fused on both).
#pragma once

#include <cstdint>
#include <cstring>

#include "sm90/common/host_device.h"

namespace flashlane::sm90 {

/// Maximum relative error of exp2_fma against 2^x on [-125, 64], measured exhaustively over the
/// reduced argument (tests/cpu/test_exp2_fma.cpp); the exact-arithmetic minimax bound is 2.59e-6.
inline constexpr double kExp2FmaMaxRelError = 2.75e-6;

namespace exp2_fma_detail {
// Degree-4 minimax coefficients of 2^f on [-1/2, 1/2] (relative error), rounded to fp32.
inline constexpr float kC0 = 0.99999928474426270f;
inline constexpr float kC1 = 0.69312179088592530f;
inline constexpr float kC2 = 0.24024744331836700f;
inline constexpr float kC3 = 0.05591785907745361f;
inline constexpr float kC4 = 0.00957010220736265f;
inline constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: x + it rounds x to an integer
inline constexpr float kMinArgument = -125.0f;     // 2^(-125 - 1/2) is still a normal float

FLASHLANE_HOST_DEVICE inline uint32_t bits_of(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}
FLASHLANE_HOST_DEVICE inline float float_of(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}
// Additions that the compiler may neither reassociate nor fuse into an FFMA.
FLASHLANE_HOST_DEVICE inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  volatile float s = a + b;
  return s;
#endif
}
FLASHLANE_HOST_DEVICE inline float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  volatile float s = a - b;
  return s;
#endif
}
}  // namespace exp2_fma_detail

/// 2^x on the FMA units; x <= 64 (see the file comment for the algorithm, domain and error).
FLASHLANE_HOST_DEVICE inline float exp2_fma(float x) {
  using namespace exp2_fma_detail;
  x = x < kMinArgument ? kMinArgument : x;  // -inf -> the clamp; NaN fails the test, stays NaN
  const float t = add_rn(x, kRoundMagic);
  const float f = sub_rn(x, sub_rn(t, kRoundMagic));
  float p = fmaf(kC4, f, kC3);
  p = fmaf(p, f, kC2);
  p = fmaf(p, f, kC1);
  p = fmaf(p, f, kC0);
  const float two_to_j = float_of((bits_of(t) << 23) + (127u << 23));
  return p * two_to_j;
}

}  // namespace flashlane::sm90
