// kernel.h: the sm90 decode attention kernel: split-KV over a dense or paged cache, with the
// query heads of one KV head packed into the rows of a tile (PackGQA).
//
// Work of one CTA (grid: m_blocks * num_splits, heads_kv, batch):
//   rows   kDecodeBlockM packed rows r of (batch b, kv head h): r = i * group + g is query
//          position i of query head h * group + g, so a GQA 32/8 decode step (seqlen_q 1)
//          reads each K/V tile once for its 4 query heads;
//   keys   split `split` of the sequence's visible key blocks: the blocks [lo, hi) any row of
//          the tile sees are divided into num_splits equal runs at run time (the sequence's
//          actual seqlen_k = cache_seqlens[b] + seqlen_new is read on the device).
// Four warps share each 64-key tile, 16 keys each: every warp keeps its own online softmax
// (max, sum, O in registers) over its keys, as in Flash-Decoding, and the warps are merged in
// shared memory at the end, in a fixed order (deterministic). K/V tiles stream through a
// multistage cp.async pipeline (kv_tile_loader.h) that refills a slot before waiting for the
// next tile; the products are mma.sync m16n8k16 (fp32 accumulation) with ldmatrix operands:
// memory-bound work, where WGMMA's tile sizes would only pad the 4-16 useful rows further.
//
// Output: num_splits == 1 writes O (input dtype) and LSE; otherwise each CTA writes its partial
// O (fp32, already normalized by its own sum) and LSE to the workspace for combine.h. A row
// that sees no key (an empty cache, rows above the causal diagonal, an empty split) gives O = 0
// and LSE = -inf.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm80.hpp>
#include <cute/arch/mma_sm80.hpp>

#include "sm90/common/score_math.h"
#include "sm90/decode/kv_tile_loader.h"
#include "sm90/decode/params.h"
#include "sm90/decode/split_plan.h"

