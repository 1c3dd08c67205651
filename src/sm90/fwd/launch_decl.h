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
};

/// Launches the forward kernel of one instantiation. kBlockN and kStages default to the table's;
/// other values are for tuning experiments (instantiate them next to the generated ones).
template <int kHeadDim, int kHeadDimV, bool kBf16,
          int kBlockN = FwdConfig<kHeadDim, kHeadDimV>::kBlockN,
          int kStages = FwdConfig<kHeadDim, kHeadDimV>::kStages>
Status launch_fwd(FwdParams params, cudaStream_t stream);

}  // namespace flashlane::sm90
