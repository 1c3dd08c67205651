// flashlane/version.h: library version and build facts.
#pragma once

namespace flashlane {
/// Semantic version of the library, "0.1.0".
const char* version();
/// Git commit the library was built from ("unknown" outside a checkout).
const char* git_commit();
/// CUDA architectures compiled into this build, e.g. "sm_80,sm_90a".
const char* compiled_architectures();
/// Kernel fingerprint of a backend in this build: 16 hex digits of a SHA-256 over the backend's
/// kernel source files (cmake/kernel_fingerprints.cmake; contents and relative paths only, so
/// every build of the same sources agrees). Input: a backend name ("sm90", "reference_cuda",
/// "reference_cpu"). Returns "" for a name without kernel sources ("sm100", "cudnn", "auto", an
/// unknown name or nullptr). Receipts carry it; a receipt whose fingerprint differs from the
/// build's is stale (docs/RECEIPTS.md).
const char* kernel_fingerprint(const char* backend);
}  // namespace flashlane
