// launch_decl.h: the light interface between the backward's entry point (sm90_backward.cu, no
// CuTe) and the instantiation files (generated from the kernel table, which include launch.h).
#pragma once

#include <cuda_runtime_api.h>

#include "flashlane/status.h"
#include "sm90/bwd/params.h"
#include "sm90/common/kernel_table.h"

namespace flashlane::sm90 {

/// Backward tile configuration of one (head_dim, head_dim_v): the row of kKernelTable.
template <int kHeadDim, int kHeadDimV>
struct BwdConfig {
  static constexpr BwdTile kTile = config_of<kHeadDim, kHeadDimV>().bwd;
  static constexpr int kBlockM = kTile.block_m;
  static constexpr int kBlockN = kTile.block_n;
  static constexpr int kStages = kTile.stages;
  static constexpr bool kSplitHeadDim = kTile.split == BwdSplit::kHeadDim;
};

template <int D, int DV, bool kBf16>
Status launch_bwd_wgmma(BwdParams p, cudaStream_t stream);

}  // namespace flashlane::sm90
