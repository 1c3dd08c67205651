// bench/proof.h: proof rows, the validation and benchmark receipts of DESIGN.md ("Validation and
// benchmark receipts"): one JSON object per (problem x backend x direction), written as JSON lines
// by `flashlane bench` and read by `flashlane gate`. Schema, field by field: docs/RECEIPTS.md.
//
// counts_for_status is derived, never set by hand: compute_counts_for_status() makes it true only
// for execute rows whose requested backend is the actual backend of the per-call receipt, that ran
// on a real GPU (sm > 0, gpu_lane.ran) and whose validation passed with no NaN/Inf.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flashlane/receipt.h"

namespace flashlane::bench {

inline constexpr const char* kProofSchema = "flashlane.proof_row/1";

/// Where the row was produced.
struct Environment {
  std::string device = "cpu";  // CUDA device name, or "cpu"
  int sm = 0;                  // major * 10 + minor; 0 without a GPU
  std::string driver;          // CUDA driver version, "13.0"; "none" without a driver
  std::string cuda_runtime;    // CUDA runtime version linked in, "13.0"
  std::string library_version;
  std::string git_commit;
  std::string compiled_archs;
  /// kernel_fingerprint() of the row's requested backend in the build that produced the row
  /// (flashlane/version.h); empty in rows written before the field existed: such rows are stale.
  std::string kernel_fingerprint;
  bool operator==(const Environment&) const = default;
};
/// The environment of this process (device 0).
Environment capture_environment();

/// Whether the GPU lane ran, and why not.
struct GpuLane {
  bool ran = false;
  std::string reason;  // "no CUDA device: <driver error>" when it did not run
  bool operator==(const GpuLane&) const = default;
};

/// What the validation of a row compared (metrics.validation_scope, docs/RECEIPTS.md):
///   "full"        every element of every checked tensor;
///   "sampled"     every element of the listed (batch, query head) slices only (the bench samples
///                 problems above --full-validation-max-seqlen; src/bench/sampling.h);
///   "none"        nothing was compared (validation_ran is false);
///   "unrecorded"  read from a row written before the field existed (validation_scope was free
///                 text then, kept in validation_method); never written.
struct ValidationScope {
  std::string kind = "none";
  std::vector<std::array<int64_t, 2>> slices;  // sampled: (batch, query head), sorted, unique
  uint64_t seed = 0;                           // sampled: the problem seed the choice derives from
  int64_t total_slices = 0;                    // sampled: batch x heads_q of the problem
  int64_t full_max_seqlen = 0;                 // sampled: the threshold the problem was above
  bool operator==(const ValidationScope&) const = default;
};
nlohmann::json validation_scope_to_json(const ValidationScope& scope);
/// Strict: an object with a known kind; sampled needs slices (pairs of non-negative integers),
/// seed, total_slices and full_max_seqlen. False and *why otherwise.
bool validation_scope_from_json(const nlohmann::json& j, ValidationScope* out, std::string* why);

/// Measurements of one row. Optional fields are absent (JSON null) when not measured.
struct Metrics {
  std::optional<double> median_ms;
  std::optional<double> tflops;
  std::optional<double> median_tok_per_sec;
  std::optional<double> peak_memory_mib;
  std::string memory_method;  // how peak_memory_mib was measured
  int reps = 0;
  int warmup = 0;
  std::optional<double> max_abs_diff;      // worst tensor (largest diff / tolerance): max|out - ref64|
  std::optional<double> ref_max_abs_diff;  // same tensor: max|ref_lowp - ref64|
  std::string checked_tensor;              // which tensor the two numbers above belong to
  int64_t nan_count = 0;                   // non-finite outputs over all checked tensors
  bool validation_ran = false;
  bool validation_passed = false;
  ValidationScope validation_scope;  // what was compared: full, sampled slices, none
  std::string validation_method;     // what was compared against what, in words
  nlohmann::json errors = nlohmann::json::array();  // per-tensor figures (figure_to_json)
  /// Decode rows (direction "decode"): bytes moved (K and V read, q, o) / median time, GB/s,
  /// and the device-to-device copy bandwidth measured in the same run (read + write bytes).
  /// Absent from other rows.
  std::optional<double> gbps;
  std::optional<double> copy_gbps;
  /// Decode rows: "pass", "fail" or "not_run: <why>" (the check against reference_cuda);
  /// absent (empty) from other rows.
  std::string check;
  bool operator==(const Metrics&) const = default;
};

/// A peer backend's numbers from the same run (same inputs, same device).
struct Peer {
  std::string backend;
  std::optional<double> median_ms;
  std::optional<double> tflops;
  std::optional<double> speedup;  // peer median_ms / this row's median_ms
  bool counted = false;           // the peer row counts for status
  bool operator==(const Peer&) const = default;
};

struct ProofRow {
  std::string schema = kProofSchema;
  std::string proof_class = "observational";  // planner | observational | validation | execute
  std::string artifact_kind = "microbench_case";
  bool counts_for_status = false;
  std::string not_counted_reason;  // why counts_for_status is false; empty when true
  std::string preset;              // bench preset that produced it
  std::string timestamp;           // UTC, ISO 8601
  std::string requested_backend;
  std::string runtime_mode;        // the receipt's, or "fwd"/"bwd" when nothing ran
  std::string direction;           // "fwd" | "bwd" | "decode" (bench --preset decode)
  /// The surface the row measures (src/dispatch/surfaces.h): "dense_fwd", "varlen_bwd", ...
  /// Written by the bench from the problem (varlen or not) and the direction; rows without the
  /// field read it as surface_of_row() derives it.
  std::string surface;
  std::string status = "ok";       // Status::to_string() of the call, "ok" when it succeeded
  Environment environment;
  GpuLane gpu_lane;
  nlohmann::json problem = nlohmann::json::object();  // spec_to_json + visible_pairs, flops
  bool has_receipt = false;
  Receipt receipt;
  Metrics metrics;
  std::vector<Peer> peers;
  bool operator==(const ProofRow&) const = default;
};

/// Sets counts_for_status and not_counted_reason from the other fields (rule in the header).
void compute_counts_for_status(ProofRow* row);

nlohmann::json proof_row_to_json(const ProofRow& row);
/// Strict parse: required fields with the right types; false and *why on malformed input.
bool proof_row_from_json(const nlohmann::json& j, ProofRow* out, std::string* why);

/// Appends one line per row to `path` (creating parent directories). False and *why on error.
bool append_proof_rows(const std::string& path, const std::vector<ProofRow>& rows, bool truncate,
                       std::string* why);
/// Reads a JSON lines file of proof rows. Blank lines are skipped; any malformed line fails the
/// whole file (fail-closed) with *why naming the line.
bool read_proof_rows(const std::string& path, std::vector<ProofRow>* rows, std::string* why);

/// "fwd sm90 bfloat16 b4 sq4096 sk4096 hq16 hkv16 d128 causal": the row's identity for tables,
/// gate messages and baseline matching.
std::string row_key(const ProofRow& row);
/// Flat view of a row's identifying fields, matched by the gate's required-row selectors:
/// runtime_mode, direction, backend (requested), actual_backend, dtype, batch, seqlen (= seqlen_q),
/// seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, head_dim_v, mask, causal, window_left,
/// window_right, softcap, varlen, page_size (decode rows; 0 = dense), proof_class,
/// artifact_kind, preset, surface (the first of surfaces_of_row).
nlohmann::json row_selector_fields(const ProofRow& row);

/// The surface a row speaks for: its `surface` field when set, else derived: real-work rows
/// (artifact_kind short_train, prefill, decode) from the modes their receipts ran, microbench
/// rows from runtime_mode (or direction + problem.varlen when the mode names no surface).
/// Returns one id, or several for short_train ({"dense_fwd", "dense_bwd"}: a training step
/// runs both); empty when nothing can be derived.
std::vector<std::string> surfaces_of_row(const ProofRow& row);

/// The bench's surface id for a direction ("fwd" / "bwd") and layout: dense_fwd, dense_bwd,
/// varlen_fwd, varlen_bwd; attention_sinks for problems with sinks (either layout).
std::string bench_surface(const std::string& direction, bool varlen, bool sinks = false);

/// Whether a row's kernels are the current build's: environment.kernel_fingerprint is set and
/// equals `current` (the build's kernel_fingerprint of the row's requested backend), and the
/// receipt's kernel_fingerprint, when present, agrees. `why` (optional) receives the reason in
/// words when it is not ("no kernel fingerprint (row written before fingerprints)",
/// "kernel fingerprint 1234 != current abcd"). `current` empty: nothing is current (false).
bool row_is_fresh(const ProofRow& row, const std::string& current, std::string* why);

/// The same against every fingerprint of a build (build_kernel_fingerprints(): backend and
/// kernel family -> fingerprint): a row is current when its fingerprints equal its backend's
/// or the backend's fingerprint of the kernel family that serves the row's runtime_mode (the
/// receipt's when it has one; flashlane::kernel_family). So a forward row stays current across
/// an edit of the backward's sources, and a row of the whole backend's fingerprint stays current
/// until any kernel source of the backend changes.
bool row_is_fresh(const ProofRow& row, const std::map<std::string, std::string>& fingerprints,
                  std::string* why);

std::string utc_timestamp();

}  // namespace flashlane::bench
