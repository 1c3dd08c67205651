#include "flashlane/version.h"

#include <cstring>
#include <string_view>

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
  if (std::strcmp(backend, "sm90_fwd") == 0) return FLASHLANE_KERNEL_FINGERPRINT_SM90_FWD;
  if (std::strcmp(backend, "sm90_bwd") == 0) return FLASHLANE_KERNEL_FINGERPRINT_SM90_BWD;
  if (std::strcmp(backend, "sm90_decode") == 0) return FLASHLANE_KERNEL_FINGERPRINT_SM90_DECODE;
  return "";
}
const char* kernel_family(const char* backend, const char* runtime_mode) {
  const std::string_view b = backend ? backend : "", m = runtime_mode ? runtime_mode : "";
  if (b != "sm90") return backend ? backend : "";
  auto ends_with = [&](std::string_view tail) {
    return m.size() >= tail.size() && m.substr(m.size() - tail.size()) == tail;
  };
  if (m.find("decode") != std::string_view::npos) return "sm90_decode";
  if (ends_with("fwd")) return "sm90_fwd";
  if (ends_with("bwd")) return "sm90_bwd";
  return backend;
}
const char* kernel_fingerprint(const char* backend, const char* runtime_mode) {
  return kernel_fingerprint(kernel_family(backend, runtime_mode));
}
}  // namespace flashlane
