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
/// "reference_cpu") or an sm90 kernel family ("sm90_fwd", "sm90_bwd", "sm90_decode";
/// kernel_family below). Returns "" for a name without kernel sources ("sm100", "cudnn", "auto",
/// an unknown name or nullptr). Receipts carry it; a receipt whose fingerprint differs from the
/// build's is stale (docs/RECEIPTS.md).
const char* kernel_fingerprint(const char* backend);
/// The kernel family that serves `runtime_mode` (a receipt's runtime_mode: "fwd", "varlen_bwd",
/// "paged_decode", ...) on `backend`: "sm90_fwd" for sm90's forward modes (names ending in "fwd"),
/// "sm90_bwd" for its backward modes (ending in "bwd"), "sm90_decode" for its KV-cache modes
/// (containing "decode"); the backend name itself for every other backend or mode. nullptr
/// arguments read as "".
const char* kernel_family(const char* backend, const char* runtime_mode);
/// Kernel fingerprint of the family that serves `runtime_mode` on `backend` (kernel_family): for
/// an sm90 family, a hash over sm90's kernel sources without the other families' own files
/// (cmake/kernel_fingerprints.cmake), so an edit of the backward's files leaves the forward's and
/// the decode's fingerprints as they were; otherwise kernel_fingerprint(backend). Receipts and
/// bench rows record this one; a row whose fingerprint equals neither it nor the backend's is
/// stale (docs/RECEIPTS.md, section 4).
const char* kernel_fingerprint(const char* backend, const char* runtime_mode);
}  // namespace flashlane
