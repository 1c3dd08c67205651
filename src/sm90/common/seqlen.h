// seqlen.h: lengths and packed offsets of one sequence of the batch, for every sm90 kernel.
// Dense tensors: every sequence has the shapes' lengths and starts at row 0 of its batch entry.
// Packed (varlen) tensors: sequence b occupies rows [cu_seqlens[b], cu_seqlens[b + 1]).
// seqused_k[b], when given, limits the keys used to its first seqused_k[b]; the one clamp rule
// is used_k = min(seqused_k[b], len_k) (validation checks seqused_k <= len_k; the clamp keeps an
// unchecked value, e.g. under graph capture, from reading past the sequence).
#pragma once

#include "sm90/common/params.h"

namespace flashlane::sm90 {

struct SeqInfo {
  int offset_q;  // first row of the sequence in the q/o view (varlen) or 0 (dense)
  int offset_k;  // same for k/v
  int len_q;
  int len_k;   // keys of the sequence (rows of k/v; dK/dV rows to write)
  int used_k;  // keys used: min(seqused_k[b], len_k), or len_k

  /// The query side only (offset_q, len_q); the other fields are left unset.
  __device__ static SeqInfo load_q(const FwdParams& p, int b) {
    SeqInfo s;
    if (p.varlen_q) {
      s.offset_q = p.cu_seqlens_q[b];
      s.len_q = p.cu_seqlens_q[b + 1] - s.offset_q;
    } else {
      s.offset_q = 0;
      s.len_q = p.seqlen_q;
    }
    return s;
  }

  /// Both sides. The sm90 kernels pack k/v exactly when they pack q (the params builder
  /// refuses other pairs with sm90.kv_layout_unsupported), so one branch serves both; a second,
  /// independent branch on kv_layout cost the head_dim 96 backward 36 bytes more of spills.
  __device__ static SeqInfo load(const FwdParams& p, int b) {
    SeqInfo s;
    if (p.varlen_q) {
      s.offset_q = p.cu_seqlens_q[b];
      s.len_q = p.cu_seqlens_q[b + 1] - s.offset_q;
      s.offset_k = p.cu_seqlens_k[b];
      s.len_k = p.cu_seqlens_k[b + 1] - s.offset_k;
    } else {
      s.offset_q = 0;
      s.len_q = p.seqlen_q;
      s.offset_k = 0;
      s.len_k = p.seqlen_k;
    }
    s.used_k = p.seqused_k != nullptr ? min(int(p.seqused_k[b]), s.len_k) : s.len_k;
    return s;
  }
};

}  // namespace flashlane::sm90
