// append_rotary.h: the append step of a KV-cache call (flashlane/kvcache.h), before attention.
//
//   k_new / v_new row j of sequence b goes to cache position cache_seqlens[b] + j (dense: cache
//   row cache_batch_idx[b] or b; paged: page page_table[b, t / page_size], slot t % page_size),
//   k rotated at that position when rotary is on, rounded to the cache dtype by the store;
//   with rotary, q row i is rotated at cache_seqlens[b] + i (causal or local calls) or at
//   cache_seqlens[b] (others) into the workspace copy the attention kernel reads (rounded to
//   q's dtype); the caller's q is never written.
// Rotary (Su et al. 2021, RoFormer, eq. 34), the convention of FlashAttention's
// flash_attn_with_kvcache: interleaved (GPT-J) pairs (2c, 2c + 1), otherwise (GPT-NeoX) pairs
// (c, c + rotary_dim / 2); x1' = x1 cos - x2 sin, x2' = x1 sin + x2 cos in fp32, with cos / sin
// = rotary_cos / rotary_sin[pos, c]; features from rotary_dim on pass unchanged.
//
// One warp per (sequence, row, head) of k_new (with its v_new row) or of q; a few hundred bytes
// each, so plain element loads.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sm90/decode/params.h"

namespace flashlane::sm90::decode {

/// The cos / sin value at (pos, c), whatever floating dtype the tables have.
__device__ __forceinline__ float rotary_value(const void* table, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(table)[index]);
    case DType::kFloat16: return __half2float(static_cast<const __half*>(table)[index]);
    case DType::kFloat64: return float(static_cast<const double*>(table)[index]);
    default: return static_cast<const float*>(table)[index];
  }
}

template <class Element>
__device__ __forceinline__ float to_float(Element x) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return __half2float(x);
  }
}
template <class Element>
__device__ __forceinline__ Element from_float(float x) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return __float2half_rn(x);
  }
}

/// One row of head_dim features from src to dst, the first rotary_dim rotated at `pos`
/// (rotary_dim 0: a copy). Lanes stride over pairs, then over the remaining features.
template <class Element>
__device__ void rotate_row(const DecodeParams& p, const Element* src, Element* dst, int64_t pos,
                           int lane) {
  const int half = p.rotary_dim / 2;
  for (int c = lane; c < half; c += 32) {
    const int i1 = p.rotary_interleaved ? 2 * c : c;
    const int i2 = p.rotary_interleaved ? 2 * c + 1 : c + half;
    const float cs = rotary_value(p.rotary_cos, p.rotary_dtype, pos * p.rotary_cos_stride + c);
    const float sn = rotary_value(p.rotary_sin, p.rotary_dtype, pos * p.rotary_sin_stride + c);
    const float x1 = to_float(src[i1]), x2 = to_float(src[i2]);
    dst[i1] = from_float<Element>(x1 * cs - x2 * sn);
    dst[i2] = from_float<Element>(x1 * sn + x2 * cs);
  }
  for (int f = p.rotary_dim + lane; f < p.head_dim; f += 32) dst[f] = src[f];
}

/// Grid: ceil(items / 4) CTAs of 4 warps; items = batch * seqlen_new * heads_kv appends, then
/// (rotary only) batch * seqlen_q * heads_q query rows.
template <class Element>
__global__ void __launch_bounds__(128) decode_append_kernel(const __grid_constant__ DecodeParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t item = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int64_t appends = int64_t(p.batch) * p.seqlen_new * p.heads_kv;
  if (item < appends) {
    const int h = int(item % p.heads_kv);
    const int j = int((item / p.heads_kv) % p.seqlen_new);
    const int b = int(item / (int64_t(p.heads_kv) * p.seqlen_new));
    const int64_t pos = int64_t(p.cache_seqlens[b]) + j;
    int64_t k_off, v_off;
    if (p.page_table != nullptr) {
      const int64_t page = p.page_table[b * p.page_table_stride + pos / p.page_size];
      const int64_t slot = pos % p.page_size;
      k_off = page * p.k_page_stride + slot * p.k_row_stride;
      v_off = page * p.v_page_stride + slot * p.v_row_stride;
    } else {
      const int64_t row = p.cache_batch_idx != nullptr ? p.cache_batch_idx[b] : b;
      k_off = row * p.k_page_stride + pos * p.k_row_stride;
      v_off = row * p.v_page_stride + pos * p.v_row_stride;
    }
    const auto* kn = static_cast<const Element*>(p.k_new) + b * p.kn_batch_stride +
                     j * p.kn_row_stride + h * p.kn_head_stride;
    const auto* vn = static_cast<const Element*>(p.v_new) + b * p.vn_batch_stride +
                     j * p.vn_row_stride + h * p.vn_head_stride;
    auto* kc = static_cast<Element*>(p.k_cache) + k_off + h * p.k_head_stride;
    auto* vc = static_cast<Element*>(p.v_cache) + v_off + h * p.v_head_stride;
    rotate_row(p, kn, kc, pos, lane);
    for (int f = lane; f < p.head_dim; f += 32) vc[f] = vn[f];
    return;
  }
  if (p.rotary_dim == 0) return;
  const int64_t q_item = item - appends;
  if (q_item >= int64_t(p.batch) * p.seqlen_q * p.heads_q) return;
  const int h = int(q_item % p.heads_q);
  const int i = int((q_item / p.heads_q) % p.seqlen_q);
  const int b = int(q_item / (int64_t(p.heads_q) * p.seqlen_q));
  const int64_t pos = int64_t(p.cache_seqlens[b]) + (p.rotary_q_consecutive ? i : 0);
  const auto* src = static_cast<const Element*>(p.q_in) + b * p.q_in_batch_stride +
                    i * p.q_in_row_stride + h * p.q_in_head_stride;
  auto* dst = const_cast<Element*>(static_cast<const Element*>(p.q)) + b * p.q_batch_stride +
              i * p.q_row_stride + h * p.q_head_stride;
  rotate_row(p, src, dst, pos, lane);
}

}  // namespace flashlane::sm90::decode
