// bench/proof.cpp: proof rows: counts_for_status, JSON write/read, JSON lines files (proof.h).
#include "bench/proof.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "dispatch/surfaces.h"
#include "flashlane/dispatch.h"
#include "flashlane/version.h"

namespace flashlane::bench {

namespace {

std::string cuda_version_string(int v) {
  if (v <= 0) return "none";
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

nlohmann::json opt(const std::optional<double>& x) {
  if (!x || !std::isfinite(*x)) {
    // Non-finite numbers are not JSON: a measured NaN/Inf is written as the string "nan"/"inf",
    // so that the gate sees it (and fails) instead of a silently missing value.
    if (x && std::isnan(*x)) return "nan";
    if (x && std::isinf(*x)) return *x > 0 ? "inf" : "-inf";
    return nullptr;
  }
  return *x;
}

bool read_opt(const nlohmann::json& j, const char* key, std::optional<double>* out, std::string* why) {
  out->reset();
  if (!j.contains(key) || j[key].is_null()) return true;
  const auto& v = j[key];
  if (v.is_number()) {
    *out = v.get<double>();
    return true;
  }
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "nan") { *out = std::nan(""); return true; }
    if (s == "inf") { *out = INFINITY; return true; }
    if (s == "-inf") { *out = -INFINITY; return true; }
  }
  if (why) *why = std::string("metrics.") + key + " is not a number";
  return false;
}

}  // namespace

nlohmann::json validation_scope_to_json(const ValidationScope& v) {
  nlohmann::json j = {{"kind", v.kind}};
  if (v.kind == "sampled") {
    nlohmann::json slices = nlohmann::json::array();
    for (const auto& s : v.slices) slices.push_back({s[0], s[1]});
    j["slices"] = slices;
    j["seed"] = v.seed;
    j["total_slices"] = v.total_slices;
    j["full_max_seqlen"] = v.full_max_seqlen;
  }
  return j;
}

bool validation_scope_from_json(const nlohmann::json& j, ValidationScope* out, std::string* why) {
  auto fail = [&](const std::string& m) { if (why) *why = "metrics.validation_scope: " + m; return false; };
  if (!j.is_object()) return fail("not an object");
  if (!j.contains("kind") || !j["kind"].is_string()) return fail("no kind");
  ValidationScope v;
  v.kind = j["kind"].get<std::string>();
  if (v.kind != "full" && v.kind != "sampled" && v.kind != "none")
    return fail("unknown kind '" + v.kind + "' (full, sampled, none)");
  if (v.kind == "sampled") {
    for (const char* k : {"slices", "seed", "total_slices", "full_max_seqlen"})
      if (!j.contains(k)) return fail(std::string("sampled without ") + k);
    if (!j["slices"].is_array()) return fail("slices is not an array");
    for (const auto& s : j["slices"]) {
      if (!s.is_array() || s.size() != 2 || !s[0].is_number_integer() || !s[1].is_number_integer() ||
          s[0].get<int64_t>() < 0 || s[1].get<int64_t>() < 0)
        return fail("a slice is not a pair [batch, head] of non-negative integers");
      v.slices.push_back({s[0].get<int64_t>(), s[1].get<int64_t>()});
    }
    if (!j["seed"].is_number_unsigned() && !(j["seed"].is_number_integer() && j["seed"].get<int64_t>() >= 0))
      return fail("seed is not a non-negative integer");
    if (!j["total_slices"].is_number_integer() || !j["full_max_seqlen"].is_number_integer())
      return fail("total_slices / full_max_seqlen are not integers");
    v.seed = j["seed"].get<uint64_t>();
    v.total_slices = j["total_slices"].get<int64_t>();
    v.full_max_seqlen = j["full_max_seqlen"].get<int64_t>();
  }
  *out = std::move(v);
  return true;
}

Environment capture_environment() {
  Environment e;
  const DeviceInfo d = query_device(0);
  if (d.cuda_available) {
    e.device = d.name;
    e.sm = d.sm;
  }
  int v = 0;
  e.driver = cudaDriverGetVersion(&v) == cudaSuccess ? cuda_version_string(v) : "none";
  v = 0;
  e.cuda_runtime = cudaRuntimeGetVersion(&v) == cudaSuccess ? cuda_version_string(v) : "unknown";
  cudaGetLastError();  // clear any sticky "no device" error from the queries above
  e.library_version = version();
  e.git_commit = git_commit();
  e.compiled_archs = compiled_architectures();
  return e;  // kernel_fingerprint is the row's backend's: set where the row is made
}

