// Instantiation: sm90 forward, head_dim 96, bf16.
#include "sm90/fwd/launch.h"
FLASHLANE_SM90_FWD_INSTANTIATE(96, 96, true)
