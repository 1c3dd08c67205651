// launch_decl.h: the instantiated backward launches, declared for sm90_backward.cu (no CuTe,
// no kernel code); defined in sm90_backward_{bf16,fp16}.cu.
#pragma once

#include <cuda_runtime_api.h>

#include "flashlane/status.h"
#include "sm90/bwd/params.h"

namespace flashlane::sm90 {

/// Key-tile edge of the (D, DV) backward (named in the receipt's variant).
constexpr int bwd_block_n(int d, int dv) { return d <= 128 && dv <= 128 ? 64 : 32; }

template <int D, int DV, bool kBf16>
Status launch_bwd_mma(const BwdParams& p, cudaStream_t stream);

}  // namespace flashlane::sm90
