// sm90_backward.cu: entry point of the sm90 backward (dispatch/backends.h). Translates the
// validated problem into BwdParams, picks the (head dim, dtype) instantiation and names the
// launch in the variant string. Kernels: sm90/bwd/ (preprocess, the WGMMA + TMA key-tile kernel,
// postprocess).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "dispatch/backends.h"
#include "sm90/bwd/launch_decl.h"

namespace flashlane::sm90 {
namespace {

constexpr double kLog2e = 1.4426950408889634;

void set3(const TensorView& t, bool varlen, int64_t* row, int64_t* head, int64_t* batch) {
  if (varlen) {  // [total, h, d]
    *row = t.stride[0];
    *head = t.stride[1];
    *batch = 0;
  } else {  // [b, s, h, d]
    *batch = t.stride[0];
    *row = t.stride[1];
    *head = t.stride[2];
  }
}

BwdParams build_bwd_params(const AttentionProblem& pb, const ProblemInfo& info) {
  BwdParams p;
  p.q = pb.q.data;
  p.k = pb.k.data;
  p.v = pb.v.data;
  p.o = pb.o.data;
  p.dout = pb.dout.data;
  p.lse = static_cast<const float*>(pb.lse.data);
  p.dq = pb.dq.data;
  p.dk = pb.dk.data;
  p.dv = pb.dv.data;
  const bool vl = info.varlen;
  set3(pb.q, vl, &p.q_row_stride, &p.q_head_stride, &p.q_batch_stride);
  set3(pb.k, vl, &p.k_row_stride, &p.k_head_stride, &p.k_batch_stride);
  set3(pb.v, vl, &p.v_row_stride, &p.v_head_stride, &p.v_batch_stride);
  set3(pb.o, vl, &p.o_row_stride, &p.o_head_stride, &p.o_batch_stride);
  set3(pb.dout, vl, &p.do_row_stride, &p.do_head_stride, &p.do_batch_stride);
  set3(pb.dq, vl, &p.dq_row_stride, &p.dq_head_stride, &p.dq_batch_stride);
  set3(pb.dk, vl, &p.dk_row_stride, &p.dk_head_stride, &p.dk_batch_stride);
  set3(pb.dv, vl, &p.dv_row_stride, &p.dv_head_stride, &p.dv_batch_stride);
  if (vl) {  // lse [heads, total_q]
    p.lse_head_stride = pb.lse.stride[0];
    p.lse_row_stride = pb.lse.stride[1];
  } else {  // [batch, heads, seqlen_q]
    p.lse_batch_stride = pb.lse.stride[0];
    p.lse_head_stride = pb.lse.stride[1];
    p.lse_row_stride = pb.lse.stride[2];
  }
  p.batch = int(info.batch);
  p.heads_q = int(info.heads_q);
  p.heads_kv = int(info.heads_kv);
  p.seqlen_q = int(info.seqlen_q);
  p.seqlen_k = int(info.seqlen_k);
  p.varlen = vl;
  if (vl) {
    p.cu_seqlens_q = static_cast<const int32_t*>(pb.cu_seqlens_q.data);
    p.cu_seqlens_k = static_cast<const int32_t*>(pb.cu_seqlens_k.data);
  }
  if (info.has_seqused_k && pb.seqused_k.defined()) {
    p.seqused_k = static_cast<const int32_t*>(pb.seqused_k.data);
  }
  p.rows_q = vl ? info.total_q : info.seqlen_q;
  p.rows_k = vl ? info.total_k : info.seqlen_k;

  p.has_softcap = info.softcap > 0.0;
  if (p.has_softcap) {
    p.softcap_prescale = float(info.softmax_scale / info.softcap);
    p.score_to_log2 = float(info.softcap * kLog2e);
  } else {
    p.score_to_log2 = float(info.softmax_scale * kLog2e);
  }
  p.softmax_scale = float(info.softmax_scale);
  // Window bounds wider than any sequence are unbounded (as in the forward).
  const int64_t widest = info.seqlen_q + info.seqlen_k + 1;
  p.mask.window_left = info.window_left < 0 ? -1 : std::min(info.window_left, widest);
  p.mask.window_right = info.window_right < 0 ? -1 : std::min(info.window_right, widest);
  p.mask.bottom_right = info.bottom_right;
  p.deterministic = info.deterministic;
  return p;
}

std::string dtype_suffix(DType dtype) { return dtype == DType::kBFloat16 ? "_bf16" : "_fp16"; }

/// The WGMMA + TMA kernel (sm90/bwd/): every supported head dim.
template <int D, int DV>
bool try_launch_wgmma(const ProblemInfo& info, const BwdParams& p, cudaStream_t stream,
                      Status* st, std::string* name) {
  if (info.head_dim != D || info.head_dim_v != DV) return false;
  std::string s = "bwd_m" + std::to_string(bwd_wgmma_block_m(D)) + "_n" +
                  std::to_string(bwd_wgmma_block_n(D)) + "_d" + std::to_string(D);
  if (DV != D) s += "_dv" + std::to_string(DV);
  *name = s + dtype_suffix(info.dtype) + "_wgmma";
  *st = info.dtype == DType::kBFloat16 ? launch_bwd_wgmma<D, DV, true>(p, stream)
                                       : launch_bwd_wgmma<D, DV, false>(p, stream);
  return true;
}

}  // namespace
}  // namespace flashlane::sm90

