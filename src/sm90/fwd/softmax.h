// softmax.h: online softmax of one warpgroup's rows in fp32, in the log2 domain.
//
// Each thread holds kRows rows (2 per 64-row WGMMA) and a quarter of each row's columns; the
// row maximum is reduced over the quad of threads sharing a row, the row sum is kept per thread
// and reduced only once, in finalize(). p = exp2(s * score_to_log2 - max * score_to_log2) is
// one FFMA + one exp2 per score.
//
// FlashAttention-4's two softmax ideas (Zadouri, Shah, Dao et al. 2025, sec. 3.2), each a
// compile-time choice of the kernel table's forward row (common/kernel_table.h):
//  - kEmulatedPer16: of every 16 columns a thread holds, that many take their exp2 from the
//    FMA units (common/exp2_fma.h) and the rest from MUFU, so both units work on the tile.
//  - kRescaleThreshold (log2 units; 0 = always rescale): the running maximum is replaced, and O
//    and the row sum rescaled, only when a block's maximum exceeds it by more than the
//    threshold. Exact: numerator (O) and denominator (row sum) are both sums of
//    exp2(x - stale max), and LSE adds the same stale max back. Bound: every p <= 2^threshold,
//    so with threshold 8 the row sum is <= 2^8 * seqlen_k (< 2^40), P fits fp16 (<= 256), and O
//    grows by at most 2^8 over the always-rescaled value (|O| <= 2^8 * seqlen_k * max|V|):
//    no fp32 overflow for seqlen_k < 2^31 and |V| < 2^80 (docs/sm90_forward.md).
#pragma once

#include <cmath>

#include <cute/tensor.hpp>

#include "sm90/common/exp2_fma.h"
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

template <int kRows, int kEmulatedPer16 = 0, int kRescaleThreshold = 0>
struct OnlineSoftmax {
  static_assert(kEmulatedPer16 >= 0 && kEmulatedPer16 <= 16, "kEmulatedPer16 counts of 16");
  static_assert(kRescaleThreshold >= 0 && kRescaleThreshold <= 32,
                "the threshold bounds p by 2^threshold; exp2_fma's domain ends at 64");
  float row_max[kRows];  // the maximum the row's p are relative to (possibly stale, see above)
  float row_sum[kRows];  // per-thread partial sums (quad-reduced in finalize)
  float score_to_log2;
  bool rescaled = false;  // some row of this thread got a correction != 1 in the last step
  /// The caller may skip multiplying O by the corrections when `rescaled` is false.
  static constexpr bool kConditionalRescale = kRescaleThreshold > 0;

  __device__ explicit OnlineSoftmax(float score_to_log2_) : score_to_log2(score_to_log2_) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  /// exp2 of column c of a row: the FMA-unit polynomial for kEmulatedPer16 of every 16 columns.
  /// (c is a compile-time constant once the column loop is unrolled.)
  __device__ static float exp2_of_column(float x, int c) {
    return (c % 16) < kEmulatedPer16 ? exp2_fma(x) : score_exp2(x);
  }

  /// Folds one tile of scores (row, col view) into the running statistics and overwrites the
  /// scores with unnormalized probabilities. correction[r] is the factor the output rows
  /// accumulated so far must be multiplied by (1 on the first tile); `rescaled` says whether
  /// any of this thread's factors differs from 1.
  template <bool kFirst, class TensorRC>
  __device__ void step(TensorRC& tS, float (&correction)[kRows]) {
    using namespace cute;
    static_assert(decltype(size<0>(tS))::value == kRows);
    rescaled = false;
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float m = kFirst ? -INFINITY : row_max[r];
      CUTE_UNROLL
      for (int c = 0; c < size<1>(tS); ++c) m = fmaxf(m, tS(r, c));
      m = softmax_detail::quad_max(m);
      if constexpr (kFirst) {
        correction[r] = 1.f;
        row_max[r] = m;
      } else {
        // Move the maximum when it grew (always, or by more than the threshold). A row with no
        // visible key so far (max -inf) moves to its first finite maximum (+inf > threshold)
        // and keeps -inf while it sees none (-inf - -inf is NaN: not greater). The factor is
        // formed from the difference of the raw maxima, so an unchanged maximum gives exactly
        // exp2(0) = 1. (exp2(old * c - base) contracts to an FFMA whose result is base's
        // rounding error, about 1e-7: a factor 1 + 1e-7 applied on every K/V block biased the
        // row sum by blocks * 1e-7, 2e-5 of LSE at seqlen 16k.)
        const float grew = (m - row_max[r]) * score_to_log2;
        const bool move = kRescaleThreshold > 0 ? grew > float(kRescaleThreshold)
                                                : m != -INFINITY;
        correction[r] = move ? score_exp2((row_max[r] - m) * score_to_log2) : 1.f;
        rescaled |= move;
        row_max[r] = move ? m : row_max[r];
      }
      // A row with no visible key so far keeps max = -inf; use 0 as its base so that
      // exp2(-inf - base) = 0 (MUFU; exp2_fma gives ~1e-38) instead of exp2(-inf + inf) = NaN.
      const float base = (row_max[r] == -INFINITY) ? 0.f : row_max[r] * score_to_log2;
      // The tile's sum goes into kSumLanes independent partials, added pairwise and then into
      // the running sum: shorter dependency chains than one running sum over every column, and
      // rounding that grows with the number of blocks rather than of columns.
      constexpr int kSumLanes = 4;
      float part[kSumLanes] = {};
      CUTE_UNROLL
      for (int c = 0; c < size<1>(tS); ++c) {
        const float p = exp2_of_column(fmaf(tS(r, c), score_to_log2, -base), c);
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

  /// Row normalizers and natural-log LSE. A row that saw no visible key (its maximum is still
  /// -inf; its row sum is 0, or ~1e-38 per column where exp2_fma ran) gets factor 0 (O = 0) and
  /// LSE -inf.
  ///
  /// With an attention sink (problem.h; sink_log2 = sink * log2(e), -inf without one) the sink
  /// joins the denominator as a key without a value. In log2 units, with m = row_max *
  /// score_to_log2 (possibly stale, see the top of the file) and top = max(m, sink_log2):
  ///   total = sum * 2^(m - top) + 2^(sink_log2 - top),  factor = 2^(m - top) / total,
  ///   LSE = (top + log2(total)) * ln 2.
  /// Forming the terms relative to top keeps both <= 1 (total in [1, 2 + sum]), so a sink far
  /// above the scores cannot overflow; a row with no visible key gets O = 0 and LSE = sink.
  /// Without a sink the first branch is taken: the same instructions as before sinks existed.
  __device__ void finalize(float (&inv_sum)[kRows], float (&lse)[kRows],
                           float sink_log2 = -INFINITY) const {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = softmax_detail::quad_sum(row_sum[r]);
      const bool empty = row_max[r] == -INFINITY;
      if (sink_log2 == -INFINITY) {
        inv_sum[r] = empty ? 0.f : 1.f / sum;
        lse[r] = empty ? -INFINITY
                       : (row_max[r] * score_to_log2 + __log2f(sum)) * kLn2F;
      } else {
        const float m = empty ? -INFINITY : row_max[r] * score_to_log2;
        const float top = fmaxf(m, sink_log2);
        const float keys = empty ? 0.f : score_exp2(m - top);
        const float total = fmaf(sum, keys, score_exp2(sink_log2 - top));
        inv_sum[r] = keys / total;
        lse[r] = (top + __log2f(total)) * kLn2F;
      }
    }
  }
};

}  // namespace flashlane::sm90
