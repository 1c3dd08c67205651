// variant.cu: one softmax-sweep variant, chosen by the compile definitions SWEEP_HEAD_DIM,
// SWEEP_EMULATED_PER16 and SWEEP_RESCALE_THRESHOLD (bench/CMakeLists.txt compiles this file once
// per entry of FLASHLANE_SOFTMAX_SWEEP_VARIANTS). bf16, head_dim_v = head_dim, the kernel table's
// block_n and stages.
#include "bench/ab/softmax_sweep/variants.h"
#include "sm90/fwd/launch.h"

namespace {
constexpr int kD = SWEEP_HEAD_DIM;
using Config = flashlane::sm90::FwdConfig<kD, kD>;
constexpr auto kLaunch =
    &flashlane::sm90::launch_fwd<kD, kD, true, Config::kBlockN, Config::kStages,
                                 SWEEP_EMULATED_PER16, SWEEP_RESCALE_THRESHOLD>;
const flashlane::softmax_sweep::Register kRegistered(
    {kD, SWEEP_EMULATED_PER16, SWEEP_RESCALE_THRESHOLD, kLaunch});
}  // namespace
