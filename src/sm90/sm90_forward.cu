// sm90_forward.cu: entry points of the sm90 backend (dispatch/backends.h). Translates the
// validated problem into FwdParams, picks the (head dim, dtype) instantiation and names the
// launch in the variant string. No CuTe here: the kernels live in fwd/instantiations/.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <cmath>
#include <string>

#include "dispatch/backends.h"
#include "sm90/fwd/launch_decl.h"
#include "sm90/sm90_forward.h"

// Which head dims this build instantiated (fwd_hdim<D>*.cu). nvcc splits -D values at commas,
// so the build passes one FLASHLANE_SM90_HDIM_<D>=1 per head dim; none means all of them.
#if defined(FLASHLANE_SM90_HDIM_64) || defined(FLASHLANE_SM90_HDIM_96) || \
    defined(FLASHLANE_SM90_HDIM_128) || defined(FLASHLANE_SM90_HDIM_192) || \
    defined(FLASHLANE_SM90_HDIM_256)
#ifdef FLASHLANE_SM90_HDIM_64
#define FL_SM90_D64 64
#else
#define FL_SM90_D64 0
#endif
#ifdef FLASHLANE_SM90_HDIM_96
#define FL_SM90_D96 96
#else
#define FL_SM90_D96 0
#endif
#ifdef FLASHLANE_SM90_HDIM_128
#define FL_SM90_D128 128
#else
#define FL_SM90_D128 0
#endif
#ifdef FLASHLANE_SM90_HDIM_192
#define FL_SM90_D192 192
#else
#define FL_SM90_D192 0
#endif
#ifdef FLASHLANE_SM90_HDIM_256
#define FL_SM90_D256 256
#else
#define FL_SM90_D256 0
#endif
#define FL_SM90_COMPILED_DIMS FL_SM90_D64, FL_SM90_D96, FL_SM90_D128, FL_SM90_D192, FL_SM90_D256
#else
#define FL_SM90_COMPILED_DIMS 64, 96, 128, 192, 256
#endif

namespace flashlane::sm90 {
namespace {

constexpr int kCompiledHeadDims[] = {FL_SM90_COMPILED_DIMS};
constexpr double kLog2e = 1.4426950408889634;
constexpr int kBlockM = 128;

std::atomic<int> g_schedule_override{0};
std::atomic<bool> g_pingpong{true};

constexpr bool head_dim_compiled(int64_t d) {
  for (int c : kCompiledHeadDims) {
    if (c == d) return true;
  }
  return false;
}

template <int D, int DV>
Status launch_dtype(const FwdParams& params, DType dtype, cudaStream_t stream) {
  return dtype == DType::kBFloat16 ? launch_fwd<D, DV, true>(params, stream)
                                   : launch_fwd<D, DV, false>(params, stream);
}

template <int D, int DV>
std::string tile_name(DType dtype) {
  std::string s = "fwd_m" + std::to_string(kBlockM) + "_n" +
                  std::to_string(FwdConfig<D, DV>::kBlockN) + "_d" + std::to_string(D);
  if (DV != D) s += "_dv" + std::to_string(DV);
  s += dtype == DType::kBFloat16 ? "_bf16" : "_fp16";
  s += "_ws2_stages" + std::to_string(FwdConfig<D, DV>::kStages);
  return s;
}

// Dispatch over the compiled instantiations; only reached when sm90_forward_supports() holds.
// head_dim_compiled() keeps builds with fewer head dims (FLASHLANE_SM90_HEAD_DIMS) linking.
template <int D, int DV, class Fn>
bool try_instantiation(int64_t d, int64_t dv, Fn& fn, Status* out) {
  if constexpr (head_dim_compiled(D)) {
    if (d == D && dv == DV) {
      *out = fn(std::integral_constant<int, D>{}, std::integral_constant<int, DV>{});
      return true;
    }
  }
  return false;
}

template <class Fn>
Status with_instantiation(int64_t d, int64_t dv, Fn&& fn) {
  Status st;
  if (try_instantiation<64, 64>(d, dv, fn, &st) || try_instantiation<96, 96>(d, dv, fn, &st) ||
      try_instantiation<128, 128>(d, dv, fn, &st) ||
      try_instantiation<192, 192>(d, dv, fn, &st) ||
      try_instantiation<192, 128>(d, dv, fn, &st) ||
      try_instantiation<256, 256>(d, dv, fn, &st)) {
    return st;
  }
  return Status(ErrorCode::kInternal, "sm90 forward has no instantiation for head_dim " +
                std::to_string(d) + " / head_dim_v " + std::to_string(dv),
                "sm90.head_dim_unsupported");
}

}  // namespace

Status build_fwd_params(const AttentionProblem& pb, const ProblemInfo& info, FwdParams* out) {
  FwdParams& p = *out;
  p = FwdParams{};
  p.q = pb.q.data;
  p.k = pb.k.data;
  p.v = pb.v.data;
  p.o = pb.o.data;
  p.varlen = info.varlen;
  p.batch = int(info.batch);
  p.heads_q = int(info.heads_q);
  p.heads_kv = int(info.heads_kv);
  p.head_dim = int(info.head_dim);
  p.head_dim_v = int(info.head_dim_v);
  p.seqlen_q = int(info.seqlen_q);
  p.seqlen_k = int(info.seqlen_k);
  // Strides: bshd [b, s, h, d]; varlen [total, h, d].
  auto set3 = [&](const TensorView& t, int64_t* row, int64_t* head, int64_t* batch) {
    if (info.varlen) {
      *row = t.stride[0];
      *head = t.stride[1];
      *batch = 0;
    } else {
      *batch = t.stride[0];
      *row = t.stride[1];
      *head = t.stride[2];
    }
  };
  set3(pb.q, &p.q_row_stride, &p.q_head_stride, &p.q_batch_stride);
  set3(pb.k, &p.k_row_stride, &p.k_head_stride, &p.k_batch_stride);
  set3(pb.v, &p.v_row_stride, &p.v_head_stride, &p.v_batch_stride);
  set3(pb.o, &p.o_row_stride, &p.o_head_stride, &p.o_batch_stride);
  if (info.has_lse && pb.lse.defined()) {
    p.lse = static_cast<float*>(pb.lse.data);
    if (info.varlen) {  // [heads, total_q]
      p.lse_head_stride = pb.lse.stride[0];
      p.lse_row_stride = pb.lse.stride[1];
    } else {  // [batch, heads, seqlen_q]
      p.lse_batch_stride = pb.lse.stride[0];
      p.lse_head_stride = pb.lse.stride[1];
      p.lse_row_stride = pb.lse.stride[2];
    }
  }
  if (info.varlen) {
    p.rows_q = int(info.total_q);
    p.rows_k = int(info.total_k);
    p.cu_seqlens_q = static_cast<const int32_t*>(pb.cu_seqlens_q.data);
    p.cu_seqlens_k = static_cast<const int32_t*>(pb.cu_seqlens_k.data);
  } else {
    p.rows_q = p.seqlen_q;
    p.rows_k = p.seqlen_k;
  }
  if (info.has_seqused_k && pb.seqused_k.defined()) {
    p.seqused_k = static_cast<const int32_t*>(pb.seqused_k.data);
  }

  p.has_softcap = info.softcap > 0.0;
  if (p.has_softcap) {
    p.softcap_prescale = float(info.softmax_scale / info.softcap);
    p.score_to_log2 = float(info.softcap * kLog2e);
  } else {
    p.score_to_log2 = float(info.softmax_scale * kLog2e);
  }
  // Window bounds wider than any sequence are unbounded; clamping keeps the device's index
  // arithmetic far from overflow.
  const int64_t widest = info.seqlen_q + info.seqlen_k + 1;
  p.mask.window_left = info.window_left < 0 ? -1 : std::min(info.window_left, widest);
  p.mask.window_right = info.window_right < 0 ? -1 : std::min(info.window_right, widest);
  p.mask.bottom_right = info.bottom_right;

  p.num_m_blocks = int((info.seqlen_q + kBlockM - 1) / kBlockM);
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
  return Status::Ok();
}

void set_schedule_override(ScheduleOverride mode) { g_schedule_override = int(mode); }
void set_pingpong(bool enabled) { g_pingpong = enabled; }

}  // namespace flashlane::sm90

