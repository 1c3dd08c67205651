// sm90_backward_bf16.cu: the bf16 instantiations of the WGMMA backward (one translation unit per
// dtype so the two build in parallel).
#include "sm90/bwd/launch.h"

FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(64, true)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(96, true)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(128, true)
