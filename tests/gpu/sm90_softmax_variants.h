// sm90_softmax_variants.h: the forward kernels with emulated exp2 and conditional rescaling
// that the gpu tests compile for themselves (sm90_softmax_variants.cu).
#pragma once

#include <cuda_runtime_api.h>

#include "flashlane/status.h"
#include "sm90/common/params.h"

namespace flashlane::test_support {

inline constexpr int kVariantEmulatedPer16 = 4;
inline constexpr int kVariantRescaleThreshold = 8;

/// Launches the bf16 forward of head_dim 64 or 128 (head_dim_v the same) with
/// kVariantEmulatedPer16 of 16 exp2 on the FMA units and rescaling threshold
/// kVariantRescaleThreshold; other head dims return kInternal.
Status launch_fwd_softmax_variant(int head_dim, const sm90::FwdParams& p, cudaStream_t stream);

}  // namespace flashlane::test_support
