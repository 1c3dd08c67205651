// sm90_backward_bf16.cu: the bf16 instantiations of the sm90 backward (one translation unit per
// dtype so the two build in parallel).
#include "sm90/bwd_mma/launch.h"

FLASHLANE_SM90_BWD_MMA_INSTANTIATE(192, 192, true)
FLASHLANE_SM90_BWD_MMA_INSTANTIATE(192, 128, true)
FLASHLANE_SM90_BWD_MMA_INSTANTIATE(256, 256, true)