void compute_counts_for_status(ProofRow* row) {
  std::string why;
  if (!row->gpu_lane.ran) {
    why = "GPU lane did not run" + (row->gpu_lane.reason.empty() ? "" : ": " + row->gpu_lane.reason);
  } else if (row->proof_class != "execute") {
    why = "proof_class is " + row->proof_class + ", not execute";
  } else if (row->environment.sm <= 0) {
    why = "the environment has no GPU";
  } else if (!row->has_receipt) {
    why = "no per-call receipt";
  } else if (row->receipt.status != "ok" || row->status != "ok") {
    why = "the call failed: " + row->status;
  } else if (row->receipt.actual_backend != row->requested_backend) {
    why = "requested " + row->requested_backend + " but " +
          (row->receipt.actual_backend.empty() ? std::string("nothing") : row->receipt.actual_backend) +
          " ran";
  } else if (row->receipt.sm <= 0) {
    why = "the receipt's device is not a GPU";
  } else if (!row->metrics.validation_ran) {
    why = "not validated";
  } else if (!row->metrics.validation_passed) {
    why = "validation failed";
  } else if (row->metrics.nan_count > 0) {
    why = "non-finite outputs";
  }
  row->counts_for_status = why.empty();
  row->not_counted_reason = why;
}

nlohmann::json proof_row_to_json(const ProofRow& r) {
  nlohmann::json j;
  j["schema"] = r.schema;
  j["proof_class"] = r.proof_class;
  j["artifact_kind"] = r.artifact_kind;
  j["counts_for_status"] = r.counts_for_status;
  j["not_counted_reason"] = r.not_counted_reason;
  j["preset"] = r.preset;
  j["timestamp"] = r.timestamp;
  j["requested_backend"] = r.requested_backend;
  j["runtime_mode"] = r.runtime_mode;
  j["direction"] = r.direction;
  j["surface"] = r.surface;
  j["status"] = r.status;
  const Environment& e = r.environment;
  j["environment"] = {{"device", e.device},
                      {"sm", e.sm},
                      {"driver", e.driver},
                      {"cuda_runtime", e.cuda_runtime},
                      {"library_version", e.library_version},
                      {"git_commit", e.git_commit},
                      {"compiled_archs", e.compiled_archs},
                      {"kernel_fingerprint", e.kernel_fingerprint}};
  j["gpu_lane"] = {{"ran", r.gpu_lane.ran}, {"reason", r.gpu_lane.reason}};
  j["problem"] = r.problem;
  if (r.has_receipt) {
    j["receipt"] = nlohmann::json::parse(receipt_to_json(r.receipt));
  } else {
    j["receipt"] = nullptr;
  }
  const Metrics& m = r.metrics;
  j["metrics"] = {{"median_ms", opt(m.median_ms)},
                  {"tflops", opt(m.tflops)},
                  {"median_tok_per_sec", opt(m.median_tok_per_sec)},
                  {"peak_memory_mib", opt(m.peak_memory_mib)},
                  {"memory_method", m.memory_method},
                  {"reps", m.reps},
                  {"warmup", m.warmup},
                  {"max_abs_diff", opt(m.max_abs_diff)},
                  {"ref_max_abs_diff", opt(m.ref_max_abs_diff)},
                  {"checked_tensor", m.checked_tensor},
                  {"nan_count", m.nan_count},
                  {"validation_ran", m.validation_ran},
                  {"validation_passed", m.validation_passed},
                  {"validation_method", m.validation_method},
                  {"errors", m.errors}};
  // Decode rows only: absent elsewhere, so other rows are written as before.
  if (m.gbps) j["metrics"]["gbps"] = opt(m.gbps);
  if (m.copy_gbps) j["metrics"]["copy_gbps"] = opt(m.copy_gbps);
  if (!m.check.empty()) j["metrics"]["check"] = m.check;
  // "unrecorded" (a row read from an older file) has no structured scope to write.
  if (m.validation_scope.kind != "unrecorded")
    j["metrics"]["validation_scope"] = validation_scope_to_json(m.validation_scope);
  nlohmann::json peers = nlohmann::json::array();
  for (const Peer& p : r.peers)
    peers.push_back({{"backend", p.backend},
                     {"median_ms", opt(p.median_ms)},
                     {"tflops", opt(p.tflops)},
                     {"speedup", opt(p.speedup)},
                     {"counted", p.counted}});
  j["peer"] = peers;
  return j;
}

