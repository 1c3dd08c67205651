// launch_decl.h: the light interface between the entry point (sm90_forward.cu, no CuTe) and
// the instantiation files (fwd_hdim*.cu, which include the kernel).
#pragma once

#include <cuda_runtime_api.h>

#include "flashlane/status.h"
#include "sm90/fwd/params.h"

namespace flashlane::sm90 {

/// Tile configuration of one (head_dim, head_dim_v): kBlockM is always 128 (2 consumer
/// warpgroups x 64 rows); kBlockN and the K/V stages are sized to the 227 KB of shared memory
/// (Q + stages * (K + V) blocks) and the consumers' register budget (O and S accumulators).
template <int kHeadDim, int kHeadDimV>
struct FwdConfig;
// Measured on an H200 (docs/sm90_forward.md, runs 3-4): a narrower kBlockN than shared memory
// allows wins for head_dim >= 192 (the O accumulator leaves few registers for S and P), a wider
// one for head_dim 64 (fewer per-block softmax reductions and barriers per FLOP).
template <> struct FwdConfig<64, 64> { static constexpr int kBlockN = 192, kStages = 3; };
template <> struct FwdConfig<96, 96> { static constexpr int kBlockN = 128, kStages = 3; };
template <> struct FwdConfig<128, 128> { static constexpr int kBlockN = 128, kStages = 2; };
template <> struct FwdConfig<192, 192> { static constexpr int kBlockN = 96, kStages = 2; };
template <> struct FwdConfig<192, 128> { static constexpr int kBlockN = 64, kStages = 2; };
template <> struct FwdConfig<256, 256> { static constexpr int kBlockN = 64, kStages = 2; };

/// Launches the forward kernel of one instantiation; defined in fwd/instantiations/. kBlockN and
/// kStages default to FwdConfig; other values are for tuning experiments (the harness).
template <int kHeadDim, int kHeadDimV, bool kBf16,
          int kBlockN = FwdConfig<kHeadDim, kHeadDimV>::kBlockN,
          int kStages = FwdConfig<kHeadDim, kHeadDimV>::kStages>
Status launch_fwd(FwdParams params, cudaStream_t stream);

}  // namespace flashlane::sm90
