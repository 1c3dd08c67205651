// launch_decl.h: the light interface between the entry point (sm90_forward.cu, no CuTe) and
// the instantiation files (generated from the kernel table, which include the kernel).
#pragma once

#include <cuda_runtime_api.h>

#include "flashlane/status.h"
#include "sm90/common/kernel_table.h"
#include "sm90/common/params.h"

namespace flashlane::sm90 {

/// Tile configuration of one (head_dim, head_dim_v): the row of kKernelTable.
template <int kHeadDim, int kHeadDimV>
struct FwdConfig {
  static constexpr KernelConfig kRow = config_of<kHeadDim, kHeadDimV>();
  static constexpr int kBlockN = kRow.fwd.block_n;
  static constexpr int kStages = kRow.fwd.stages;
  static constexpr int kExp2EmulatedPer16 = kRow.fwd.exp2_emulated_per16;
  static constexpr int kRescaleThreshold = kRow.fwd.rescale_threshold;
};

/// Launches the forward kernel of one instantiation. The tile and softmax choices default to the
/// table's row; other values are for tuning experiments (bench/ab/softmax_sweep.cu instantiates
/// them next to the generated ones).
template <int kHeadDim, int kHeadDimV, bool kBf16,
          int kBlockN = FwdConfig<kHeadDim, kHeadDimV>::kBlockN,
          int kStages = FwdConfig<kHeadDim, kHeadDimV>::kStages,
          int kExp2EmulatedPer16 = FwdConfig<kHeadDim, kHeadDimV>::kExp2EmulatedPer16,
          int kRescaleThreshold = FwdConfig<kHeadDim, kHeadDimV>::kRescaleThreshold>
Status launch_fwd(FwdParams params, cudaStream_t stream);

}  // namespace flashlane::sm90
