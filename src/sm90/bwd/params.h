// params.h: the plain-data description of one sm90 backward launch (preprocess, the key-tile
// kernel for dK, dV and the fp32 dQ sum, postprocess). Filled on the host by sm90_backward.cu
// from the validated problem; the workspace fields by launch.h.
#pragma once

#include <cstdint>

#include "core/attention_rules.h"

namespace flashlane::sm90 {

struct BwdParams {
  // Tensors; strides in elements; the last dimension is contiguous. bshd: row = token in its
  // sequence, batch stride used; varlen: row = packed token, batch stride 0, per-sequence
  // offsets from cu_seqlens. One formula serves both:
  //   base + b * batch_stride + (seq_start + t) * row_stride + h * head_stride.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* o = nullptr;
  const void* dout = nullptr;
  const float* lse = nullptr;  // natural log, [b, h, s] or [h, total_q]
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t q_row_stride = 0, q_head_stride = 0, q_batch_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0, k_batch_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0, v_batch_stride = 0;
  int64_t o_row_stride = 0, o_head_stride = 0, o_batch_stride = 0;
  int64_t do_row_stride = 0, do_head_stride = 0, do_batch_stride = 0;
  int64_t dq_row_stride = 0, dq_head_stride = 0, dq_batch_stride = 0;
  int64_t dk_row_stride = 0, dk_head_stride = 0, dk_batch_stride = 0;
  int64_t dv_row_stride = 0, dv_head_stride = 0, dv_batch_stride = 0;
  int64_t lse_row_stride = 0, lse_head_stride = 0, lse_batch_stride = 0;

  int batch = 0;
  int heads_q = 0, heads_kv = 0;
  int seqlen_q = 0, seqlen_k = 0;  // bshd: shapes; varlen: max_seqlen bounds for the grid
  bool varlen = false;
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;

  // Scores in the log2 domain as in the forward (FwdParams): p = exp2(x * score_to_log2 -
  // lse_log2), x = q.k (no softcap) or tanh(q.k * softcap_prescale) (softcap).
  float score_to_log2 = 0.f;
  float softcap_prescale = 0.f;
  bool has_softcap = false;
  // d(score)/d(q.k) without the tanh factor: softmax_scale. dK and dQ are scaled by it once at
  // the end instead of per element.
  float softmax_scale = 0.f;

  MaskRule mask{};

  // Workspace (fp32), tiled by query tiles of block_m rows, each sequence starting on a fresh
  // tile (q_tile_base), so every tile's rows are one aligned contiguous block:
  //   lse_log2 [heads_q, ws_tiles * block_m]  LSE * log2(e); +inf for rows without visible keys
  //                                          (every P of such a row is exp2(-inf) = 0, never NaN)
  //   delta    [heads_q, ws_tiles * block_m]  rowsum(dO * O)
  //   dq_accum [heads_q, ws_tiles, block_m * head_dim]  in the MMA's thread order
  //                                          (kernel_traits.h, kernel_traits_wide.h)
  float* lse_log2 = nullptr;
  float* delta = nullptr;
  float* dq_accum = nullptr;
  int block_m = 0;
  int64_t ws_tiles = 0;

  bool deterministic = false;

  // Rows of the q and k tensors (varlen: packed rows, which may extend past the last sequence;
  // those rows of dQ, dK, dV are written as zeros).
  int64_t rows_q = 0, rows_k = 0;
  // Deterministic mode: one counter per (query head, query tile); the key tiles add their dQ in
  // ascending order (dq_writer.h).
  int* dq_semaphore = nullptr;
};

/// First workspace tile of sequence b. Varlen: sequences start at packed row
/// cu_seqlens_q[b]; adding b tiles of slack keeps tiles of different sequences apart, so
/// (cu_seqlens_q[b] + b * block_m) / block_m never overlaps the previous sequence's tiles.
__device__ inline int64_t q_tile_base(const BwdParams& p, int b) {
  if (p.varlen) return (int64_t(p.cu_seqlens_q[b]) + int64_t(b) * p.block_m) / p.block_m;
  return int64_t(b) * ((p.seqlen_q + p.block_m - 1) / p.block_m);
}

}  // namespace flashlane::sm90