bool proof_row_from_json(const nlohmann::json& j, ProofRow* out, std::string* why) {
  auto fail = [&](const std::string& m) { if (why) *why = m; return false; };
  if (!j.is_object()) return fail("row is not a JSON object");
  try {
    ProofRow r;
    r.schema = j.at("schema").get<std::string>();
    if (r.schema != kProofSchema) return fail("unknown schema '" + r.schema + "'");
    r.proof_class = j.at("proof_class").get<std::string>();
    if (r.proof_class != "planner" && r.proof_class != "observational" &&
        r.proof_class != "validation" && r.proof_class != "execute")
      return fail("unknown proof_class '" + r.proof_class + "'");
    r.artifact_kind = j.at("artifact_kind").get<std::string>();
    r.counts_for_status = j.at("counts_for_status").get<bool>();
    r.not_counted_reason = j.value("not_counted_reason", std::string());
    r.preset = j.value("preset", std::string());
    r.timestamp = j.value("timestamp", std::string());
    r.requested_backend = j.at("requested_backend").get<std::string>();
    // Rows that never count (peers timed beside flashlane, e.g. bench/peers/torch_sdpa.py) may
    // leave out what only a counting row needs: runtime mode, sm, GPU lane, receipt, NaN count.
    // Counting rows must carry all of them.
    const bool lenient = !r.counts_for_status;
    r.direction = j.value("direction", std::string());
    r.runtime_mode = lenient ? j.value("runtime_mode", r.direction)
                             : j.at("runtime_mode").get<std::string>();
    r.surface = j.value("surface", std::string());
    r.status = j.value("status", std::string("ok"));
    const auto& e = j.at("environment");
    r.environment.device = e.at("device").get<std::string>();
    r.environment.sm = lenient ? e.value("sm", 0) : e.at("sm").get<int>();
    r.environment.driver = e.value("driver", std::string());
    r.environment.cuda_runtime = e.value("cuda_runtime", std::string());
    r.environment.library_version = e.value("library_version", std::string());
    r.environment.git_commit = e.value("git_commit", std::string());
    r.environment.compiled_archs = e.value("compiled_archs", std::string());
    r.environment.kernel_fingerprint = e.value("kernel_fingerprint", std::string());
    if (lenient && !j.contains("gpu_lane")) {
      r.gpu_lane.ran = false;
      r.gpu_lane.reason = "not recorded (a row that does not count)";
    } else {
      const auto& g = j.at("gpu_lane");
      r.gpu_lane.ran = g.at("ran").get<bool>();
      r.gpu_lane.reason = g.value("reason", std::string());
    }
    r.problem = j.at("problem");
    if (!r.problem.is_object()) return fail("problem is not an object");
    const nlohmann::json rc = lenient ? j.value("receipt", nlohmann::json()) : j.at("receipt");
    if (rc.is_null()) {
      r.has_receipt = false;
    } else {
      if (!receipt_from_json(rc.dump(), &r.receipt)) return fail("malformed receipt");
      r.has_receipt = true;
    }
    const auto& m = j.at("metrics");
    if (!m.is_object()) return fail("metrics is not an object");
    if (!read_opt(m, "median_ms", &r.metrics.median_ms, why) ||
        !read_opt(m, "tflops", &r.metrics.tflops, why) ||
        !read_opt(m, "median_tok_per_sec", &r.metrics.median_tok_per_sec, why) ||
        !read_opt(m, "peak_memory_mib", &r.metrics.peak_memory_mib, why) ||
        !read_opt(m, "max_abs_diff", &r.metrics.max_abs_diff, why) ||
        !read_opt(m, "ref_max_abs_diff", &r.metrics.ref_max_abs_diff, why) ||
        !read_opt(m, "gbps", &r.metrics.gbps, why) ||
        !read_opt(m, "copy_gbps", &r.metrics.copy_gbps, why))
      return false;
    r.metrics.check = m.value("check", std::string());
    r.metrics.memory_method = m.value("memory_method", std::string());
    r.metrics.reps = m.value("reps", 0);
    r.metrics.warmup = m.value("warmup", 0);
    r.metrics.checked_tensor = m.value("checked_tensor", std::string());
    r.metrics.nan_count = lenient && !m.contains("nan_count") ? 0 : m.at("nan_count").get<int64_t>();
    r.metrics.validation_ran = m.value("validation_ran", false);
    r.metrics.validation_passed = m.value("validation_passed", false);
    // validation_scope: the structured object; rows written before it existed carry free text
    // there (or nothing): read as "unrecorded", the words kept as validation_method.
    r.metrics.validation_method = m.value("validation_method", std::string());
    if (!m.contains("validation_scope") || m["validation_scope"].is_null()) {
      r.metrics.validation_scope.kind = "unrecorded";
    } else if (m["validation_scope"].is_string()) {
      r.metrics.validation_scope.kind = "unrecorded";
      if (r.metrics.validation_method.empty())
        r.metrics.validation_method = m["validation_scope"].get<std::string>();
    } else if (!validation_scope_from_json(m["validation_scope"], &r.metrics.validation_scope, why)) {
      return false;
    }
    r.metrics.errors = m.value("errors", nlohmann::json::array());
    if (j.contains("peer")) {
      for (const auto& p : j["peer"]) {
        Peer peer;
        peer.backend = p.at("backend").get<std::string>();
        if (!read_opt(p, "median_ms", &peer.median_ms, why) ||
            !read_opt(p, "tflops", &peer.tflops, why) || !read_opt(p, "speedup", &peer.speedup, why))
          return false;
        peer.counted = p.value("counted", false);
        r.peers.push_back(peer);
      }
    }
    *out = std::move(r);
    return true;
  } catch (const std::exception& ex) {
    return fail(std::string("malformed row: ") + ex.what());
  }
}

