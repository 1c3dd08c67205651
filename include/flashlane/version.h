// flashlane/version.h: library version and build facts.
#pragma once

namespace flashlane {
/// Semantic version of the library, "0.1.0".
const char* version();
/// Git commit the library was built from ("unknown" outside a checkout).
const char* git_commit();
/// CUDA architectures compiled into this build, e.g. "sm_80,sm_90a".
const char* compiled_architectures();
}  // namespace flashlane
