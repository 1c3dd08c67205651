// softmax.h: online softmax of one warpgroup's rows in fp32, in the log2 domain.
//
// Each thread holds kRows rows (2 per 64-row WGMMA) and a quarter of each row's columns; the
// row maximum is reduced over the quad of threads sharing a row, the row sum is kept per thread
// and reduced only once, in finalize(). p = exp2(s * score_to_log2 - max * score_to_log2) is
// one FFMA + one exp2 (common/score_math.h) per score.
//
// Extension points for the performance work (FlashAttention-4's softmax):
//  - score_exp2() (common/score_math.h): the place for a partly emulated exp2 (a polynomial on
//    the FMA units for a fraction of the columns) to offload MUFU;
//  - rescale decision in step(): conditional rescaling (keep the stale maximum unless the new
//    one exceeds it by more than a threshold) changes only the `correction` computed there.
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "sm90/common/score_math.h"

namespace flashlane::sm90 {

namespace softmax_detail {
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
}  // namespace softmax_detail

/// Gemma-2 softcap: s <- tanh(s * prescale) (common/score_math.h); the factor c of c * tanh is
/// folded into score_to_log2.
template <class Tensor>
__device__ void apply_softcap(Tensor& tS, float prescale) {
  CUTE_UNROLL
  for (int i = 0; i < cute::size(tS); ++i) tS(i) = softcap_tanh<Reciprocal::kIeee>(tS(i), prescale);
}

template <int kRows>
struct OnlineSoftmax {
  float row_max[kRows];
  float row_sum[kRows];  // per-thread partial sums (quad-reduced in finalize)
  float score_to_log2;

  __device__ explicit OnlineSoftmax(float score_to_log2_) : score_to_log2(score_to_log2_) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  /// Folds one tile of scores (row, col view) into the running statistics and overwrites the
  /// scores with unnormalized probabilities. correction[r] is the factor the output rows
  /// accumulated so far must be multiplied by (1 on the first tile).
  template <bool kFirst, class TensorRC>
  __device__ void step(TensorRC& tS, float (&correction)[kRows]) {
    using namespace cute;
    static_assert(decltype(size<0>(tS))::value == kRows);
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float m = kFirst ? -INFINITY : row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(tS); ++c) m = fmaxf(m, tS(r, c));
      m = softmax_detail::quad_max(m);
      // A row with no visible key so far keeps max = -inf; use 0 as its base so that
      // exp2(-inf - base) = 0 instead of exp2(-inf + inf) = NaN.
      const float base = (m == -INFINITY) ? 0.f : m * score_to_log2;
      // The factor is formed from the difference of the raw maxima, so an unchanged maximum
      // gives exactly exp2(0) = 1. (exp2(old * c - base) contracts to an FFMA whose result is
      // base's rounding error, about 1e-7: a factor 1 + 1e-7 applied on every K/V block biased
      // the row sum by blocks * 1e-7, 2e-5 of LSE at seqlen 16k.) A row with no visible key so
      // far (m = -inf) keeps factor 1: its sum and output are still 0.
      correction[r] = (kFirst || m == -INFINITY) ? 1.f : score_exp2((row_max[r] - m) * score_to_log2);
      row_max[r] = m;
      // The tile's sum goes into kSumLanes independent partials, added pairwise and then into
      // the running sum: shorter dependency chains than one running sum over every column, and
      // rounding that grows with the number of blocks rather than of columns.
      constexpr int kSumLanes = 4;
      float part[kSumLanes] = {};
      CUTE_UNROLL
      for (int c = 0; c < size<1>(tS); ++c) {
        const float p = score_exp2(fmaf(tS(r, c), score_to_log2, -base));
        tS(r, c) = p;
        part[c % kSumLanes] += p;
      }
      const float tile_sum = (part[0] + part[1]) + (part[2] + part[3]);
      row_sum[r] = kFirst ? tile_sum : fmaf(row_sum[r], correction[r], tile_sum);
    }
  }

  /// Multiplies the output rows by per-row factors (row, col view).
  template <class TensorRC>
  __device__ static void scale_rows(TensorRC& tO, const float (&factor)[kRows]) {
    using namespace cute;
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(tO); ++c) tO(r, c) *= factor[r];
    }
  }

  /// Row normalizers and natural-log LSE. A row that saw no visible key has sum 0: its output
  /// factor is 0 (O = 0) and its LSE is -inf.
  __device__ void finalize(float (&inv_sum)[kRows], float (&lse)[kRows]) const {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = softmax_detail::quad_sum(row_sum[r]);
      const bool empty = !(sum > 0.f);
      inv_sum[r] = empty ? 0.f : 1.f / sum;
      lse[r] = empty ? -INFINITY
                     : (row_max[r] * score_to_log2 + __log2f(sum)) * kLn2F;
    }
  }
};

}  // namespace flashlane::sm90
