// sm90_forward.h: internal knobs of the sm90 forward, for tests and the standalone harness.
#pragma once

#include "flashlane/problem.h"
#include "flashlane/status.h"
#include "sm90/fwd/params.h"

namespace flashlane::sm90 {

/// Translates a validated problem into the kernel's parameters (strides, scales, mask, grid).
Status build_fwd_params(const AttentionProblem& problem, const ProblemInfo& info, FwdParams* p);

/// Tile schedule of the next launches: kAuto picks per problem; the others force it.
enum class ScheduleOverride : int { kAuto = 0, kOneTilePerCta = 1, kPersistent = 2 };
void set_schedule_override(ScheduleOverride mode);
/// Pingpong between the two consumer warpgroups (default on); for A/B measurements.
void set_pingpong(bool enabled);

}  // namespace flashlane::sm90
