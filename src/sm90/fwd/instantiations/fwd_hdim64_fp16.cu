// Instantiation: sm90 forward, head_dim 64, fp16.
#include "sm90/fwd/launch.h"
FLASHLANE_SM90_FWD_INSTANTIATE(64, 64, false)
