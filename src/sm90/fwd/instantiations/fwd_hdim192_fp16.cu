// Instantiation: sm90 forward, head_dim 192, fp16.
#include "sm90/fwd/launch.h"
FLASHLANE_SM90_FWD_INSTANTIATE(192, 192, false)
