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
  // KV-cache calls are judged by the decode rows below.
  if (c.info.is_decode()) return true;
  // Dense k/v with dense q, packed with packed (common/seqlen.h).
  const KvLayout with_q = c.info.varlen ? KvLayout::kVarlenPacked : KvLayout::kDense;
  return c.info.kv_layout == with_q;
}
bool decode_page_size(const RuleContext& c) {
  return !c.info.is_decode() || c.info.kv_layout != KvLayout::kPaged || c.info.page_size % 16 == 0;
}
bool decode_rotary_dim(const RuleContext& c) {
  return !c.info.is_decode() || c.info.rotary_dim % 16 == 0;
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
              device_rule("sm90.no_cuda_device", "a CUDA device and driver are present",
                          rules::has_device),
              device_rule("sm90.requires_sm90", "the device is sm_90 (H100, H200)", sm_90),
              device_rule("sm90.requires_cuda_tensors", "all tensors are CUDA device tensors",
                          rules::on_cuda),
              selection_rule("sm90.dtype_unsupported", "dtype is bfloat16 or float16",
                             rules::half_dtype),
              selection_rule("sm90.kv_layout_unsupported",
                             "forward and backward: the KV layout is q's, dense with dense q, "
                             "varlen_packed with packed q (KV-cache calls: the decode rows)",
                             kv_layout_read),
              selection_rule("sm90.decode_page_size_unsupported",
                             "KV-cache call over a paged cache: page_size is a multiple of 16 "
                             "(the paged gather planned for the sm90 decode kernels moves whole "
                             "16-row tiles)",
                             decode_page_size),
              selection_rule("sm90.decode_rotary_dim_unsupported",
                             "KV-cache call with rotary: rotary_dim is a multiple of 16 "
                             "(FlashAttention's decode kernels' rule, kept for the planned sm90 "
                             "ones)",
                             decode_rotary_dim),
              selection_rule("sm90.decode_not_implemented",
                             "not a KV-cache (decode) call: no sm90 decode kernel exists yet, so "
                             "every KV-cache call fails closed here",
                             rules::not_decode),
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
                             "backward: a CUDA runtime call or kernel launch of the sm90 backward "
                             "failed (error code cuda_error; the message names the CUDA error)"),
          },
      .forward = sm90_forward,
      .backward = sm90_backward,
  });
  return def;
}

}  // namespace flashlane::detail
