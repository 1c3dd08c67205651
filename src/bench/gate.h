// bench/gate.h: DESIGN.md's stop rules over proof rows, fail-closed. Used by `flashlane gate` and
// tests/cpu/test_gate.cpp.
//
// Rules (each violation names its rule and the row key):
//   no_rows            the set of rows is empty (or no file could be read: a malformed file fails)
//   counts_mismatch    a row's counts_for_status disagrees with compute_counts_for_status() on its
//                      own fields (hand-edited or mis-produced); the derived value is used
//   no_counting_row    not a single row counts for status (nothing proves anything)
//   required_missing   a required row (config "required", matched by selector fields) is absent
//   required_not_counted  a row matching a required selector does not count for status
//   non_finite         nan_count > 0, or a metric (median_ms, tflops, peak_memory_mib,
//                      max_abs_diff, ref_max_abs_diff, any per-tensor figure) is NaN/Inf
//   error_bound        max_abs_diff > 2 * ref_max_abs_diff + 1e-5 (the row and each tensor of it);
//                      a counting row without error figures also fails this rule, except
//                      real-work rows (artifact_kind short_train, prefill, decode), which
//                      prove themselves by their pass criteria instead:
//   criteria           a counting real-work row whose metrics.errors holds no {"criterion": ...}
//                      entry, or one whose "pass" is not true (docs/VALIDATION.md)
//   throughput         tflops below (1 - throughput_tolerance) x baseline (default 10%)
//   memory             peak_memory_mib above (1 + memory_tolerance) x baseline (default 5%)
//   claim_not_executed a claimed mode (config "claims": fwd, bwd, varlen, decode, paged) has no
//                      execute row that counts for status
//   stale_fingerprint  (when GateConfig::current_fingerprints is set) a row that would count
//                      for status, but whose environment.kernel_fingerprint (or its receipt's) is
//                      not the current build's for its backend: it is shown, and treated as not
//                      counting (required rows, claims and no_counting_row see it as such)
//   train_failed       a short_train row whose run failed: status not ok, a pass criterion not
//                      passed, validation not passed, or non-finite outputs (counting or not)
//   mode_not_executed  an execute row whose receipt did not execute the mode the row claims:
//                      no receipt, nothing ran (actual_backend empty), or the receipt's
//                      runtime_mode is not the row's
//   validation_scope   metrics.validation_scope contradicts the row: "none" on a validated row,
//                      "full" or "sampled" on a row that was not validated, or a sampled scope
//                      whose slices are empty, repeated, outside the problem's batch x heads_q, or
//                      whose total_slices is not batch x heads_q. "full" and "sampled" rows count
//                      alike (a sampled row is validated, on the slices it names); "unrecorded"
//                      (rows written before the field existed: free text or nothing there, as in
//                      bench/results/2026-11-22-*, and real-work rows) is accepted and counted
//                      in GateResult::unrecorded_scope_rows, as the gate accepts the other fields
//                      older rows lack.
// Baselines: rows of a baseline receipts file (matched by row_key; the last counting row of a
// key wins), or config "baseline": [{"match": {selector}, "tflops": x, "peak_memory_mib": y}]
// (the rollout manifest's per-row baselines join these: manifest.h gate_baselines()).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/proof.h"

namespace flashlane::bench {

struct BaselineEntry {
  nlohmann::json match;  // selector (all fields must equal the row's selector fields)
  std::optional<double> tflops;
  std::optional<double> peak_memory_mib;
};

struct GateConfig {
  std::vector<nlohmann::json> required;  // selectors
  std::vector<std::string> claims;
  std::vector<BaselineEntry> baseline;
  double throughput_tolerance = 0.10;
  double memory_tolerance = 0.05;
  /// backend or kernel family -> the current build's kernel fingerprint
  /// (build_kernel_fingerprints(); rows are judged by row_is_fresh, bench/proof.h). Empty: the
  /// stale_fingerprint rule is off (library callers judging rows of a known build); the
  /// `flashlane gate` command always sets it.
  std::map<std::string, std::string> current_fingerprints;
};

/// backend or kernel family -> kernel_fingerprint() of this build, for every backend with kernel
/// sources (sm90, reference_cuda, reference_cpu) and sm90's kernel families (sm90_fwd, sm90_bwd,
/// sm90_decode; flashlane/version.h).
std::map<std::string, std::string> build_kernel_fingerprints();

/// Parses a gate configuration; unknown top-level keys are an error (a typo must not disable a
/// rule). Keys: required, claims, baseline, throughput_tolerance, memory_tolerance, description.
bool gate_config_from_json(const nlohmann::json& j, GateConfig* out, std::string* why);
bool load_gate_config(const std::string& path, GateConfig* out, std::string* why);

struct Violation {
  std::string rule;
  std::string key;  // row key or selector text
  std::string detail;
  std::string to_string() const { return rule + ": " + key + (detail.empty() ? "" : " (" + detail + ")"); }
};

struct GateResult {
  bool pass = false;
  std::vector<Violation> violations;
  int rows = 0;
  int counting_rows = 0;
  int sampled_rows = 0;           // counting rows validated on sampled (batch, head) slices
  int unrecorded_scope_rows = 0;  // rows without a structured validation_scope (older rows)
  int stale_rows = 0;             // rows that would count but are not of the current kernels
};

/// True when every field of `selector` equals the row's selector field (numbers compared as
/// numbers; the key "seqlen" means seqlen_q).
bool selector_matches(const nlohmann::json& selector, const ProofRow& row);

/// Applies every rule. Inputs: the rows to judge, the configuration, and baseline rows (may be
/// empty). Output: pass (no violation) and one Violation per failed rule and row; never throws.
GateResult run_gate(const std::vector<ProofRow>& rows, const GateConfig& config,
                    const std::vector<ProofRow>& baseline_rows);

}  // namespace flashlane::bench
