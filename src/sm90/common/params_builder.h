// params_builder.h: the validated problem -> kernel parameters, for both directions. The
// backward's builder runs the forward's and adds the gradients, so shapes, strides, layouts,
// score scale and mask are translated in one place.
#pragma once

#include "flashlane/problem.h"
#include "flashlane/status.h"
#include "sm90/common/params.h"

namespace flashlane::sm90 {

/// Fills every field of FwdParams the problem determines (tensors, strides, shapes, layouts,
/// score scale, mask) and the forward tile grid. Errors: kInternal with tag
/// "sm90.grid_too_large" when the tile count exceeds int32 (the applicability table refuses
/// such problems first, sm90_forward_grid_fits), "sm90.kv_layout_unsupported" for a paged KV
/// layout (no sm90 kernel reads one yet) or a KV layout that is not q's (dense with dense,
/// packed with packed).
Status build_fwd_params(const AttentionProblem& problem, const ProblemInfo& info, FwdParams* p);

/// build_fwd_params' fields (without the forward tile grid) plus dout, dq, dk, dv, their
/// strides, softmax_scale and the deterministic flag. The workspace fields are the launch's
/// (bwd/launch.h). Errors as build_fwd_params.
Status build_bwd_params(const AttentionProblem& problem, const ProblemInfo& info, BwdParams* p);

/// Tile order of the forward (common/tile_order.h, FwdParams::tile_group): how many (batch, head)
/// pairs interleave their M-blocks, longest first. Persistent (uniform) problems keep 1. Masked or
/// varlen problems run one tile per CTA: interleaving the longest M-blocks of a few heads balances
/// the SMs better, as long as the K/V those pairs read together stays within 16 MiB (a third of
/// an H100/H200's L2); at most 8 and at most batch * heads_q. Measured on an H200
/// (docs/sm90_forward.md, "Tile order"): causal cells up to 11% faster to 8k; 8 interleaved pairs
/// at 16k (head_dim 128, 256) were 4-5% slower, hence the budget.
int fwd_tile_group(const ProblemInfo& info, bool persistent);

/// Forward tile schedule of the next launches: kAuto picks per problem; the others force it.
enum class ScheduleOverride : int { kAuto = 0, kOneTilePerCta = 1, kPersistent = 2 };
void set_schedule_override(ScheduleOverride mode);
/// Pingpong between the forward's two consumer warpgroups (default on); for A/B measurements.
void set_pingpong(bool enabled);

}  // namespace flashlane::sm90