bool append_proof_rows(const std::string& path, const std::vector<ProofRow>& rows, bool truncate,
                       std::string* why) {
  std::error_code ec;
  const std::filesystem::path p(path);
  if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  std::ofstream f(path, truncate ? std::ios::trunc : std::ios::app);
  if (!f) {
    if (why) *why = "cannot open " + path + " for writing";
    return false;
  }
  for (const auto& r : rows) f << proof_row_to_json(r).dump() << "\n";
  f.flush();
  if (!f) {
    if (why) *why = "write to " + path + " failed";
    return false;
  }
  return true;
}

bool read_proof_rows(const std::string& path, std::vector<ProofRow>* rows, std::string* why) {
  std::ifstream f(path);
  if (!f) {
    if (why) *why = "cannot open " + path;
    return false;
  }
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      if (why) *why = path + ":" + std::to_string(lineno) + ": not JSON: " + e.what();
      return false;
    }
    ProofRow r;
    std::string w;
    if (!proof_row_from_json(j, &r, &w)) {
      if (why) *why = path + ":" + std::to_string(lineno) + ": " + w;
      return false;
    }
    rows->push_back(std::move(r));
  }
  return true;
}

namespace {
template <class T>
T field(const nlohmann::json& j, const char* key, T fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  try {
    return j[key].get<T>();
  } catch (...) {
    return fallback;
  }
}
}  // namespace

nlohmann::json row_selector_fields(const ProofRow& r) {
  const auto& p = r.problem;
  nlohmann::json f;
  f["runtime_mode"] = r.runtime_mode;
  f["direction"] = r.direction;
  f["backend"] = r.requested_backend;
  f["actual_backend"] = r.has_receipt ? r.receipt.actual_backend : std::string();
  f["proof_class"] = r.proof_class;
  f["artifact_kind"] = r.artifact_kind;
  f["preset"] = r.preset;
  {
    const std::vector<std::string> surfaces = surfaces_of_row(r);
    f["surface"] = surfaces.empty() ? std::string() : surfaces.front();
  }
  for (const char* k : {"dtype", "mask"}) f[k] = field<std::string>(p, k, "");
  for (const char* k : {"batch", "seqlen_q", "seqlen_k", "heads_q", "heads_kv", "head_dim",
                        "head_dim_v", "window_left", "window_right"})
    f[k] = field<int64_t>(p, k, -999);
  f["seqlen"] = f["seqlen_q"];
  f["causal"] = field<bool>(p, "causal", false);
  f["varlen"] = field<bool>(p, "varlen", false);
  f["softcap"] = field<double>(p, "softcap", 0.0);
  f["page_size"] = field<int64_t>(p, "page_size", 0);  // decode rows: 0 = dense cache
  return f;
}

