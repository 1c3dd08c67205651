// score_math.h: the score arithmetic every sm90 kernel shares, written once.
//   host:   ScoreScale, the softmax scale (and softcap) folded into the log2 domain;
//   device: softcap_tanh (Gemma 2's s * tanh(x / s), the tanh part) and exp2 of a score.
// The exp2 below is the one place where a partly emulated exp2 (FlashAttention-4: a polynomial
// on the FMA units for a fraction of the elements, to offload the MUFU unit) goes.
#pragma once

#include <cmath>

namespace flashlane::sm90 {

inline constexpr double kLog2e = 1.4426950408889634;  // log2(e)
inline constexpr float kLog2eF = 1.4426950408889634f;
inline constexpr float kLn2F = 0.6931471805599453f;  // ln(2): log2-domain LSE -> natural log

/// Scores in the log2 domain: p = exp2(x * score_to_log2 - max * score_to_log2) where
///   no softcap:  x = q.k,                                score_to_log2 = softmax_scale * log2(e)
///   softcap c:   x = tanh(q.k * softcap_prescale),       softcap_prescale = softmax_scale / c,
///                score_to_log2 = c * log2(e) (the "c *" of c * tanh folded in).
struct ScoreScale {
  float score_to_log2 = 0.f;
  float softcap_prescale = 0.f;
  bool has_softcap = false;
};

inline ScoreScale score_scale(double softmax_scale, double softcap) {
  ScoreScale s;
  s.has_softcap = softcap > 0.0;
  if (s.has_softcap) {
    s.softcap_prescale = float(softmax_scale / softcap);
    s.score_to_log2 = float(softcap * kLog2e);
  } else {
    s.score_to_log2 = float(softmax_scale * kLog2e);
  }
  return s;
}

#if defined(__CUDACC__)

/// 2^x of a score on the MUFU unit (ex2.approx: relative error ~2^-22; exp2(-inf) = 0).
__device__ __forceinline__ float score_exp2(float x) { return exp2f(x); }

/// How softcap_tanh divides 2 by (e + 1): the same formula and error bound either way.
///   kIeee: __frcp_rn, correctly rounded; its slow path is a subroutine called out of line.
///   kFast: __fdividef, within 2 ulp, inline.
/// Which one leaves a kernel's non-softcap path as it was depends on that kernel's register
/// allocation (the softcap code shares the kernel with it). Measured A/B on an H200
/// (docs/PERF.md, "One kernel family"): the forward keeps its speed with kIeee (kFast: head_dim
/// 64 3-5% slower, head_dim 96 spills), the backward with kFast (kIeee: more spills, up to 10%
/// slower at head_dim 128/256).
enum class Reciprocal { kIeee, kFast };

/// tanh(x * prescale) to ~2e-7 absolute, also under --use_fast_math (where tanhf becomes
/// tanh.approx, of ~5e-4 error): tanh(y) = 1 - 2 / (2^(2 log2(e) y) + 1), the scale folded into
/// one multiply (prescale * 2 log2(e) is loop-invariant). Large y gives 2^... = +inf and
/// tanh = 1, large -y gives 0 and tanh = -1, never NaN.
template <Reciprocal kReciprocal>
__device__ __forceinline__ float softcap_tanh(float x, float prescale) {
  constexpr float kTwoLog2e = 2.0f * kLog2eF;
  const float e = exp2f(x * (prescale * kTwoLog2e));
  if constexpr (kReciprocal == Reciprocal::kIeee) {
    return 1.f - 2.f * __frcp_rn(e + 1.f);
  } else {
    return 1.f - __fdividef(2.f, e + 1.f);
  }
}

#endif  // __CUDACC__

}  // namespace flashlane::sm90
