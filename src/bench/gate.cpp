// bench/gate.cpp: the stop rules of DESIGN.md applied to proof rows, fail-closed (gate.h).
#include "bench/gate.h"
#include "bench/json_file.h"

#include <array>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "bench/harness.h"
#include "flashlane/version.h"

namespace flashlane::bench {

namespace {

bool finite_opt(const std::optional<double>& x) { return !x || std::isfinite(*x); }

bool json_number_finite(const nlohmann::json& v) {
  if (v.is_null()) return true;
  if (v.is_number()) return std::isfinite(v.get<double>());
  return false;  // "nan", "inf" strings and anything else
}

bool mode_matches_claim(const std::string& claim, const std::string& mode) {
  if (claim == mode) return true;
  if (claim == "fwd") return mode == "fwd" || mode == "varlen_fwd";
  if (claim == "bwd") return mode == "bwd" || mode == "varlen_bwd";
  if (claim == "varlen") return mode.rfind("varlen", 0) == 0;
  if (claim == "decode") return mode.find("decode") != std::string::npos;
  if (claim == "paged") return mode.find("paged") != std::string::npos;
  return false;
}

/// Whether a row's error figures are elementwise-bound figures (decode rows: every entry of
/// metrics.errors has a max_ratio and no ref_max_abs_diff, and there is at least one).
bool has_bound_figures(const Metrics& m) {
  if (!m.errors.is_array() || m.errors.empty()) return false;
  for (const auto& f : m.errors)
    if (!f.is_object() || !f.contains("max_ratio") || f.contains("ref_max_abs_diff")) return false;
  return true;
}

bool is_real_work_kind(const std::string& kind) {
  return kind == "short_train" || kind == "prefill" || kind == "decode";
}

bool values_equal(const nlohmann::json& want, const nlohmann::json& have) {
  if (want.is_number() && have.is_number()) return want.get<double>() == have.get<double>();
  return want == have;
}

/// Why a row's validation_scope contradicts the row, or "" when it does not.
std::string validation_scope_problem(const ProofRow& r) {
  const ValidationScope& v = r.metrics.validation_scope;
  const bool ran = r.metrics.validation_ran;
  if (v.kind == "unrecorded") return "";
  if (v.kind == "none") return ran ? "validation ran but its scope is none" : "";
  if (!ran) return "scope " + v.kind + " on a row that was not validated";
  if (v.kind == "full") return "";
  if (v.kind != "sampled") return "unknown scope kind " + v.kind;
  const int64_t batch = r.problem.value("batch", int64_t{-1});
  const int64_t heads = r.problem.value("heads_q", int64_t{-1});
  if (v.slices.empty()) return "sampled without slices";
  if (batch <= 0 || heads <= 0) return "sampled, but the problem has no batch / heads_q";
  if (v.total_slices != batch * heads)
    return "total_slices " + std::to_string(v.total_slices) + " != batch x heads_q " +
           std::to_string(batch * heads);
  std::set<std::array<int64_t, 2>> seen;
  for (const auto& s : v.slices) {
    if (s[0] < 0 || s[0] >= batch || s[1] < 0 || s[1] >= heads)
      return "slice [" + std::to_string(s[0]) + "," + std::to_string(s[1]) + "] outside batch " +
             std::to_string(batch) + " x heads_q " + std::to_string(heads);
    if (!seen.insert(s).second)
      return "slice [" + std::to_string(s[0]) + "," + std::to_string(s[1]) + "] listed twice";
  }
  return "";
}

}  // namespace

std::map<std::string, std::string> build_kernel_fingerprints() {
  std::map<std::string, std::string> out;
  for (const char* b : {"sm90", "sm90_fwd", "sm90_bwd", "sm90_decode", "reference_cuda",
                        "reference_cpu"}) {
    out[b] = kernel_fingerprint(b);
  }
  return out;
}

bool gate_config_from_json(const nlohmann::json& j, GateConfig* out, std::string* why) {
  auto fail = [&](const std::string& m) { if (why) *why = m; return false; };
  if (!j.is_object()) return fail("gate config is not a JSON object");
  static const std::set<std::string> kKeys = {"required", "claims", "baseline", "description",
                                              "throughput_tolerance", "memory_tolerance"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kKeys.count(it.key())) return fail("unknown gate config key '" + it.key() + "'");
  try {
    GateConfig c;
    if (j.contains("required")) {
      for (const auto& s : j.at("required")) {
        if (!s.is_object() || s.empty()) return fail("a required selector is not a non-empty object");
        c.required.push_back(s);
      }
    }
    if (j.contains("claims"))
      for (const auto& s : j.at("claims")) c.claims.push_back(s.get<std::string>());
    if (j.contains("baseline")) {
      for (const auto& b : j.at("baseline")) {
        BaselineEntry e;
        e.match = b.at("match");
        if (!e.match.is_object()) return fail("baseline match is not an object");
        if (b.contains("tflops")) e.tflops = b["tflops"].get<double>();
        if (b.contains("peak_memory_mib")) e.peak_memory_mib = b["peak_memory_mib"].get<double>();
        c.baseline.push_back(e);
      }
    }
    c.throughput_tolerance = j.value("throughput_tolerance", 0.10);
    c.memory_tolerance = j.value("memory_tolerance", 0.05);
    if (!(c.throughput_tolerance >= 0 && c.throughput_tolerance < 1) ||
        !(c.memory_tolerance >= 0 && std::isfinite(c.memory_tolerance)))
      return fail("tolerances out of range");
    *out = std::move(c);
    return true;
  } catch (const std::exception& e) {
    return fail(std::string("malformed gate config: ") + e.what());
  }
}

bool load_gate_config(const std::string& path, GateConfig* out, std::string* why) {
  nlohmann::json j;
  if (!read_json_file(path, "gate config", &j, why)) return false;
  std::string w;
  if (!gate_config_from_json(j, out, &w)) {
    if (why) *why = path + ": " + w;
    return false;
  }
  return true;
}

bool selector_matches(const nlohmann::json& selector, const ProofRow& row) {
  const nlohmann::json fields = row_selector_fields(row);
  for (auto it = selector.begin(); it != selector.end(); ++it) {
    if (!fields.contains(it.key())) return false;
    if (!values_equal(it.value(), fields[it.key()])) return false;
  }
  return true;
}

GateResult run_gate(const std::vector<ProofRow>& rows, const GateConfig& config,
                    const std::vector<ProofRow>& baseline_rows) {
  GateResult g;
  g.rows = static_cast<int>(rows.size());
  auto add = [&](std::string rule, std::string key, std::string detail) {
    g.violations.push_back({std::move(rule), std::move(key), std::move(detail)});
  };
  if (rows.empty()) add("no_rows", "(none)", "no proof rows to judge");
  // counts_for_status is derived from the row's other fields; a file that says otherwise (edited
  // by hand, or written by a buggy producer) is a violation, and the derived value is used.
  std::vector<ProofRow> derived_rows = rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    compute_counts_for_status(&derived_rows[i]);
    if (derived_rows[i].counts_for_status != rows[i].counts_for_status)
      add("counts_mismatch", row_key(rows[i]),
          std::string("file says counts_for_status=") + (rows[i].counts_for_status ? "true" : "false") +
              ", the row's fields say " + (derived_rows[i].counts_for_status ? "true" : "false") +
              (derived_rows[i].not_counted_reason.empty() ? "" : " (" + derived_rows[i].not_counted_reason + ")"));
  }
  // Stale rows (kernels other than the current build's) are shown and do not count.
  if (!config.current_fingerprints.empty()) {
    for (auto& r : derived_rows) {
      if (!r.counts_for_status) continue;
      std::string why;
      if (row_is_fresh(r, config.current_fingerprints, &why)) continue;
      add("stale_fingerprint", row_key(r), why);
      ++g.stale_rows;
      r.counts_for_status = false;
      r.not_counted_reason = "stale: " + why;
    }
  }
  const std::vector<ProofRow>& judged = derived_rows;
  for (const auto& r : judged) g.counting_rows += r.counts_for_status ? 1 : 0;
  if (!rows.empty() && g.counting_rows == 0)
    add("no_counting_row", "(all)", "none of the " + std::to_string(rows.size()) +
                                        " rows counts for status");