namespace flashlane::detail {

bool sm90_forward_supports(int64_t head_dim, int64_t head_dim_v) {
  const bool same = head_dim == head_dim_v &&
                    (head_dim == 64 || head_dim == 96 || head_dim == 128 || head_dim == 192 ||
                     head_dim == 256);
  const bool d192_v128 = head_dim == 192 && head_dim_v == 128;
  return (same || d192_v128) && sm90::head_dim_compiled(head_dim);
}

Status sm90_forward(const AttentionProblem& pb, const ProblemInfo& info, cudaStream_t stream,
                    std::string* variant) {
  using sm90::FwdParams;
  if (!sm90_forward_supports(info.head_dim, info.head_dim_v)) {
    return Status(ErrorCode::kInternal,
                  "sm90 forward called for unsupported head_dim " + std::to_string(info.head_dim) +
                      " / head_dim_v " + std::to_string(info.head_dim_v),
                  "sm90.head_dim_unsupported");
  }
  if (info.dtype != DType::kBFloat16 && info.dtype != DType::kFloat16) {
    return Status(ErrorCode::kInternal, "sm90 forward called with an unsupported dtype",
                  "sm90.dtype_unsupported");
  }
  FwdParams p;
  if (Status st = sm90::build_fwd_params(pb, info, &p); !st.ok()) return st;

  std::string name;
  Status st = sm90::with_instantiation(info.head_dim, info.head_dim_v, [&](auto d, auto dv) {
    constexpr int D = decltype(d)::value, DV = decltype(dv)::value;
    name = sm90::tile_name<D, DV>(info.dtype);
    return sm90::launch_dtype<D, DV>(p, info.dtype, stream);
  });
  if (!st.ok()) return st;
  if (variant != nullptr) {
    if (info.is_causal()) name += "+causal";
    if (info.has_window()) name += "+window";
    if (p.has_softcap) name += "+softcap";
    if (info.varlen) name += "+varlen";
    if (info.heads_q != info.heads_kv) name += "+gqa";
    if (p.persistent) name += "+persistent";
    *variant = name;
  }
  return Status::Ok();
}


}  // namespace flashlane::detail
