// Tuning experiments: tile shapes other than FwdConfig's, launched by the harness's "variants"
// mode through the same FwdParams. Not part of the library.
#include "sm90/fwd/launch.h"

template flashlane::Status flashlane::sm90::launch_fwd<192, 128, true, 96, 2>(
    flashlane::sm90::FwdParams, cudaStream_t);
template flashlane::Status flashlane::sm90::launch_fwd<128, 128, true, 96, 2>(
    flashlane::sm90::FwdParams, cudaStream_t);