std::string row_key(const ProofRow& r) {
  const nlohmann::json f = row_selector_fields(r);
  std::ostringstream s;
  s << f["runtime_mode"].get<std::string>() << " " << f["backend"].get<std::string>() << " "
    << f["dtype"].get<std::string>() << " b" << f["batch"].get<int64_t>() << " sq"
    << f["seqlen_q"].get<int64_t>() << " sk" << f["seqlen_k"].get<int64_t>() << " hq"
    << f["heads_q"].get<int64_t>() << " hkv" << f["heads_kv"].get<int64_t>() << " d"
    << f["head_dim"].get<int64_t>();
  if (f["head_dim_v"].get<int64_t>() != f["head_dim"].get<int64_t>())
    s << " dv" << f["head_dim_v"].get<int64_t>();
  s << " " << f["mask"].get<std::string>();
  if (f["window_left"].get<int64_t>() >= 0 || f["window_right"].get<int64_t>() >= 0)
    s << " window(" << f["window_left"].get<int64_t>() << "," << f["window_right"].get<int64_t>() << ")";
  if (f["softcap"].get<double>() > 0) s << " softcap" << f["softcap"].get<double>();
  if (f["varlen"].get<bool>()) s << " varlen";
  if (f["page_size"].get<int64_t>() > 0) s << " page" << f["page_size"].get<int64_t>();
  return s.str();
}

std::string bench_surface(const std::string& direction, bool varlen, bool sinks) {
  if (sinks) return "attention_sinks";
  return std::string(varlen ? "varlen_" : "dense_") + (direction == "bwd" ? "bwd" : "fwd");
}

std::vector<std::string> surfaces_of_row(const ProofRow& r) {
  if (!r.surface.empty()) return {r.surface};
  if (r.artifact_kind == "short_train") return {"dense_fwd", "dense_bwd"};
  // The mode the receipt says ran wins over the row's own claim.
  const std::string mode =
      r.has_receipt && !r.receipt.runtime_mode.empty() ? r.receipt.runtime_mode : r.runtime_mode;
  const std::string s = detail::surface_for_mode(mode);
  if (!s.empty()) return {s};
  if (r.direction == "fwd" || r.direction == "bwd")
    return {bench_surface(r.direction, field<bool>(r.problem, "varlen", false),
                          r.problem.contains("learnable_sink"))};
  return {};
}

namespace {
/// row_is_fresh against the accepted fingerprints `current` (empty strings are not accepted).
bool fresh_against(const ProofRow& r, const std::vector<std::string>& current, std::string* why) {
  auto no = [&](const std::string& m) { if (why) *why = m; return false; };
  std::string names;
  for (const std::string& c : current) {
    if (c.empty()) continue;
    names += (names.empty() ? "" : " or ") + c;
  }
  auto accepted = [&](const std::string& fp) {
    return !fp.empty() && std::find(current.begin(), current.end(), fp) != current.end();
  };
  const std::string& fp = r.environment.kernel_fingerprint;
  if (names.empty()) return no("the build has no kernel fingerprint for " + r.requested_backend);
  if (fp.empty()) return no("no kernel fingerprint (row written before fingerprints)");
  if (!accepted(fp)) return no("kernel fingerprint " + fp + " != current " + names);
  if (r.has_receipt && !r.receipt.kernel_fingerprint.empty() && !accepted(r.receipt.kernel_fingerprint))
    return no("receipt kernel fingerprint " + r.receipt.kernel_fingerprint + " != current " + names);
  if (why) why->clear();
  return true;
}
}  // namespace

bool row_is_fresh(const ProofRow& r, const std::string& current, std::string* why) {
  return fresh_against(r, {current}, why);
}

bool row_is_fresh(const ProofRow& r, const std::map<std::string, std::string>& fingerprints,
                  std::string* why) {
  const std::string mode =
      r.has_receipt && !r.receipt.runtime_mode.empty() ? r.receipt.runtime_mode : r.runtime_mode;
  std::vector<std::string> current;
  for (const std::string& key :
       {r.requested_backend, std::string(kernel_family(r.requested_backend.c_str(), mode.c_str()))}) {
    const auto it = fingerprints.find(key);
    if (it != fingerprints.end()) current.push_back(it->second);
  }
  return fresh_against(r, current, why);
}

std::string utc_timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace flashlane::bench
