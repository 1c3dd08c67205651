#include "flashlane/version.h"

#include "flashlane_build_info.h"

namespace flashlane {
const char* version() { return FLASHLANE_VERSION_STRING; }
const char* git_commit() { return FLASHLANE_GIT_COMMIT; }
const char* compiled_architectures() { return FLASHLANE_COMPILED_ARCHS; }
}  // namespace flashlane
