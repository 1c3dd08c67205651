// params.h: the plain-data description of one sm90 forward launch, filled on the host by
// sm90_forward.cu from the validated problem and read by every role of the kernel.
#pragma once

#include <cstdint>

#include "core/attention_rules.h"

namespace flashlane::sm90 {

struct FwdParams {
  // Tensors. Strides are in elements and 64-bit; the last dimension is contiguous.
  // bshd: row = token in its sequence, batch stride used; varlen: row = packed token, batch
  // stride unused (0) and per-sequence offsets come from cu_seqlens.
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;  // optional
  int64_t q_row_stride = 0, q_head_stride = 0, q_batch_stride = 0;
  int64_t k_row_stride = 0, k_head_stride = 0, k_batch_stride = 0;
  int64_t v_row_stride = 0, v_head_stride = 0, v_batch_stride = 0;
  int64_t o_row_stride = 0, o_head_stride = 0, o_batch_stride = 0;
  int64_t lse_row_stride = 0, lse_head_stride = 0, lse_batch_stride = 0;

  int batch = 0;
  int heads_q = 0, heads_kv = 0;
  int head_dim = 0, head_dim_v = 0;
  // bshd: the shapes; varlen: max_seqlen_q / max_seqlen_k (bounds for the tile grid).
  int seqlen_q = 0, seqlen_k = 0;
  // Rows of the TMA views: bshd seqlen_q / seqlen_k; varlen total_q / total_k.
  int rows_q = 0, rows_k = 0;

  bool varlen = false;
  const int32_t* cu_seqlens_q = nullptr;  // device, [batch + 1]
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* seqused_k = nullptr;  // device, [batch], optional

  // Softmax in the log2 domain: p = exp2(score * score_to_log2 - rowmax * score_to_log2).
  // Without softcap: score = q.k and score_to_log2 = softmax_scale * log2(e).
  // With softcap c:  score = tanh(q.k * softcap_prescale), softcap_prescale = softmax_scale / c,
  //                  and score_to_log2 = c * log2(e) (the "c *" of c * tanh folded in).
  float score_to_log2 = 0.f;
  float softcap_prescale = 0.f;  // 0: no softcap
  bool has_softcap = false;

  MaskRule mask{};  // normalized window bounds + diagonal alignment (see problem.h)

  // Tile grid.
  int num_m_blocks = 0;
  int num_tiles = 0;
  bool persistent = false;
  // Consumer warpgroups alternate GEMM issue (see FwdMainloop::pingpong_wait).
  bool pingpong = true;
};

}  // namespace flashlane::sm90
