// launch_decl.h: the instantiated WGMMA backward launches, declared for sm90_backward.cu (no
// CuTe, no kernel code); defined in sm90_backward_{bf16,fp16}.cu.
#pragma once

#include <cuda_runtime_api.h>

#include "flashlane/status.h"
#include "sm90/bwd/params.h"

namespace flashlane::sm90 {

/// Query-tile and key-tile edges of the WGMMA backward for `head_dim` (named in the variant).
constexpr int bwd_wgmma_block_m(int head_dim) { return head_dim == 64 ? 128 : 64; }
constexpr int bwd_wgmma_block_n(int head_dim) { return head_dim > 128 ? 64 : 128; }

template <int D, int DV, bool kBf16>
Status launch_bwd_wgmma(BwdParams p, cudaStream_t stream);

}  // namespace flashlane::sm90
