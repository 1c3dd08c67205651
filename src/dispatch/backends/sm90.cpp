// backends/sm90.cpp: the Hopper backend (sm_90a kernels on CuTe/CUTLASS: WGMMA, TMA, warp
// specialization). Its entry points are declared in dispatch/backends.h and defined in src/sm90
// (or by dispatch/sm90_absent.cpp in builds without the kernels, FLASHLANE_BUILD_SM90=OFF).
#include "dispatch/backend_registry.h"
#include "dispatch/backends.h"

namespace flashlane::detail {
namespace {

constexpr bool kSm90Compiled = FLASHLANE_HAS_SM90 != 0;

bool compiled(const RuleContext&) { return kSm90Compiled; }
bool sm_90(const RuleContext& c) { return c.device.sm == 90; }
bool kv_layout_read(const RuleContext& c) {
  // KV-cache calls: a dense or paged cache (decode/kv_tile_loader.h). Otherwise dense k/v with
  // dense q, packed with packed (common/seqlen.h).
  if (c.info.is_decode()) {
    return c.info.kv_layout == KvLayout::kDense || c.info.kv_layout == KvLayout::kPaged;
  }
  const KvLayout with_q = c.info.varlen ? KvLayout::kVarlenPacked : KvLayout::kDense;
  return c.info.kv_layout == with_q;
}
bool decode_head_dims(const RuleContext& c) {
  return !c.info.is_decode() || sm90_decode_supports(c.info.head_dim, c.info.head_dim_v);
}
bool decode_grid_fits(const RuleContext& c) {
  return !c.info.is_decode() || sm90_decode_grid_fits(c.info);
}
bool fwd_head_dims(const RuleContext& c) {
  return c.info.direction != Direction::kForward ||
         sm90_forward_supports(c.info.head_dim, c.info.head_dim_v);
}
bool fwd_grid_fits(const RuleContext& c) {
  return c.info.direction != Direction::kForward || sm90_forward_grid_fits(c.info);
}
bool bwd_head_dims(const RuleContext& c) {
  return c.info.direction != Direction::kBackward ||
         sm90_backward_supports(c.info.head_dim, c.info.head_dim_v);
}
bool bwd_grid_fits(const RuleContext& c) {
  return c.info.direction != Direction::kBackward ||
         (c.info.batch <= 65535 && c.info.heads_q <= 65535);
}

}  // namespace

const BackendDef& sm90_backend() {
  static const BackendDef def = define_backend({
      .id = Backend::kSm90,
      .name = "sm90",
      .priority = 10,
      .tensors = DeviceKind::kCUDA,
      .rules =
          {
              selection_rule("sm90.not_compiled", "this build contains the sm_90a kernels",
                             compiled),
              selection_rule("sm90.no_cuda_device", "a CUDA device and driver are present",
                             rules::has_device),
              selection_rule("sm90.requires_sm90", "the device is sm_90 (H100, H200)", sm_90),
              selection_rule("sm90.requires_cuda_tensors", "all tensors are CUDA device tensors",
                             rules::on_cuda),
              selection_rule("sm90.dtype_unsupported", "dtype is bfloat16 or float16",
                             rules::half_dtype),
              selection_rule("sm90.kv_layout_unsupported",
                             "the KV layout is q's: dense with dense q, varlen_packed with "
                             "packed q; KV-cache calls: a dense or paged cache",
                             kv_layout_read),
              selection_rule("sm90.decode_head_dim_unsupported",
                             "KV-cache call: head_dim == head_dim_v in {64, 128, 256}, compiled "
                             "into this build (the decode kernels follow FLASHLANE_SM90_HEAD_DIMS)",
                             decode_head_dims, /*build_dependent=*/true),
              selection_rule("sm90.decode_grid_too_large",
                             "KV-cache call: batch and heads_kv at most 65535, cache capacity + "
                             "seqlen_new below 2^31, query rows within int32",
                             decode_grid_fits),
              selection_rule("sm90.head_dim_unsupported", "forward: " + sm90_head_dims_text(),
                             fwd_head_dims, /*build_dependent=*/true),
              selection_rule("sm90.grid_too_large",
                             "forward: query tiles x heads_q x batch fit the kernel's int32 tile "
                             "index",
                             fwd_grid_fits),
              selection_rule("sm90.bwd_head_dim_unsupported",
                             "backward, with every mask, window, softcap, GQA/MQA, varlen, "
                             "seqused_k and deterministic: " +
                                 sm90_head_dims_text(),
                             bwd_head_dims, /*build_dependent=*/true),
              selection_rule("sm90.bwd_grid_too_large",
                             "backward: batch and heads_q are at most 65535 (they ride grid "
                             "dimensions y and z)",
                             bwd_grid_fits),
              execution_rule("sm90.launch_failed",
                             "backward and KV-cache calls: a CUDA runtime call or kernel launch of "
                             "the sm90 backward or decode kernels failed (error code cuda_error; "
                             "the message names the CUDA error)"),
          },
      .forward = sm90_forward,
      .backward = sm90_backward,
      .decode = sm90_decode,
  });
  return def;
}

}  // namespace flashlane::detail
