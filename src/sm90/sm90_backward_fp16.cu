// sm90_backward_fp16.cu: the fp16 instantiations of the WGMMA backward (one translation unit per
// dtype so the two build in parallel).
#include "sm90/bwd/launch.h"

FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(64, 64, false)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(96, 96, false)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(128, 128, false)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(192, 192, false)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(192, 128, false)
FLASHLANE_SM90_BWD_WGMMA_INSTANTIATE(256, 256, false)