namespace flashlane::sm90::decode {

template <bool kBf16>
struct HalfTraits {
  using Element = cute::conditional_t<kBf16, __nv_bfloat16, __half>;
  using Pair = cute::conditional_t<kBf16, __nv_bfloat162, __half2>;
  using Mma = cute::conditional_t<kBf16, cute::SM80_16x8x16_F32BF16BF16F32_TN,
                                  cute::SM80_16x8x16_F32F16F16F32_TN>;
  __device__ static uint32_t pack(float lo, float hi) {
    Pair v;
    if constexpr (kBf16) {
      v = __floats2bfloat162_rn(lo, hi);
    } else {
      v = __floats2half2_rn(lo, hi);
    }
    return reinterpret_cast<uint32_t&>(v);
  }
};

/// The per-thread view of one packed row of the tile (rows g and g + 8 of the m16 fragments).
struct PackedRow {
  bool valid = false;
  int q_pos = 0, q_head = 0;
  int key_lo = 0, key_hi = 0;  // visible keys [key_lo, key_hi)
};

__device__ __forceinline__ PackedRow packed_row(const DecodeParams& p, int m_block, int local_row,
                                                int kv_head, int seqlen_k) {
  PackedRow r;
  const int row = m_block * kDecodeBlockM + local_row;
  if (row >= p.seqlen_q * p.group) return r;
  r.valid = true;
  r.q_pos = row / p.group;
  r.q_head = kv_head * p.group + row % p.group;
  int64_t lo, hi;
  p.rule.key_range(r.q_pos, p.seqlen_q, seqlen_k, &lo, &hi);
  r.key_lo = int(lo);
  r.key_hi = int(hi > lo ? hi : lo);
  return r;
}

template <int kHeadDim, bool kBf16, bool kPaged>
__global__ void __launch_bounds__(kDecodeThreads, decode_ctas_per_sm(kHeadDim))
    decode_kernel(const __grid_constant__ DecodeParams p) {
  using T = HalfTraits<kBf16>;
  using Element = typename T::Element;
  using Geo = TileGeometry<kHeadDim>;
  constexpr int kStages = decode_stages(kHeadDim);
  constexpr int kKSteps = kHeadDim / 16;  // k-steps of S = Q K^T
  constexpr int kNTiles = kHeadDim / 8;   // n8 tiles of O = P V

  extern __shared__ __align__(128) cute::uint128_t smem[];
  cute::uint128_t* k_smem = smem;
  cute::uint128_t* v_smem = smem + kStages * Geo::kTileElems / 8;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, c = lane % 4;  // fragment row / column group
  const int m_block = blockIdx.x % p.m_blocks, split = blockIdx.x / p.m_blocks;
  const int kv_head = blockIdx.y, b = blockIdx.z;
  const int seqlen_k = (p.cache_seqlens != nullptr ? p.cache_seqlens[b] : p.capacity) + p.seqlen_new;

  const PackedRow row_lo = packed_row(p, m_block, g, kv_head, seqlen_k);
  const PackedRow row_hi = packed_row(p, m_block, g + 8, kv_head, seqlen_k);

  // Key blocks of the tile: from the first row's lo to the last valid row's hi (both bounds are
  // non-decreasing in the row), then this split's share.
  int blocks_begin = 0, blocks_end = 0;
  {
    const int rows = p.seqlen_q * p.group;
    const int first = m_block * kDecodeBlockM;
    const int last = min(first + kDecodeBlockM, rows) - 1;
    int64_t lo_first, hi_first, lo_last, hi_last;
    p.rule.key_range(first / p.group, p.seqlen_q, seqlen_k, &lo_first, &hi_first);
    p.rule.key_range(last / p.group, p.seqlen_q, seqlen_k, &lo_last, &hi_last);
    if (hi_last > lo_first) {
      const int n_min = int(lo_first / kDecodeBlockN);
      const int n_max = int((hi_last + kDecodeBlockN - 1) / kDecodeBlockN);
      const int per_split = (n_max - n_min + p.num_splits - 1) / p.num_splits;
      blocks_begin = min(n_min + split * per_split, n_max);
      blocks_end = min(blocks_begin + per_split, n_max);
    }
  }
  const int n_tiles = blocks_end - blocks_begin;

  const KvTileLoader<kHeadDim, kPaged> loader(p, b, kv_head, seqlen_k, tid);
  CUTE_UNROLL
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_tiles) {
      loader.load(blocks_begin + s, k_smem + s * Geo::kTileElems / 8, v_smem + s * Geo::kTileElems / 8);
    }
    cute::cp_async_fence();
  }

  // Q fragments (A operand, rows g / g + 8, features 16 kk + 2c (+1) and + 8), zero for
  // padding rows: in registers, or above head_dim 128 in shared memory (swizzled like K),
  // read back by ldmatrix at every tile.
  constexpr bool kQSmem = decode_q_in_smem(kHeadDim);
  constexpr int kQRegSteps = kQSmem ? 1 : kKSteps;
  uint32_t q_frag[kQRegSteps][4];
  cute::uint128_t* q_smem = v_smem + kStages * Geo::kTileElems / 8;
  {
    const auto* q = static_cast<const Element*>(p.q);
    if constexpr (kQSmem) {
      for (int idx = tid; idx < kDecodeBlockM * Geo::kChunks; idx += kDecodeThreads) {
        const int r = idx / Geo::kChunks, ch = idx % Geo::kChunks;
        const PackedRow row = packed_row(p, m_block, r, kv_head, seqlen_k);
        cute::uint128_t v{};
        if (row.valid) {
          v = *reinterpret_cast<const cute::uint128_t*>(
              q + b * p.q_batch_stride + int64_t(row.q_pos) * p.q_row_stride +
              int64_t(row.q_head) * p.q_head_stride + ch * 8);
        }
        q_smem[Geo::swizzled(r, ch)] = v;
      }
    } else {
      const Element* q_lo = q + b * p.q_batch_stride + int64_t(row_lo.q_pos) * p.q_row_stride +
                            int64_t(row_lo.q_head) * p.q_head_stride;
      const Element* q_hi = q + b * p.q_batch_stride + int64_t(row_hi.q_pos) * p.q_row_stride +
                            int64_t(row_hi.q_head) * p.q_head_stride;
      CUTE_UNROLL
      for (int kk = 0; kk < kQRegSteps; ++kk) {
        const int f = kk * 16 + 2 * c;
        q_frag[kk][0] = row_lo.valid ? *reinterpret_cast<const uint32_t*>(q_lo + f) : 0u;
        q_frag[kk][1] = row_hi.valid ? *reinterpret_cast<const uint32_t*>(q_hi + f) : 0u;
        q_frag[kk][2] = row_lo.valid ? *reinterpret_cast<const uint32_t*>(q_lo + f + 8) : 0u;
        q_frag[kk][3] = row_hi.valid ? *reinterpret_cast<const uint32_t*>(q_hi + f + 8) : 0u;
      }
    }
  }

  float o_acc[kNTiles][4];
  CUTE_UNROLL
  for (int n = 0; n < kNTiles; ++n) o_acc[n][0] = o_acc[n][1] = o_acc[n][2] = o_acc[n][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running maxima (log2 domain), rows g / g + 8
  float l_lo = 0.f, l_hi = 0.f;              // this thread's part of the running sums

  const int key_row = warp * 16;  // the warp's keys within a tile
  const int lrow = lane % 8, lmat = lane / 8;

  for (int t = 0; t < n_tiles; ++t) {
    // Tile t + kStages - 1 goes into the slot of tile t - 1 as soon as every warp is done with
    // that one, before waiting for tile t: kStages tiles in flight while the CTA waits (one
    // barrier more per tile than waiting first, for half again as many bytes in flight).
    __syncthreads();
    {
      const int next = t + kStages - 1;
      if (next < n_tiles) {
        const int slot = next % kStages;
        loader.load(blocks_begin + next, k_smem + slot * Geo::kTileElems / 8,
                    v_smem + slot * Geo::kTileElems / 8);
      }
      cute::cp_async_fence();
    }
    cute::cp_async_wait<kStages - 1>();
    __syncthreads();  // tile t, copied by every thread, is visible to all
    const cute::uint128_t* k_tile = k_smem + (t % kStages) * Geo::kTileElems / 8;
    const cute::uint128_t* v_tile = v_smem + (t % kStages) * Geo::kTileElems / 8;

    // S = Q K^T for the warp's 16 keys: two n8 tiles. ldmatrix.x4 matrices: (keys 0-7, chunk
    // 2kk), (keys 0-7, chunk 2kk+1), (keys 8-15, chunk 2kk), (keys 8-15, chunk 2kk+1).
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    {
      const int r = key_row + (lmat / 2) * 8 + lrow;
      CUTE_UNROLL
      for (int kk = 0; kk < kKSteps; ++kk) {
        uint32_t a[4];
        if constexpr (kQSmem) {
          // Matrices (rows 0-7, chunk 2kk), (rows 8-15, 2kk), (rows 0-7, 2kk+1), (rows 8-15,
          // 2kk+1): a0a1, a2a3, a4a5, a6a7.
          const int qr = (lmat % 2) * 8 + lrow;
          cute::SM75_U32x4_LDSM_N::copy(q_smem[Geo::swizzled(qr, 2 * kk + lmat / 2)], a[0], a[1],
                                        a[2], a[3]);
        } else {
          a[0] = q_frag[kk][0];
          a[1] = q_frag[kk][1];
          a[2] = q_frag[kk][2];
          a[3] = q_frag[kk][3];
        }
        uint32_t b0, b1, b2, b3;
        cute::SM75_U32x4_LDSM_N::copy(k_tile[Geo::swizzled(r, 2 * kk + lmat % 2)], b0, b1, b2, b3);
        T::Mma::fma(s[0][0], s[0][1], s[0][2], s[0][3], a[0], a[1], a[2], a[3], b0, b1, s[0][0],
                    s[0][1], s[0][2], s[0][3]);
        T::Mma::fma(s[1][0], s[1][1], s[1][2], s[1][3], a[0], a[1], a[2], a[3], b2, b3, s[1][0],
                    s[1][1], s[1][2], s[1][3]);
      }
    }

    // Scores to the log2 domain, masked by select (a masked key may hold anything).
    const int key0 = (blocks_begin + t) * kDecodeBlockN + key_row + 2 * c;
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
    CUTE_UNROLL
    for (int n = 0; n < 2; ++n) {
      CUTE_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + n * 8 + (e & 1);
        const PackedRow& row = e < 2 ? row_lo : row_hi;
        float x = s[n][e];
        if (p.has_softcap) x = softcap_tanh<Reciprocal::kFast>(x, p.softcap_prescale);
        x *= p.score_to_log2;
        x = (key >= row.key_lo && key < row.key_hi) ? x : -INFINITY;
        s[n][e] = x;
        if (e < 2) {
          mx_lo = fmaxf(mx_lo, x);
        } else {
          mx_hi = fmaxf(mx_hi, x);
        }
      }
    }
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
    // A row that has seen no key yet keeps base 0: exp2(-inf - 0) = 0, never -inf - -inf.
    const float base_lo = new_lo == -INFINITY ? 0.f : new_lo;
    const float base_hi = new_hi == -INFINITY ? 0.f : new_hi;
    const float corr_lo = score_exp2(m_lo - base_lo), corr_hi = score_exp2(m_hi - base_hi);
    m_lo = new_lo;
    m_hi = new_hi;
    uint32_t p_frag[4];
    {
      float sum_lo = 0.f, sum_hi = 0.f;
      CUTE_UNROLL
      for (int n = 0; n < 2; ++n) {
        s[n][0] = score_exp2(s[n][0] - base_lo);
        s[n][1] = score_exp2(s[n][1] - base_lo);
        s[n][2] = score_exp2(s[n][2] - base_hi);
        s[n][3] = score_exp2(s[n][3] - base_hi);
        sum_lo += s[n][0] + s[n][1];
        sum_hi += s[n][2] + s[n][3];
      }
      l_lo = l_lo * corr_lo + sum_lo;
      l_hi = l_hi * corr_hi + sum_hi;
      // The accumulator layout of two n8 tiles is the A layout of one k16 step.
      p_frag[0] = T::pack(s[0][0], s[0][1]);
      p_frag[1] = T::pack(s[0][2], s[0][3]);
      p_frag[2] = T::pack(s[1][0], s[1][1]);
      p_frag[3] = T::pack(s[1][2], s[1][3]);
    }
    CUTE_UNROLL
    for (int n = 0; n < kNTiles; ++n) {
      o_acc[n][0] *= corr_lo;
      o_acc[n][1] *= corr_lo;
      o_acc[n][2] *= corr_hi;
      o_acc[n][3] *= corr_hi;
    }

    // O += P V: ldmatrix.trans x4 matrices (keys 0-7, chunk 2f), (keys 8-15, chunk 2f),
    // (keys 0-7, chunk 2f+1), (keys 8-15, chunk 2f+1) = B of n8 tiles 2f and 2f + 1.
    {
      const int r = key_row + (lmat % 2) * 8 + lrow;
      CUTE_UNROLL
      for (int f = 0; f < kNTiles / 2; ++f) {
        uint32_t b0, b1, b2, b3;
        cute::SM75_U16x8_LDSM_T::copy(v_tile[Geo::swizzled(r, 2 * f + lmat / 2)], b0, b1, b2, b3);
        float* o0 = o_acc[2 * f];
        float* o1 = o_acc[2 * f + 1];
        T::Mma::fma(o0[0], o0[1], o0[2], o0[3], p_frag[0], p_frag[1], p_frag[2], p_frag[3], b0,
                    b1, o0[0], o0[1], o0[2], o0[3]);
        T::Mma::fma(o1[0], o1[1], o1[2], o1[3], p_frag[0], p_frag[1], p_frag[2], p_frag[3], b2,
                    b3, o1[0], o1[1], o1[2], o1[3]);
      }
    }
  }
  cute::cp_async_wait<0>();
  // The combine kernel (a programmatic dependent launch) may be scheduled from here on; it
  // waits for this grid's completion before reading anything.
  asm volatile("griddepcontrol.launch_dependents;");

  // Merge the four warps. Row sums over the quad first.
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  __shared__ float warp_max[4][kDecodeBlockM], warp_sum[4][kDecodeBlockM];
  if (c == 0) {
    warp_max[warp][g] = m_lo;
    warp_max[warp][g + 8] = m_hi;
    warp_sum[warp][g] = l_lo;
    warp_sum[warp][g + 8] = l_hi;
  }
  __syncthreads();  // also: every warp is done with the K/V tiles, reused below
  // This warp's weight for row r: 2^(m_own - M) / L, with the tile maximum M = max_w m_w and
  // total L = sum_w l_w 2^(m_w - M); 0 for a row no warp saw a key of.
  auto warp_weight = [&](int r, float m_own) {
    float mmax = -INFINITY;
    CUTE_UNROLL
    for (int w = 0; w < 4; ++w) mmax = fmaxf(mmax, warp_max[w][r]);
    if (mmax == -INFINITY) return 0.f;
    float sum = 0.f;
    CUTE_UNROLL
    for (int w = 0; w < 4; ++w) sum += warp_sum[w][r] * score_exp2(warp_max[w][r] - mmax);
    return score_exp2(m_own - mmax) / sum;
  };
  const float w_lo = warp_weight(g, m_lo);
  const float w_hi = warp_weight(g + 8, m_hi);

  // Each warp's weighted O into shared memory, fp32 [warp][row][d].
  float* o_smem = reinterpret_cast<float*>(smem);
  static_assert(4 * kDecodeBlockM * kHeadDim * 4 <= decode_smem_bytes(kHeadDim));
  CUTE_UNROLL
  for (int n = 0; n < kNTiles; ++n) {
    const int col = n * 8 + 2 * c;
    float* dst_lo = o_smem + (warp * kDecodeBlockM + g) * kHeadDim + col;
    float* dst_hi = o_smem + (warp * kDecodeBlockM + g + 8) * kHeadDim + col;
    *reinterpret_cast<float2*>(dst_lo) = make_float2(o_acc[n][0] * w_lo, o_acc[n][1] * w_lo);
    *reinterpret_cast<float2*>(dst_hi) = make_float2(o_acc[n][2] * w_hi, o_acc[n][3] * w_hi);
  }
  __syncthreads();

  // The tile's rows: 8 threads per row, kHeadDim / 8 contiguous features each.
  constexpr int kCols = kHeadDim / 8;
  const int out_row = tid / 8, col0 = (tid % 8) * kCols;
  const PackedRow row = packed_row(p, m_block, out_row, kv_head, seqlen_k);
  if (!row.valid) return;
  float acc[kCols];
  CUTE_UNROLL
  for (int j = 0; j < kCols; ++j) acc[j] = 0.f;
  CUTE_UNROLL
  for (int w = 0; w < 4; ++w) {
    const float* src = o_smem + (w * kDecodeBlockM + out_row) * kHeadDim + col0;
    CUTE_UNROLL
    for (int j = 0; j < kCols; j += 4) {
      const float4 v = *reinterpret_cast<const float4*>(src + j);
      acc[j] += v.x;
      acc[j + 1] += v.y;
      acc[j + 2] += v.z;
      acc[j + 3] += v.w;
    }
  }
  float row_max = -INFINITY, row_sum = 0.f;
  CUTE_UNROLL
  for (int w = 0; w < 4; ++w) row_max = fmaxf(row_max, warp_max[w][out_row]);
  if (row_max != -INFINITY) {
    CUTE_UNROLL
    for (int w = 0; w < 4; ++w) row_sum += warp_sum[w][out_row] * score_exp2(warp_max[w][out_row] - row_max);
  }
  // Natural-log LSE: (M + log2 L) * ln 2; -inf for a row that saw no key.
  float lse = row_sum > 0.f ? (row_max + __log2f(row_sum)) * kLn2F : -INFINITY;

  if (p.num_splits == 1) {
    if (p.learnable_sink != nullptr) {
      // The sink joins the denominator (problem.h): LSE' = log(e^LSE + e^sink), O' = O e^(LSE - LSE').
      const float sink = p.learnable_sink[row.q_head];
      const float top = fmaxf(lse, sink);
      const float with_sink = top + __logf(__expf(lse - top) + __expf(sink - top));
      const float factor = __expf(lse - with_sink);  // 0 for a row that saw no key
      CUTE_UNROLL
      for (int j = 0; j < kCols; ++j) acc[j] *= factor;
      lse = with_sink;
    }
    auto* o = static_cast<Element*>(p.o) + b * p.o_batch_stride + int64_t(row.q_pos) * p.o_row_stride +
              int64_t(row.q_head) * p.o_head_stride + col0;
    CUTE_UNROLL
    for (int j = 0; j < kCols; j += 8) {
      uint4 packed;
      packed.x = T::pack(acc[j], acc[j + 1]);
      packed.y = T::pack(acc[j + 2], acc[j + 3]);
      packed.z = T::pack(acc[j + 4], acc[j + 5]);
      packed.w = T::pack(acc[j + 6], acc[j + 7]);
      *reinterpret_cast<uint4*>(o + j) = packed;
    }
    if (p.lse != nullptr && tid % 8 == 0) {
      p.lse[b * p.lse_batch_stride + int64_t(row.q_head) * p.lse_head_stride +
            int64_t(row.q_pos) * p.lse_row_stride] = lse;
    }
  } else {
    const int64_t prow =
        ((int64_t(split) * p.batch + b) * p.heads_q + row.q_head) * p.seqlen_q + row.q_pos;
    float* o = p.o_partial + prow * kHeadDim + col0;
    CUTE_UNROLL
    for (int j = 0; j < kCols; j += 4) {
      *reinterpret_cast<float4*>(o + j) = make_float4(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
    }
    if (tid % 8 == 0) p.lse_partial[prow] = lse;
  }
}

}  // namespace flashlane::sm90::decode
