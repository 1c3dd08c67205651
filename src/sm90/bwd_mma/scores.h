// scores.h: the element-wise middle of every backward tile: from the fp32 products
// S = Q K^T and dP = dO V^T to P = softmax(S) (recomputed from the stored LSE) and
// dS = P * (dP - delta) (times the tanh derivative with softcap), for the next tensor-core
// products. P and dS are stored as two-term sums hi + lo of the input dtype (hi = rounded value,
// lo = rounded remainder) and every product that reads them runs twice: a single rounding
// (FlashAttention's choice) puts the errors of dQ/dK/dV at 2.2x the low-precision reference's
// in our test sweep, above FlashAttention's 2x rule; the split leaves ~2^-16 relative error
// for 1.6x the tensor-core work of those three products.
#pragma once

#include <cmath>

#include "core/attention_rules.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd_mma/tiles.h"

namespace flashlane::sm90::bwd {

/// Shared memory of one CTA. Edges padded (tiles.h); every array 128-byte aligned because the
/// fragment loads need 32-byte aligned block addresses.
template <class T, int D, int DV, int BM, int BN>
struct BwdSmem {
  static constexpr int kLdK = D + kPadHalf, kLdV = DV + kPadHalf;
  static constexpr int kLdS = BN + kPadFloat, kLdP = BN + kPadHalf;
  // Query-side tiles are double-buffered: the key-tile kernel copies the next query tile
  // (cp.async) while it computes on the current one.
  static constexpr int kQStages = 2;
  alignas(128) T k[BN * kLdK];
  alignas(128) T v[BN * kLdV];
  alignas(128) T q[kQStages][BM * kLdK];
  alignas(128) T dout[kQStages][BM * kLdV];
  alignas(128) float s[BM * kLdS];
  alignas(128) float dp[BM * kLdS];
  // P and dS as two-term sums hi + lo in the input dtype (see scores_to_p_ds).
  alignas(128) T p[BM * kLdP];
  alignas(128) T ds[BM * kLdP];
  alignas(128) T p_lo[BM * kLdP];
  alignas(128) T ds_lo[BM * kLdP];
  alignas(128) float scratch[kWarps][kFrag * kFrag];  // one 16x16 block per warp (epilogues)
  alignas(16) float lse_log2[kQStages][BM];
  alignas(16) float delta[kQStages][BM];
};

/// tanh to ~1e-7 absolute even under --use_fast_math (where tanhf becomes tanh.approx, whose
/// ~2^-11 relative error would enter P and dS at the level of the bf16 rounding).
__device__ inline float tanh_accurate(float x) {
  constexpr float kTwoLog2e = 2.8853900817779268f;  // 2 * log2(e)
  const float e = exp2f(kTwoLog2e * fabsf(x));      // +inf for large |x|: t -> 1
  return copysignf(1.f - __fdividef(2.f, e + 1.f), x);
}

/// P and dS of the tile (queries m0.., keys n0..) from s and dp. Invisible pairs (mask,
/// beyond the sequences) are selected to 0, never computed from garbage.
template <class T, int D, int DV, int BM, int BN>
__device__ inline void scores_to_p_ds(BwdSmem<T, D, DV, BM, BN>& sm, const BwdParams& p, int stage,
                                      int m0, int n0, int len_q, int used_k) {
  using Smem = BwdSmem<T, D, DV, BM, BN>;
  for (int idx = threadIdx.x; idx < BM * BN; idx += kThreads) {
    const int r = idx / BN, c = idx % BN;
    const int i = m0 + r, j = n0 + c;
    float x = sm.s[r * Smem::kLdS + c];
    float dtanh = 1.f;
    if (p.has_softcap) {
      x = tanh_accurate(x * p.softcap_prescale);
      dtanh = 1.f - x * x;
    }
    const bool visible = i < len_q && p.mask.visible(i, j, len_q, used_k);
    const float pv = visible ? exp2f(x * p.score_to_log2 - sm.lse_log2[stage][r]) : 0.f;
    const float dsv = visible ? pv * (sm.dp[r * Smem::kLdS + c] - sm.delta[stage][r]) * dtanh : 0.f;
    const T p_hi = to_elem<T>(pv), ds_hi = to_elem<T>(dsv);
    sm.p[r * Smem::kLdP + c] = p_hi;
    sm.ds[r * Smem::kLdP + c] = ds_hi;
    sm.p_lo[r * Smem::kLdP + c] = to_elem<T>(pv - to_float(p_hi));
    sm.ds_lo[r * Smem::kLdP + c] = to_elem<T>(dsv - to_float(ds_hi));
  }
}

/// S = Q K^T and dP = dO V^T of the tile into sm.s / sm.dp (all warps; caller syncs).
template <class T, int D, int DV, int BM, int BN>
__device__ inline void compute_s_dp(BwdSmem<T, D, DV, BM, BN>& sm, int stage, int warp) {
  using Smem = BwdSmem<T, D, DV, BM, BN>;
  AccFrag acc[frags_per_warp<BM, BN>()];
  zero(acc);
  warp_gemm<BM, BN, D, RowMajor, ColMajor>(acc, sm.q[stage], Smem::kLdK, sm.k, Smem::kLdK, warp);
  store_frags<BN>(acc, sm.s, Smem::kLdS, warp);
  zero(acc);
  warp_gemm<BM, BN, DV, RowMajor, ColMajor>(acc, sm.dout[stage], Smem::kLdV, sm.v, Smem::kLdV, warp);
  store_frags<BN>(acc, sm.dp, Smem::kLdS, warp);
}

/// LSE (log2 units) and delta of query rows m0.. of head hq into stage 0 (synchronous loads);
/// rows beyond the sequence get +inf / 0.
template <class T, int D, int DV, int BM, int BN>
__device__ inline void load_row_stats(BwdSmem<T, D, DV, BM, BN>& sm, const BwdParams& p, int hq,
                                      int64_t ws_row, int rows) {
  if (threadIdx.x < BM) {
    const int r = threadIdx.x;
    const int64_t at = int64_t(hq) * p.ws_rows + ws_row + r;
    sm.lse_log2[0][r] = r < rows ? p.lse_log2[at] : INFINITY;
    sm.delta[0][r] = r < rows ? p.delta[at] : 0.f;
  }
}

}  // namespace flashlane::sm90::bwd
