// params.h: the plain-data description of one sm90 launch, filled on the host by
// params_builder.cpp from the validated problem and read by every role of the kernels.
// FwdParams describes the attention call (q, k, v -> o, lse); BwdParams extends it with the
// gradients and the backward's workspace, so both directions read shapes, layouts, score scale
// and mask from the same fields.
#pragma once

#include <cstdint>

#include "core/attention_rules.h"
#include "flashlane/problem.h"

namespace flashlane::sm90 {

struct FwdParams {
  // Tensors. Strides are in elements and 64-bit; the last dimension is contiguous. A dense
  // tensor's row is a token of its sequence and its batch stride is used; a packed (varlen)
  // tensor's row is a packed token, its batch stride is 0 and each sequence starts at its
  // cu_seqlens offset. One formula serves both:
  //   base + b * batch_stride + (seq_start + t) * row_stride + h * head_stride.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;     // forward output; backward input
  float* lse = nullptr;  // natural log, [b, h, s] or [h, total_q]; forward: optional output
  int64_t q_row_stride = 0, q_head_stride = 0, q_batch_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0, k_batch_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0, v_batch_stride = 0;
  int64_t o_row_stride = 0, o_head_stride = 0, o_batch_stride = 0;
  int64_t lse_row_stride = 0, lse_head_stride = 0, lse_batch_stride = 0;

  int batch = 0;
  int heads_q = 0, heads_kv = 0;
  int head_dim = 0, head_dim_v = 0;
  // Dense: the shapes; varlen: max_seqlen_q / max_seqlen_k (bounds for the tile grid).
  int seqlen_q = 0, seqlen_k = 0;
  // Rows of the tensors as TMA sees them: dense seqlen_q / seqlen_k; varlen total_q / total_k
  // (packed rows may extend past the last sequence).
  int64_t rows_q = 0, rows_k = 0;

  // Layouts: q, o, lse (and dout, dq) are packed when varlen_q; k and v follow kv_layout.
  bool varlen_q = false;
  KvLayout kv_layout = KvLayout::kDense;
  const int32_t* cu_seqlens_q = nullptr;  // device, [batch + 1] (varlen)
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;  // device, [batch], optional

  // Softmax in the log2 domain (common/score_math.h):
  //   p = exp2(x * score_to_log2 - rowmax * score_to_log2), x = q.k without softcap, or
  //   x = tanh(q.k * softcap_prescale) with softcap c (softcap_prescale = softmax_scale / c,
  //   score_to_log2 = c * log2(e): the "c *" of c * tanh folded in).
  float score_to_log2 = 0.f;
  float softcap_prescale = 0.f;  // 0: no softcap
  bool has_softcap = false;

  MaskRule mask{};  // normalized window bounds + diagonal alignment (see problem.h)

  // Attention sinks (problem.h): float32 [heads_q] logits in natural-log units, or nullptr.
  const float* learnable_sink = nullptr;

  // Forward launch only: the tile grid.
  int num_m_blocks = 0;
  int num_tiles = 0;
  bool persistent = false;
  // (batch, head) pairs whose M-blocks the tile order interleaves, longest first
  // (fwd/tile_scheduler.h); 1 = each pair's M-blocks in a row.
  int tile_group = 1;
  // Consumer warpgroups alternate GEMM issue (see FwdMainloop::pingpong_wait).
  bool pingpong = true;
};

struct BwdParams : FwdParams {
  const void* dout = nullptr;  // shape of o
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t do_row_stride = 0, do_head_stride = 0, do_batch_stride = 0;
  int64_t dq_row_stride = 0, dq_head_stride = 0, dq_batch_stride = 0;
  int64_t dk_row_stride = 0, dk_head_stride = 0, dk_batch_stride = 0;
  int64_t dv_row_stride = 0, dv_head_stride = 0, dv_batch_stride = 0;

  // d(score)/d(q.k) without the tanh factor: softmax_scale. dK and dQ are scaled by it once at
  // the end instead of per element.
  float softmax_scale = 0.f;

  // Workspace (fp32), tiled by query tiles of block_m rows, each sequence starting on a fresh
  // tile (q_tile_base), so every tile's rows are one aligned contiguous block:
  //   lse_log2 [heads_q, ws_tiles * block_m]  LSE * log2(e); +inf for rows without visible keys
  //                                          (every P of such a row is exp2(-inf) = 0, never NaN)
  //   delta    [heads_q, ws_tiles * block_m]  rowsum(dO * O)
  //   dq_accum [heads_q, ws_tiles, block_m * head_dim]  in the MMA's thread order
  //                                          (bwd/split_keys.h, bwd/split_head_dim.h)
  // Sink gradient (problem.h), float32 [heads_q], or nullptr: written by bwd_sink_grad_kernel
  // from lse_log2 and delta (bwd/pre_post.h).
  float* dlearnable_sink = nullptr;
  float* lse_log2 = nullptr;
  float* delta = nullptr;
  float* dq_accum = nullptr;
  int block_m = 0;
  int64_t ws_tiles = 0;

  bool deterministic = false;
  // Deterministic mode: one counter per (query head, query tile); the key tiles add their dQ in
  // ascending order (bwd/dq_writer.h). CTAs take their key tile from a ticket counter, in chunks
  // of det_key_chunk key tiles per (KV head, batch entry) (bwd/work.h).
  int* dq_semaphore = nullptr;
  int* tile_ticket = nullptr;
  int det_key_chunk = 1;
};

}  // namespace flashlane::sm90
