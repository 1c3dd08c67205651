// params_builder.cpp: see params_builder.h.
#include "sm90/common/params_builder.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "sm90/common/kernel_table.h"
#include "sm90/common/score_math.h"

namespace flashlane::sm90 {
namespace {

std::atomic<int> g_schedule_override{int(ScheduleOverride::kAuto)};
std::atomic<bool> g_pingpong{true};

/// (row, head, batch) strides of a data tensor: dense [b, s, h, d] or packed [total, h, d].
void strides_of(const TensorView& t, bool packed, int64_t* row, int64_t* head, int64_t* batch) {
  if (packed) {
    *row = t.stride[0];
    *head = t.stride[1];
    *batch = 0;
  } else {
    *batch = t.stride[0];
    *row = t.stride[1];
    *head = t.stride[2];
  }
}

/// Everything both directions share.
Status fill_common(const AttentionProblem& pb, const ProblemInfo& info, FwdParams* out) {
  if (info.kv_layout == KvLayout::kPaged) {
    return Status(ErrorCode::kInternal, "sm90 has no kernel for a paged KV layout",
                  "sm90.kv_layout_unsupported");
  }
  // The kernels pack k/v exactly when they pack q (common/seqlen.h reads both in one branch).
  if (info.varlen != (info.kv_layout == KvLayout::kVarlenPacked)) {
    return Status(ErrorCode::kInternal,
                  std::string("sm90 has no kernel for q ") + (info.varlen ? "packed" : "dense") +
                      " with a " + kv_layout_name(info.kv_layout) + " KV layout",
                  "sm90.kv_layout_unsupported");
  }
  FwdParams& p = *out;
  p.q = pb.q.data;
  p.k = pb.k.data;
  p.v = pb.v.data;
  p.o = pb.o.data;
  p.varlen_q = info.varlen;
  p.kv_layout = info.kv_layout;
  const bool packed_kv = info.kv_layout == KvLayout::kVarlenPacked;
  strides_of(pb.q, p.varlen_q, &p.q_row_stride, &p.q_head_stride, &p.q_batch_stride);
  strides_of(pb.k, packed_kv, &p.k_row_stride, &p.k_head_stride, &p.k_batch_stride);
  strides_of(pb.v, packed_kv, &p.v_row_stride, &p.v_head_stride, &p.v_batch_stride);
  strides_of(pb.o, p.varlen_q, &p.o_row_stride, &p.o_head_stride, &p.o_batch_stride);
  if (pb.lse.defined()) {
    p.lse = static_cast<float*>(pb.lse.data);
    if (p.varlen_q) {  // [heads, total_q]
      p.lse_head_stride = pb.lse.stride[0];
      p.lse_row_stride = pb.lse.stride[1];
    } else {  // [batch, heads, seqlen_q]
      p.lse_batch_stride = pb.lse.stride[0];
      p.lse_head_stride = pb.lse.stride[1];
      p.lse_row_stride = pb.lse.stride[2];
    }
  }
  p.batch = int(info.batch);
  p.heads_q = int(info.heads_q);
  p.heads_kv = int(info.heads_kv);
  p.head_dim = int(info.head_dim);
  p.head_dim_v = int(info.head_dim_v);
  p.seqlen_q = int(info.seqlen_q);
  p.seqlen_k = int(info.seqlen_k);
  p.rows_q = p.varlen_q ? info.total_q : info.seqlen_q;
  p.rows_k = packed_kv ? info.total_k : info.seqlen_k;
  if (p.varlen_q) p.cu_seqlens_q = static_cast<const int32_t*>(pb.cu_seqlens_q.data);
  if (packed_kv) p.cu_seqlens_k = static_cast<const int32_t*>(pb.cu_seqlens_k.data);
  if (info.has_seqused_k && pb.seqused_k.defined()) {
    p.seqused_k = static_cast<const int32_t*>(pb.seqused_k.data);
  }

  if (info.has_sink) p.learnable_sink = static_cast<const float*>(pb.learnable_sink.data);

  const ScoreScale scale = score_scale(info.softmax_scale, info.softcap);
  p.score_to_log2 = scale.score_to_log2;
  p.softcap_prescale = scale.softcap_prescale;
  p.has_softcap = scale.has_softcap;
  // Window bounds wider than any sequence are unbounded; clamping keeps the device's index
  // arithmetic far from overflow.
  const int64_t widest = info.seqlen_q + info.seqlen_k + 1;
  p.mask.window_left = info.window_left < 0 ? -1 : std::min(info.window_left, widest);
  p.mask.window_right = info.window_right < 0 ? -1 : std::min(info.window_right, widest);
  p.mask.bottom_right = info.bottom_right;
  return Status::Ok();
}

}  // namespace

int fwd_tile_group(const ProblemInfo& info, bool persistent) {
  constexpr int64_t kMaxGroup = 8;
  constexpr int64_t kL2BudgetBytes = int64_t(16) << 20;
  if (persistent) return 1;
  const int64_t pairs = info.heads_q * info.batch;
  const int64_t kv_bytes = info.seqlen_k * (info.head_dim + info.head_dim_v) *
                           int64_t(dtype_size(info.dtype));
  // Query heads of one KV head (GQA) are adjacent pairs and read the same K/V.
  const int64_t q_per_kv = info.heads_kv > 0 ? info.heads_q / info.heads_kv : 1;
  int64_t group = kv_bytes > 0 ? (kL2BudgetBytes / kv_bytes) * q_per_kv : kMaxGroup;
  group = std::min(group, kMaxGroup);
  group = std::min(group, pairs);
  return int(std::max<int64_t>(group, 1));
}

Status build_fwd_params(const AttentionProblem& pb, const ProblemInfo& info, FwdParams* out) {
  *out = FwdParams{};
  if (Status st = fill_common(pb, info, out); !st.ok()) return st;
  FwdParams& p = *out;
  p.num_m_blocks = int((info.seqlen_q + kFwdBlockM - 1) / kFwdBlockM);
  const int64_t tiles = int64_t(p.num_m_blocks) * info.heads_q * info.batch;
  if (tiles > int64_t(INT32_MAX)) {
    return Status(ErrorCode::kInternal, "sm90 forward: tile count exceeds int32",
                  "sm90.grid_too_large");
  }
  p.num_tiles = int(tiles);
  // Persistent CTAs pay off when every tile costs the same (no causal/window imbalance); with
  // masks the one-tile-per-CTA grid lets the hardware balance, longest tiles first.
  const int override_mode = g_schedule_override.load();
  const bool uniform = !info.is_causal() && !info.has_window() && !info.varlen;
  p.persistent = override_mode == int(ScheduleOverride::kPersistent) ||
                 (override_mode == int(ScheduleOverride::kAuto) && uniform);
  p.pingpong = g_pingpong.load();
  p.tile_group = fwd_tile_group(info, p.persistent);
  return Status::Ok();
}

Status build_bwd_params(const AttentionProblem& pb, const ProblemInfo& info, BwdParams* out) {
  *out = BwdParams{};
  if (Status st = fill_common(pb, info, out); !st.ok()) return st;
  BwdParams& p = *out;
  const bool packed_kv = info.kv_layout == KvLayout::kVarlenPacked;
  p.dout = pb.dout.data;
  p.dq = pb.dq.data;
  p.dk = pb.dk.data;
  p.dv = pb.dv.data;
  strides_of(pb.dout, p.varlen_q, &p.do_row_stride, &p.do_head_stride, &p.do_batch_stride);
  strides_of(pb.dq, p.varlen_q, &p.dq_row_stride, &p.dq_head_stride, &p.dq_batch_stride);
  strides_of(pb.dk, packed_kv, &p.dk_row_stride, &p.dk_head_stride, &p.dk_batch_stride);
  strides_of(pb.dv, packed_kv, &p.dv_row_stride, &p.dv_head_stride, &p.dv_batch_stride);
  p.softmax_scale = float(info.softmax_scale);
  p.deterministic = info.deterministic;
  if (info.has_dsink) p.dlearnable_sink = static_cast<float*>(pb.dlearnable_sink.data);
  return Status::Ok();
}

void set_schedule_override(ScheduleOverride mode) { g_schedule_override = int(mode); }
void set_pingpong(bool enabled) { g_pingpong = enabled; }

}  // namespace flashlane::sm90