  // Required rows.
  for (const auto& sel : config.required) {
    bool found = false;
    for (const auto& r : judged) {
      if (!selector_matches(sel, r)) continue;
      found = true;
      if (!r.counts_for_status)
        add("required_not_counted", row_key(r),
            r.not_counted_reason.empty() ? "counts_for_status is false" : r.not_counted_reason);
    }
    if (!found) add("required_missing", sel.dump(), "no row matches");
  }

  // Per-row numeric rules.
  for (const auto& r : judged) {
    const Metrics& m = r.metrics;
    const std::string key = row_key(r);
    // A row claiming execution must carry the receipt of that execution.
    if (r.proof_class == "execute") {
      if (!r.has_receipt)
        add("mode_not_executed", key, "claims " + r.runtime_mode + " without a per-call receipt");
      else if (r.receipt.actual_backend.empty())
        add("mode_not_executed", key, "claims " + r.runtime_mode + " but nothing ran (" +
                                          (r.receipt.error_reason.empty() ? r.receipt.status
                                                                          : r.receipt.error_reason) + ")");
      else if (r.receipt.runtime_mode != r.runtime_mode)
        add("mode_not_executed", key, "claims " + r.runtime_mode + " but the receipt ran " +
                                          r.receipt.runtime_mode);
    }
    if (r.artifact_kind == "short_train") {
      std::string failed;
      if (r.status != "ok") failed += "status " + r.status + "; ";
      if (m.nan_count > 0) failed += "nan_count " + std::to_string(m.nan_count) + "; ";
      if (m.errors.is_array())
        for (const auto& f : m.errors)
          if (f.is_object() && f.contains("criterion") &&
              !(f.contains("pass") && f["pass"].is_boolean() && f["pass"].get<bool>()))
            failed += "criterion " + f["criterion"].dump() + " not passed; ";
      if (failed.empty() && !m.validation_passed) failed = "validation not passed; ";
      if (!failed.empty()) add("train_failed", key + " [" + r.preset + "]", failed.substr(0, failed.size() - 2));
    }
    const std::string scope_problem = validation_scope_problem(r);
    if (!scope_problem.empty()) add("validation_scope", key, scope_problem);
    if (m.validation_scope.kind == "unrecorded") ++g.unrecorded_scope_rows;
    if (r.counts_for_status && m.validation_scope.kind == "sampled") ++g.sampled_rows;
    std::string bad;
    if (m.nan_count > 0) bad += "nan_count=" + std::to_string(m.nan_count) + " ";
    if (!finite_opt(m.median_ms)) bad += "median_ms ";
    if (!finite_opt(m.tflops)) bad += "tflops ";
    if (!finite_opt(m.median_tok_per_sec)) bad += "median_tok_per_sec ";
    if (!finite_opt(m.peak_memory_mib)) bad += "peak_memory_mib ";
    if (!finite_opt(m.max_abs_diff)) bad += "max_abs_diff ";
    if (!finite_opt(m.ref_max_abs_diff)) bad += "ref_max_abs_diff ";
    if (!finite_opt(m.gbps)) bad += "gbps ";
    if (!finite_opt(m.copy_gbps)) bad += "copy_gbps ";
    if (m.errors.is_array()) {
      for (const auto& f : m.errors) {
        const std::string t = f.value("tensor", std::string("?"));
        if (f.value("nan_count", int64_t{0}) > 0) bad += t + ".nan_count ";
        for (const char* k : {"max_abs_diff", "ref_max_abs_diff"})
          if (f.contains(k) && !json_number_finite(f[k])) bad += t + "." + k + " ";
        // A figure written as null came from a non-finite value (figure_to_json).
        for (const char* k : {"max_abs_diff", "ref_max_abs_diff", "tolerance"})
          if (f.contains(k) && f[k].is_null()) bad += t + "." + k + "(null) ";
      }
    }
    if (!bad.empty()) add("non_finite", key, bad.substr(0, bad.size() - 1));

    // FlashAttention's error bound.
    if (m.max_abs_diff && m.ref_max_abs_diff && std::isfinite(*m.max_abs_diff) &&
        std::isfinite(*m.ref_max_abs_diff)) {
      const double tol = 2.0 * *m.ref_max_abs_diff + kAbsTolerance;
      if (*m.max_abs_diff > tol)
        add("error_bound", key,
            m.checked_tensor + " max_abs_diff " + std::to_string(*m.max_abs_diff) + " > " +
                std::to_string(tol));
    } else if (r.counts_for_status && (!m.max_abs_diff || !m.ref_max_abs_diff) &&
               !is_real_work_kind(r.artifact_kind) && !has_bound_figures(m)) {
      add("error_bound", key, "counting row without error figures");
    }
    // Decode rows are checked under an elementwise bound instead (src/bench/decode.h): each
    // figure's max_ratio (max |out - ref| / bound) must be at most 1.
    if (m.errors.is_array())
      for (const auto& f : m.errors) {
        if (!f.is_object() || !f.contains("max_ratio") || f.contains("ref_max_abs_diff")) continue;
        const bool ok = f["max_ratio"].is_number() && f["max_ratio"].get<double>() <= 1.0;
        if (!ok)
          add("error_bound", key,
              f.value("tensor", std::string("?")) + " max_ratio " + f["max_ratio"].dump() +
                  " > 1 (" + f.value("bound", std::string("elementwise bound")) + ")");
      }
    // Real-work rows (short_train, prefill, decode) prove themselves by pass criteria listed in
    // metrics.errors ({"criterion", "pass", ...}); a counting one needs at least one, all passed.
    if (is_real_work_kind(r.artifact_kind) && r.counts_for_status) {
      int criteria = 0;
      std::string failed;
      if (m.errors.is_array())
        for (const auto& f : m.errors) {
          if (!f.is_object() || !f.contains("criterion")) continue;
          ++criteria;
          const bool ok = f.contains("pass") && f["pass"].is_boolean() && f["pass"].get<bool>();
          if (!ok) failed += (failed.empty() ? "" : ", ") + f["criterion"].dump();
        }
      if (criteria == 0) add("criteria", key, "counting " + r.artifact_kind + " row without pass criteria");
      else if (!failed.empty()) add("criteria", key, "criteria not passed: " + failed);
    }
    if (m.errors.is_array()) {
      for (const auto& f : m.errors) {
        if (!f.contains("max_abs_diff") || !f.contains("ref_max_abs_diff")) continue;
        if (!f["max_abs_diff"].is_number() || !f["ref_max_abs_diff"].is_number()) continue;
        const double d = f["max_abs_diff"].get<double>(), ref = f["ref_max_abs_diff"].get<double>();
        const double tol = 2.0 * ref + kAbsTolerance;
        if (d > tol)
          add("error_bound", key,
              f.value("tensor", std::string("?")) + " max_abs_diff " + std::to_string(d) + " > " +
                  std::to_string(tol));
      }
    }
  }

