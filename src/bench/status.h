// bench/status.h: the rollout manifest (bench/rollout_manifest.json) and the status it yields
// from code and receipts: `flashlane status` and docs/STATUS.md.
//
// Precedence: code first (the surface catalog of src/dispatch/surfaces.h says which surfaces
// have code and which backends may serve them, with their tags), then the receipts of the
// current kernels (proof rows whose kernel fingerprint is this build's), never prose. A receipt
// of other kernels is stale: listed, never counted.
//
// The manifest (schema flashlane.rollout_manifest/1, docs/RECEIPTS.md "Rollout manifest") gives
// each surface a target backend, a ladder of rungs (L0, L1, R1 ... R7) and each rung's
// requirements, plus per-row baselines (throughput, peak memory) for the gate's stop rules.
// A surface stands on the last rung of the unbroken run of met rungs from the bottom; the next
// rung's unmet requirements are what is owed.
//
// Stoplight, per (surface, backend):
//   red     the surface has no code (surface.not_implemented) or the backend cannot serve it
//           (its tag: sm100.not_implemented, sm90.not_compiled, ...);
//   green   target backend: the surface stands on R1 or higher, every requirement up to that
//           rung met by counting receipts of the current kernels; other backends: at least one
//           counting receipt of the current kernels on this surface that this backend executed;
//   yellow  the code exists, proof is owed (named in `owed`).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/gate.h"
#include "bench/proof.h"

