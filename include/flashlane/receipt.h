// flashlane/receipt.h: the per-call receipt: what was asked for, what ran, and why anything
// else did not. Schema: docs/RECEIPTS.md.
#pragma once

#include <string>
#include <vector>

namespace flashlane {

struct SkippedBackend {
  std::string backend;  // "sm90"
  std::string reason;   // stable tag, "sm90.requires_sm90"
  bool operator==(const SkippedBackend& o) const {
    return backend == o.backend && reason == o.reason;
  }
};

/// One receipt per public call (forward / backward), successful or not.
struct Receipt {
  std::string requested_backend;  // "auto" or a backend name: "sm90", "reference_cuda", ...
  std::string actual_backend;     // the backend that ran; empty when nothing ran
  std::string runtime_mode;       // "fwd", "bwd", "varlen_fwd", "varlen_bwd"; with
                                  // learnable_sink "sinks_fwd", "sinks_bwd", "sinks_varlen_fwd",
                                  // "sinks_varlen_bwd"; "decode", "paged_decode",
                                  // "append_decode" (flashlane/kvcache.h)
  /// The surface of the catalog the call belongs to (docs/RECEIPTS.md, "Status"): "dense_fwd",
  /// "dense_bwd", "varlen_fwd", "varlen_bwd", "attention_sinks", "decode", "paged_decode",
  /// "append_decode"; the same ids as bench rows, the rollout manifest, the gate and
  /// `flashlane status`. Receipts written before the field read as empty.
  std::string surface;
  bool strict = false;
  /// Auto mode: the tag that made the top-priority backend step aside; empty when it ran.
  std::string fallback_reason;
  std::vector<SkippedBackend> skipped;  // every backend passed over, with its tag
  /// Kernel variant that ran: tile shape, head dims, dtype and features, e.g.
  /// "fwd_m128_n128_d128_bf16_ws2_stages2+causal" (sm90 forward),
  /// "bwd_m64_n128_d128_bf16_wgmma+causal+atomic_dq" (sm90 backward), "reference_cpu_f64acc".
  std::string variant;
  std::string device_name;  // "NVIDIA H100 80GB HBM3" or "cpu"
  int sm = 0;               // compute capability * 10 (90 for Hopper); 0 on the CPU
  bool deterministic = false;
  std::string status;       // "ok" or the error code name
  std::string error_reason; // reason tag of a refusal, empty otherwise
  /// kernel_fingerprint(actual_backend, runtime_mode) of the build that ran the call (the
  /// fingerprint of the kernel family that ran, flashlane/version.h); empty when nothing ran
  /// (or the backend has no kernel sources). Receipts written before the field read as empty.
  std::string kernel_fingerprint;

  bool operator==(const Receipt& o) const;
};

/// One-line JSON object (no trailing newline).
std::string receipt_to_json(const Receipt& receipt);
/// Parses receipt_to_json's output; returns false (leaving *out unspecified) on malformed input.
/// kernel_fingerprint is optional (older receipts lack it: read as empty, i.e. stale).
bool receipt_from_json(const std::string& json, Receipt* out);

/// The receipt of the last forward/backward call made on this thread (empty before any call).
const Receipt& last_receipt();

}  // namespace flashlane