  // Baselines: the last counting row of each key in the baseline file, then config entries.
  std::map<std::string, const ProofRow*> base_by_key;
  std::vector<ProofRow> baseline_derived = baseline_rows;
  for (auto& b : baseline_derived) compute_counts_for_status(&b);
  for (const auto& b : baseline_derived)
    if (b.counts_for_status) base_by_key[row_key(b)] = &b;
  for (const auto& r : judged) {
    if (r.proof_class != "execute") continue;
    const std::string key = row_key(r);
    std::optional<double> base_tflops, base_mem;
    std::string source;
    auto it = base_by_key.find(key);
    if (it != base_by_key.end()) {
      base_tflops = it->second->metrics.tflops;
      base_mem = it->second->metrics.peak_memory_mib;
      source = "baseline file";
    }
    for (const auto& e : config.baseline) {
      if (!selector_matches(e.match, r)) continue;
      if (e.tflops) base_tflops = e.tflops;
      if (e.peak_memory_mib) base_mem = e.peak_memory_mib;
      source = "config baseline";
    }
    if (base_tflops && *base_tflops > 0) {
      const double floor = (1.0 - config.throughput_tolerance) * *base_tflops;
      if (!r.metrics.tflops || !(*r.metrics.tflops >= floor))
        add("throughput", key,
            (r.metrics.tflops ? std::to_string(*r.metrics.tflops) : std::string("no tflops")) +
                " TFLOP/s < " + std::to_string(floor) + " (" + source + " " +
                std::to_string(*base_tflops) + ")");
    }
    if (base_mem && *base_mem > 0) {
      const double ceiling = (1.0 + config.memory_tolerance) * *base_mem;
      if (!r.metrics.peak_memory_mib || !(*r.metrics.peak_memory_mib <= ceiling))
        add("memory", key,
            (r.metrics.peak_memory_mib ? std::to_string(*r.metrics.peak_memory_mib)
                                       : std::string("no peak memory")) +
                " MiB > " + std::to_string(ceiling) + " (" + source + " " +
                std::to_string(*base_mem) + ")");
    }
  }

  // Claims.
  for (const auto& claim : config.claims) {
    bool executed = false;
    for (const auto& r : judged)
      if (r.proof_class == "execute" && r.counts_for_status && mode_matches_claim(claim, r.runtime_mode))
        executed = true;
    if (!executed) add("claim_not_executed", claim, "no execute row of this mode counts for status");
  }

  g.pass = g.violations.empty();
  return g;
}

}  // namespace flashlane::bench
