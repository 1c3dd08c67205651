#include "flashlane/version.h"

#include <cstring>

#include "flashlane_build_info.h"
#include "flashlane_kernel_fingerprints.h"

namespace flashlane {
const char* version() { return FLASHLANE_VERSION_STRING; }
const char* git_commit() { return FLASHLANE_GIT_COMMIT; }
const char* compiled_architectures() { return FLASHLANE_COMPILED_ARCHS; }
const char* kernel_fingerprint(const char* backend) {
  if (backend == nullptr) return "";
  if (std::strcmp(backend, "sm90") == 0) return FLASHLANE_KERNEL_FINGERPRINT_SM90;
  if (std::strcmp(backend, "reference_cuda") == 0) return FLASHLANE_KERNEL_FINGERPRINT_REFERENCE_CUDA;
  if (std::strcmp(backend, "reference_cpu") == 0) return FLASHLANE_KERNEL_FINGERPRINT_REFERENCE_CPU;
  return "";
}
}  // namespace flashlane
