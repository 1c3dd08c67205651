// params.h: the plain-data description of one sm90 KV-cache (decode) call, filled on the host by
// sm90_decode.cu from the validated KvCacheProblem and read by the three decode kernels:
//   append_rotary.h   writes k_new / v_new into the cache (k rotated) and rotates q into the
//                     workspace;
//   kernel.h          split-KV attention, the query heads of one KV head packed into the rows
//                     of a tile (PackGQA);
//   combine.h         merges the splits' partial O by their LSE.
// Strides are in elements, 64-bit; the last dimension of every tensor is contiguous.
#pragma once

#include <cstdint>

#include "core/attention_rules.h"
#include "flashlane/tensor.h"

namespace flashlane::sm90 {

struct DecodeParams {
  // q [batch, seqlen_q, heads_q, d] (the rotated copy in the workspace when rotary is on).
  const void* q = nullptr;
  int64_t q_batch_stride = 0, q_row_stride = 0, q_head_stride = 0;
  // The cache. Dense: [batch_cache, capacity, heads_kv, d], "page" = the cache row of a
  // sequence (cache_batch_idx[b] or b), slot = the position. Paged: [num_pages, page_size,
  // heads_kv, d], page = page_table[b, t / page_size], slot = t % page_size.
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t k_page_stride = 0, k_row_stride = 0, k_head_stride = 0;
  int64_t v_page_stride = 0, v_row_stride = 0, v_head_stride = 0;
  const int32_t* cache_seqlens = nullptr;    // [batch]; null: every sequence holds `capacity`
  const int32_t* cache_batch_idx = nullptr;  // [batch], dense only; null: row b
  const int32_t* page_table = nullptr;       // [batch, max_pages_per_seq], paged only
  int64_t page_table_stride = 0;
  int page_size = 0;  // paged only
  int capacity = 0;   // keys one sequence can hold

  // o [batch, seqlen_q, heads_q, d], lse float32 [batch, heads_q, seqlen_q] (optional, natural log).
  void* o = nullptr;
  int64_t o_batch_stride = 0, o_row_stride = 0, o_head_stride = 0;
  float* lse = nullptr;
  int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_row_stride = 0;

  int batch = 0, seqlen_q = 0, heads_q = 0, heads_kv = 0, group = 0;  // group = heads_q / heads_kv
  int head_dim = 0;

  // Scores: exp2 domain as ScoreScale (common/score_math.h).
  float score_to_log2 = 0.f, softcap_prescale = 0.f;
  bool has_softcap = false;
  MaskRule rule;  // bottom_right always (the query rows are the last seqlen_q positions)
  // Attention sinks (problem.h): float32 [heads_q], natural-log units, or nullptr. Added by the
  // combine (or by the attention kernel itself when the keys are not split).
  const float* learnable_sink = nullptr;

  // Tiling: packed rows = seqlen_q * group per (batch, kv head), tiles of kDecodeBlockM rows.
  int m_blocks = 0;
  int num_splits = 1;
  // Split-KV workspace (num_splits > 1): partial O and natural-log LSE per split and query row,
  //   o_partial [num_splits, batch, heads_q, seqlen_q, d], lse_partial [num_splits, batch,
  //   heads_q, seqlen_q].
  float* o_partial = nullptr;
  float* lse_partial = nullptr;

  // Append (append_rotary.h). k_new / v_new [batch, seqlen_new, heads_kv, d].
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  int64_t kn_batch_stride = 0, kn_row_stride = 0, kn_head_stride = 0;
  int64_t vn_batch_stride = 0, vn_row_stride = 0, vn_head_stride = 0;
  int seqlen_new = 0;
  // Rotary: cos / sin [seqlen_ro, rotary_dim / 2] of any floating dtype.
  const void* rotary_cos = nullptr;
  const void* rotary_sin = nullptr;
  DType rotary_dtype = DType::kFloat32;
  int64_t rotary_cos_stride = 0, rotary_sin_stride = 0;
  int rotary_dim = 0;  // 0: no rotary
  bool rotary_interleaved = true;
  bool rotary_q_consecutive = false;  // q row i at cache_seqlens[b] + i (causal or local)
  // The caller's q, read by the rotation, which writes the rotated copy at `q`.
  const void* q_in = nullptr;
  int64_t q_in_batch_stride = 0, q_in_row_stride = 0, q_in_head_stride = 0;
};

/// Rows of one decode tile: the packed (query position, query head of the group) rows share
/// one K/V read. 16 = one m16n8k16 row block per warp.
inline constexpr int kDecodeBlockM = 16;

}  // namespace flashlane::sm90
