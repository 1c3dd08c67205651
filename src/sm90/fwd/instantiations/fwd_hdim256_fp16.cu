// Instantiation: sm90 forward, head_dim 256, fp16.
#include "sm90/fwd/launch.h"
FLASHLANE_SM90_FWD_INSTANTIATE(256, 256, false)
