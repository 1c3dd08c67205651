// Instantiation: sm90 forward, head_dim 192 with head_dim_v 128, bf16.
#include "sm90/fwd/launch.h"
FLASHLANE_SM90_FWD_INSTANTIATE(192, 128, true)