namespace flashlane::bench {

inline constexpr const char* kManifestSchema = "flashlane.rollout_manifest/1";
inline constexpr const char* kStatusSchema = "flashlane.status/1";

/// A pass criterion a real-work row must carry in metrics.errors: the entry named `criterion`
/// with pass true and, when `max` is set, a numeric value <= max.
struct CriterionRequirement {
  std::string criterion;
  std::optional<double> max;
};

/// One requirement of a rung. kind:
///   "code"        L0: the surface has code and the target backend may serve it in this build
///                 (surface catalog); `tests` names the contract tests (ctest -L cpu) that
///                 exercise it.
///   "fail_closed" L1: a proof row whose requested backend did not execute (a fallback, or
///                 nothing ran) must not count for status: probed live on compute_counts_for_status.
///   "receipts"    R1-R6: proof rows of the surface that count for status, are of the current
///                 kernels and match every field below; either `rows` (each selector must be
///                 matched by such a row) or at least `min_rows` of them.
///   "gate"        R7: run_gate over the surface's rows of `backend` with `required` / `claims`
///                 (or those of `gate_config`, a file relative to the manifest), the manifest's
///                 baselines and the current fingerprints, must pass.
struct Requirement {
  std::string kind = "receipts";
  std::string text;           // what it asks for, in words
  std::string artifact_kind;  // receipts: rows' artifact_kind ("" any)
  std::string proof_class;    // receipts: rows' proof_class ("" any)
  std::string backend;        // receipts / gate: requested and executed backend (default: target)
  std::string device_class;   // "hopper": environment and receipt sm == 90; "gpu": sm > 0; "" any
  nlohmann::json match = nlohmann::json::object();  // more selector fields (gate.h)
  int min_rows = 1;
  std::vector<nlohmann::json> rows;  // selectors that must each be matched
  bool peer_same_run = false;        // a peer measured in the same run, itself counted
  std::vector<CriterionRequirement> criteria;
  std::vector<std::string> tests;    // code: contract test names
  std::vector<nlohmann::json> required;  // gate: required selectors
  std::vector<std::string> claims;       // gate: claimed modes
  std::string gate_config;               // gate: config file relative to the manifest
};

struct Rung {
  std::string id;     // "L0", "L1", "R1" ... "R7"
  std::string title;  // one line
  std::vector<Requirement> requires_;
};

struct SurfacePlan {
  std::string surface;         // catalog id
  std::string target_backend;  // the backend the ladder is climbed for ("sm90")
  std::vector<Rung> rungs;     // bottom first
  std::vector<BaselineEntry> baselines;
  std::string baseline_source;  // the receipts file the baselines were taken from
};

struct Manifest {
  std::string description;
  std::vector<SurfacePlan> surfaces;
  std::string directory;  // folder of the manifest file (gate_config paths are relative to it)
};

/// Strict parse of a manifest: schema flashlane.rollout_manifest/1, every surface id in the
/// catalog, rung ids unique per surface, requirement kinds known, unknown keys refused (a typo
/// must not switch a requirement off). False and *why on error.
bool manifest_from_json(const nlohmann::json& j, Manifest* out, std::string* why);
bool load_manifest(const std::string& path, Manifest* out, std::string* why);

/// Every surface's baselines as gate baseline entries (each selector gains the surface id).
std::vector<BaselineEntry> gate_baselines(const Manifest& manifest);

/// A receipts file as status read it.
struct ReceiptFile {
  std::string path;
  std::string error;  // why it could not be read as proof rows ("" when read); its rows are ignored
  int rows = 0;
  int counting = 0;   // count for status and are of the current kernels
  int stale = 0;      // would count but are of other kernels (or carry no fingerprint)
};

struct RequirementResult {
  std::string kind;
  std::string text;
  bool met = false;
  std::string detail;  // unmet: what is missing; met: what met it
  int fresh_rows = 0;  // qualifying counting rows of the current kernels
  int stale_rows = 0;  // rows that would qualify but are stale
};

struct RungResult {
  std::string id;
  std::string title;
  bool met = false;
  std::vector<RequirementResult> requirements;
};

struct Cell {
  std::string backend;
  std::string light;       // "green" | "yellow" | "red"
  std::string reason_tag;  // red: the tag
  std::string detail;      // one line
  std::vector<std::string> owed;  // yellow: what proof is owed
  int fresh_rows = 0;
  int stale_rows = 0;
  int fallback_rows = 0;   // rows that requested this backend but another one (or none) ran
};

struct SurfaceStatus {
  std::string surface;
  std::string description;
  std::string target_backend;
  bool has_code = false;
  std::string reason_tag;
  bool in_manifest = false;
  std::string rung;        // highest rung stood on ("" none)
  std::string rung_title;
  /// The rung the receipts would reach if the stale ones were of the current kernels (shows
  /// what re-running them would restore); equals `rung` when nothing is stale.
  std::string rung_if_current;
  std::string next_rung;   // "" when the top is reached
  std::string next_title;
  std::vector<std::string> next_missing;  // the next rung's unmet requirements, with detail
  std::vector<RungResult> rungs;
  std::vector<Cell> cells;  // one per registered backend, registry order
};

struct StatusReport {
  std::map<std::string, std::string> fingerprints;
  std::vector<ReceiptFile> files;
  std::vector<std::string> backends;
  std::vector<SurfaceStatus> surfaces;
  int rows = 0;
};

/// A receipt row with the file it came from.
struct SourcedRow {
  ProofRow row;
  std::string file;
};

/// Reads every *.jsonl file directly in `dir` (sorted by name; subfolders such as archive/ are
/// not read). A file that is not valid proof rows is listed with its error and contributes no
/// rows (fail-closed: it can prove nothing). False and *why only when `dir` is not a folder.
bool read_receipts_dir(const std::string& dir, std::vector<SourcedRow>* rows,
                       std::vector<ReceiptFile>* files, std::string* why);

/// Computes the status. Inputs: the manifest, the rows (read_receipts_dir), the files they came
/// from (updated with counting / stale counts), and the current kernel fingerprints per backend
/// and kernel family (build_kernel_fingerprints(); a row is current by row_is_fresh, a backend
/// missing from the map has no current kernels, so none of its rows count). Never throws.
StatusReport compute_status(const Manifest& manifest, const std::vector<SourcedRow>& rows,
                            std::vector<ReceiptFile> files,
                            const std::map<std::string, std::string>& fingerprints);

/// The report as JSON (schema flashlane.status/1, docs/RECEIPTS.md "Status"). `with_fingerprints`
/// false leaves the fingerprint values out (docs/STATUS.md's form: the page changes when what
/// counts changes, not at every kernel edit).
nlohmann::json status_to_json(const StatusReport& report, bool with_fingerprints);
/// Plain text for the terminal: the matrix, then each surface's rung, next rung and what it owes.
std::string status_to_text(const StatusReport& report);
/// docs/STATUS.md: `manifest` and `receipts` are the paths as given (relative to the checkout).
std::string status_to_markdown(const StatusReport& report, const std::string& manifest,
                               const std::string& receipts);

}  // namespace flashlane::bench
