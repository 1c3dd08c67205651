// sm90_backward_bf16.cu: the bf16 instantiations of the WGMMA backward (one translation unit per
// dtype so the two build in parallel).
#include "sm90/bwd/launch.h"

FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(64, 64, true)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(96, 96, true)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(128, 128, true)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(192, 192, true)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(192, 128, true)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(256, 256, true)