namespace flashlane::detail {

bool sm90_backward_supports(int64_t head_dim, int64_t head_dim_v) {
  return (head_dim == head_dim_v && (head_dim == 64 || head_dim == 96 || head_dim == 128 ||
                                     head_dim == 192 || head_dim == 256)) ||
         (head_dim == 192 && head_dim_v == 128);
}

Status sm90_backward(const AttentionProblem& pb, const ProblemInfo& info, cudaStream_t stream,
                     std::string* variant) {
  using namespace sm90;
  if (!sm90_backward_supports(info.head_dim, info.head_dim_v)) {
    return Status(ErrorCode::kInternal,
                  "sm90 backward called for unsupported head_dim " +
                      std::to_string(info.head_dim) + " / head_dim_v " +
                      std::to_string(info.head_dim_v),
                  "sm90.bwd_head_dim_unsupported");
  }
  if (info.dtype != DType::kBFloat16 && info.dtype != DType::kFloat16) {
    return Status(ErrorCode::kInternal, "sm90 backward called with an unsupported dtype",
                  "sm90.dtype_unsupported");
  }
  constexpr int64_t kMaxGridYZ = 65535;  // batch and heads ride grid dimensions z and y
  if (info.batch > kMaxGridYZ || info.heads_q > kMaxGridYZ) {
    return Status(ErrorCode::kInternal, "sm90 backward: batch or heads exceed 65535",
                  "sm90.grid_too_large");
  }
  const BwdParams p = build_bwd_params(pb, info);
  Status st;
  std::string name;
  const bool launched = try_launch_wgmma<64, 64>(info, p, stream, &st, &name) ||
                        try_launch_wgmma<96, 96>(info, p, stream, &st, &name) ||
                        try_launch_wgmma<128, 128>(info, p, stream, &st, &name) ||
                        try_launch_wgmma<192, 192>(info, p, stream, &st, &name) ||
                        try_launch_wgmma<192, 128>(info, p, stream, &st, &name) ||
                        try_launch_wgmma<256, 256>(info, p, stream, &st, &name);
  if (!launched) {
    return Status(ErrorCode::kInternal, "sm90 backward has no instantiation for this head dim",
                  "sm90.bwd_head_dim_unsupported");
  }
  if (!st.ok()) return st;
  if (variant != nullptr) {
    if (info.is_causal()) name += "+causal";
    if (info.has_window()) name += "+window";
    if (p.has_softcap) name += "+softcap";
    if (info.varlen) name += "+varlen";
    if (info.heads_q != info.heads_kv) name += "+gqa";
    name += info.deterministic ? "+deterministic" : "+atomic_dq";
    *variant = name;
  }
  return Status::Ok();
}

}  // namespace flashlane::detail
