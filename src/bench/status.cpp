// bench/status.cpp: rollout manifest parsing and the status computed from the surface catalog
// and receipts (status.h).
#include "bench/status.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "bench/json_file.h"
#include "dispatch/backend_registry.h"
#include "dispatch/surfaces.h"

namespace flashlane::bench {

namespace {

namespace fs = std::filesystem;

bool check_keys(const nlohmann::json& j, const std::set<std::string>& keys, const std::string& where,
                std::string* why) {
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!keys.count(it.key())) {
      if (why) *why = where + ": unknown key '" + it.key() + "'";
      return false;
    }
  return true;
}

std::vector<std::string> strings(const nlohmann::json& j, const char* key) {
  std::vector<std::string> out;
  if (j.contains(key))
    for (const auto& s : j.at(key)) out.push_back(s.get<std::string>());
  return out;
}

bool requirement_from_json(const nlohmann::json& j, const std::string& where, Requirement* out,
                           std::string* why) {
  auto fail = [&](const std::string& m) { if (why) *why = where + ": " + m; return false; };
  if (!j.is_object()) return fail("a requirement is not an object");
  if (!check_keys(j, {"kind", "text", "artifact_kind", "proof_class", "backend", "device_class",
                      "match", "min_rows", "rows", "peer_same_run", "criteria", "tests",
                      "required", "claims", "gate_config"},
                  where, why))
    return false;
  Requirement r;
  r.kind = j.value("kind", std::string("receipts"));
  if (r.kind != "code" && r.kind != "fail_closed" && r.kind != "receipts" && r.kind != "gate")
    return fail("unknown requirement kind '" + r.kind + "'");
  r.text = j.value("text", std::string());
  if (r.text.empty()) return fail("a requirement without text");
  r.artifact_kind = j.value("artifact_kind", std::string());
  r.proof_class = j.value("proof_class", std::string());
  r.backend = j.value("backend", std::string());
  r.device_class = j.value("device_class", std::string());
  if (!r.device_class.empty() && r.device_class != "hopper" && r.device_class != "gpu")
    return fail("unknown device_class '" + r.device_class + "' (hopper, gpu)");
  if (j.contains("match")) {
    r.match = j.at("match");
    if (!r.match.is_object()) return fail("match is not an object");
  }
  r.min_rows = j.value("min_rows", 1);
  if (r.min_rows < 1) return fail("min_rows < 1");
  if (j.contains("rows"))
    for (const auto& s : j.at("rows")) {
      if (!s.is_object() || s.empty()) return fail("a rows selector is not a non-empty object");
      r.rows.push_back(s);
    }
  r.peer_same_run = j.value("peer_same_run", false);
  if (j.contains("criteria"))
    for (const auto& c : j.at("criteria")) {
      if (!check_keys(c, {"criterion", "max"}, where + " criteria", why)) return false;
      CriterionRequirement cr;
      cr.criterion = c.at("criterion").get<std::string>();
      if (c.contains("max")) cr.max = c.at("max").get<double>();
      r.criteria.push_back(cr);
    }
  r.tests = strings(j, "tests");
  if (j.contains("required"))
    for (const auto& s : j.at("required")) r.required.push_back(s);
  r.claims = strings(j, "claims");
  r.gate_config = j.value("gate_config", std::string());
  if (r.kind == "gate" && r.required.empty() && r.gate_config.empty())
    return fail("a gate requirement without required rows or gate_config");
  *out = std::move(r);
  return true;
}

}  // namespace

bool manifest_from_json(const nlohmann::json& j, Manifest* out, std::string* why) {
  auto fail = [&](const std::string& m) { if (why) *why = m; return false; };
  try {
    if (!j.is_object()) return fail("the manifest is not a JSON object");
    if (!check_keys(j, {"schema", "description", "surfaces"}, "manifest", why)) return false;
    if (j.value("schema", std::string()) != kManifestSchema)
      return fail(std::string("manifest schema is not ") + kManifestSchema);
    Manifest m;
    m.description = j.value("description", std::string());
    std::set<std::string> seen;
    for (const auto& s : j.at("surfaces")) {
      if (!check_keys(s, {"surface", "target_backend", "rungs", "baselines", "baseline_source",
                          "description"},
                      "manifest surface", why))
        return false;
      SurfacePlan p;
      p.surface = s.at("surface").get<std::string>();
      if (detail::find_surface(p.surface) == nullptr) return fail("unknown surface '" + p.surface + "'");
      if (!seen.insert(p.surface).second) return fail("surface '" + p.surface + "' listed twice");
      p.target_backend = s.at("target_backend").get<std::string>();
      if (detail::find_backend(std::string_view(p.target_backend)) == nullptr)
        return fail(p.surface + ": unknown target_backend '" + p.target_backend + "'");
      std::set<std::string> ids;
      for (const auto& rj : s.at("rungs")) {
        if (!check_keys(rj, {"id", "title", "requires"}, p.surface + " rung", why)) return false;
        Rung rung;
        rung.id = rj.at("id").get<std::string>();
        rung.title = rj.value("title", std::string());
        if (!ids.insert(rung.id).second) return fail(p.surface + ": rung " + rung.id + " listed twice");
        for (const auto& q : rj.at("requires")) {
          Requirement req;
          if (!requirement_from_json(q, p.surface + " " + rung.id, &req, why)) return false;
          if (req.backend.empty()) req.backend = p.target_backend;
          rung.requires_.push_back(std::move(req));
        }
        if (rung.requires_.empty()) return fail(p.surface + ": rung " + rung.id + " requires nothing");
        p.rungs.push_back(std::move(rung));
      }
      p.baseline_source = s.value("baseline_source", std::string());
      if (s.contains("baselines"))
        for (const auto& b : s.at("baselines")) {
          if (!check_keys(b, {"match", "tflops", "peak_memory_mib"}, p.surface + " baseline", why))
            return false;
          BaselineEntry e;
          e.match = b.at("match");
          if (!e.match.is_object() || e.match.empty()) return fail(p.surface + ": a baseline match is empty");
          if (b.contains("tflops")) e.tflops = b.at("tflops").get<double>();
          if (b.contains("peak_memory_mib")) e.peak_memory_mib = b.at("peak_memory_mib").get<double>();
          p.baselines.push_back(std::move(e));
        }
      m.surfaces.push_back(std::move(p));
    }
    *out = std::move(m);
    return true;
  } catch (const std::exception& e) {
    return fail(std::string("malformed manifest: ") + e.what());
  }
}

bool load_manifest(const std::string& path, Manifest* out, std::string* why) {
  nlohmann::json j;
  if (!read_json_file(path, "manifest", &j, why)) return false;
  std::string w;
  if (!manifest_from_json(j, out, &w)) {
    if (why) *why = path + ": " + w;
    return false;
  }
  out->directory = fs::path(path).parent_path().string();
  return true;
}

std::vector<BaselineEntry> gate_baselines(const Manifest& manifest) {
  std::vector<BaselineEntry> out;
  for (const auto& s : manifest.surfaces)
    for (BaselineEntry e : s.baselines) {
      e.match["surface"] = s.surface;
      out.push_back(std::move(e));
    }
  return out;
}

bool read_receipts_dir(const std::string& dir, std::vector<SourcedRow>* rows,
                       std::vector<ReceiptFile>* files, std::string* why) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    if (why) *why = "receipts folder " + dir + " is not a folder";
    return false;
  }
  std::vector<fs::path> paths;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && e.path().extension() == ".jsonl") paths.push_back(e.path());
  std::sort(paths.begin(), paths.end());
  for (const auto& p : paths) {
    ReceiptFile f;
    f.path = (fs::path(dir) / p.filename()).string();
    std::vector<ProofRow> got;
    std::string w;
    if (!read_proof_rows(p.string(), &got, &w)) {
      f.error = w;
    } else {
      f.rows = static_cast<int>(got.size());
      for (auto& r : got) rows->push_back({std::move(r), f.path});
    }
    files->push_back(std::move(f));
  }
  return true;
}

namespace {

/// A row as status judges it: derived counting, freshness, surfaces.
struct Judged {
  const SourcedRow* src;
  bool counts = false;  // compute_counts_for_status on its own fields
  bool fresh = false;   // of the current kernels
  std::vector<std::string> surfaces;
};

bool on_surface(const Judged& j, const std::string& surface) {
  return std::find(j.surfaces.begin(), j.surfaces.end(), surface) != j.surfaces.end();
}

bool device_ok(const ProofRow& r, const std::string& device_class) {
  if (device_class.empty()) return true;
  const int rsm = r.has_receipt ? r.receipt.sm : 0;
  if (device_class == "hopper") return r.environment.sm == 90 && rsm == 90;
  return r.environment.sm > 0 && rsm > 0;
}

bool criteria_ok(const ProofRow& r, const std::vector<CriterionRequirement>& criteria) {
  for (const auto& c : criteria) {
    bool found = false;
    if (r.metrics.errors.is_array())
      for (const auto& e : r.metrics.errors) {
        if (!e.is_object() || e.value("criterion", std::string()) != c.criterion) continue;
        const bool pass = e.contains("pass") && e["pass"].is_boolean() && e["pass"].get<bool>();
        bool under = true;
        if (c.max) under = e.contains("value") && e["value"].is_number() && e["value"].get<double>() <= *c.max;
        if (pass && under) found = true;
      }
    if (!found) return false;
  }
  return true;
}

/// Whether a row would satisfy the requirement if it counted and were fresh.
bool shape_matches(const Judged& j, const Requirement& q, const std::string& surface) {
  const ProofRow& r = j.src->row;
  if (!on_surface(j, surface)) return false;
  if (!q.artifact_kind.empty() && r.artifact_kind != q.artifact_kind) return false;
  if (!q.proof_class.empty() && r.proof_class != q.proof_class) return false;
  if (r.requested_backend != q.backend) return false;
  if (!r.has_receipt || r.receipt.actual_backend != q.backend) return false;
  if (!device_ok(r, q.device_class)) return false;
  if (!q.match.empty() && !selector_matches(q.match, r)) return false;
  if (q.peer_same_run) {
    bool peer = false;
    for (const auto& p : r.peers) peer = peer || p.counted;
    if (!peer) return false;
  }
  if (!criteria_ok(r, q.criteria)) return false;
  return true;
}

bool load_gate_for(const Requirement& q, const Manifest& m, GateConfig* c, std::string* why) {
  if (!q.gate_config.empty()) {
    const std::string path = (fs::path(m.directory) / q.gate_config).string();
    if (!load_gate_config(path, c, why)) return false;
  }
  for (const auto& s : q.required) c->required.push_back(s);
  for (const auto& s : q.claims) c->claims.push_back(s);
  return true;
}

/// The fail-closed probe of L1: rows whose requested backend did not run must not count.
std::string probe_fail_closed(const std::string& backend) {
  ProofRow r;
  r.proof_class = "execute";
  r.requested_backend = backend;
  r.runtime_mode = "fwd";
  r.environment.sm = 90;
  r.gpu_lane.ran = true;
  r.has_receipt = true;
  r.receipt.requested_backend = backend;
  r.receipt.actual_backend = backend == "reference_cuda" ? "reference_cpu" : "reference_cuda";
  r.receipt.runtime_mode = "fwd";
  r.receipt.sm = 90;
  r.receipt.status = "ok";
  r.metrics.validation_ran = r.metrics.validation_passed = true;
  compute_counts_for_status(&r);
  if (r.counts_for_status) return "a row whose receipt ran " + r.receipt.actual_backend + " counted for " + backend;
  r.receipt.actual_backend.clear();
  compute_counts_for_status(&r);
  if (r.counts_for_status) return "a row on which nothing ran counted for " + backend;
  return "";
}

RequirementResult judge_requirement(const Requirement& q, const SurfacePlan& plan,
                                    const detail::Surface& surface, const Manifest& manifest,
                                    const std::vector<Judged>& judged,
                                    const std::map<std::string, std::string>& fingerprints) {
  RequirementResult out;
  out.kind = q.kind;
  out.text = q.text;
  if (q.kind == "code") {
    const detail::SurfaceBackend* b = detail::surface_backend(surface, q.backend);
    if (!surface.has_code) {
      out.detail = "no code [" + surface.reason_tag + "]";
    } else if (b == nullptr || !b->applies) {
      out.detail = q.backend + " cannot serve it [" + (b ? b->reason_tag : "unregistered") + "]";
    } else {
      out.met = true;
      std::string tests;
      for (const auto& t : q.tests) tests += (tests.empty() ? "" : ", ") + t;
      out.detail = "code in this build" + (tests.empty() ? "" : "; contract tests: " + tests);
    }
    return out;
  }
  if (q.kind == "fail_closed") {
    if (!surface.has_code) {
      out.detail = "no code [" + surface.reason_tag + "]";
      return out;
    }
    const std::string problem = probe_fail_closed(q.backend);
    out.met = problem.empty();
    out.detail = out.met ? "probed: fallback and not-executed rows do not count" : problem;
    return out;
  }
  // Rows of the surface that the requirement speaks of.
  std::vector<const Judged*> qualifying, stale;
  for (const auto& j : judged) {
    if (!j.counts || !shape_matches(j, q, plan.surface)) continue;
    (j.fresh ? qualifying : stale).push_back(&j);
  }
  if (q.kind == "gate") {
    GateConfig c;
    std::string why;
    if (!load_gate_for(q, manifest, &c, &why)) {
      out.detail = "gate config: " + why;
      return out;
    }
    c.baseline = gate_baselines(manifest);
    c.current_fingerprints = fingerprints;
    std::vector<ProofRow> rows;
    for (const auto& j : judged)
      if (on_surface(j, plan.surface) && j.src->row.requested_backend == q.backend)
        rows.push_back(j.src->row);
    const GateResult g = run_gate(rows, c, {});
    out.fresh_rows = g.counting_rows;
    out.stale_rows = g.stale_rows;
    out.met = g.pass;
    if (g.pass) {
      out.detail = "gate PASS over " + std::to_string(g.rows) + " rows";
    } else {
      std::map<std::string, int> by_rule;
      for (const auto& v : g.violations) ++by_rule[v.rule];
      std::string s;
      for (const auto& [rule, n] : by_rule) s += (s.empty() ? "" : ", ") + rule + " x" + std::to_string(n);
      out.detail = "gate FAIL over " + std::to_string(g.rows) + " rows: " + s;
    }
    return out;
  }
  out.fresh_rows = static_cast<int>(qualifying.size());
  out.stale_rows = static_cast<int>(stale.size());
  const std::string stale_note =
      stale.empty() ? "" : "; " + std::to_string(stale.size()) + " stale rows would match";
  if (!q.rows.empty()) {
    int missing = 0;
    for (const auto& sel : q.rows) {
      bool hit = false;
      for (const Judged* j : qualifying) hit = hit || selector_matches(sel, j->src->row);
      missing += hit ? 0 : 1;
    }
    out.met = missing == 0;
    out.detail = std::to_string(q.rows.size() - missing) + " of " + std::to_string(q.rows.size()) +
                 " required rows have counting receipts of the current kernels" + stale_note;
  } else {
    out.met = out.fresh_rows >= q.min_rows;
    out.detail = std::to_string(out.fresh_rows) + " of " + std::to_string(q.min_rows) +
                 " counting receipts of the current kernels" + stale_note;
  }
  return out;
}

}  // namespace

StatusReport compute_status(const Manifest& manifest, const std::vector<SourcedRow>& rows,
                            std::vector<ReceiptFile> files,
                            const std::map<std::string, std::string>& fingerprints) {
  StatusReport rep;
  rep.fingerprints = fingerprints;
  rep.rows = static_cast<int>(rows.size());
  std::vector<Judged> judged;
  judged.reserve(rows.size());
  for (const auto& s : rows) {
    Judged j;
    j.src = &s;
    ProofRow r = s.row;
    compute_counts_for_status(&r);
    j.counts = r.counts_for_status;
    j.fresh = row_is_fresh(s.row, fingerprints, nullptr);
    j.surfaces = surfaces_of_row(s.row);
    for (auto& f : files)
      if (f.path == s.file) {
        if (j.counts && j.fresh) ++f.counting;
        if (j.counts && !j.fresh) ++f.stale;
      }
    judged.push_back(std::move(j));
  }
  rep.files = std::move(files);
  for (const detail::BackendDef* d : detail::backend_registry()) rep.backends.push_back(d->name);

  for (const detail::Surface& surface : detail::surface_catalog()) {
    SurfaceStatus st;
    st.surface = surface.id;
    st.description = surface.description;
    st.has_code = surface.has_code;
    st.reason_tag = surface.reason_tag;
    const SurfacePlan* plan = nullptr;
    for (const auto& p : manifest.surfaces)
      if (p.surface == surface.id) plan = &p;
    st.in_manifest = plan != nullptr;
    st.target_backend = plan ? plan->target_backend : "";
    int stood = -1;           // index of the highest rung of the unbroken run
    int first_receipts = -1;  // index of the first rung that needs receipts
    if (plan) {
      // Where the stale receipts would put the surface if they were of the current kernels.
      std::vector<Judged> as_current = judged;
      for (auto& j : as_current) j.fresh = true;
      for (const Rung& rung : plan->rungs) {
        bool met = true;
        for (const auto& q : rung.requires_)
          met = met && judge_requirement(q, *plan, surface, manifest, as_current, {}).met;
        if (!met) break;
        st.rung_if_current = rung.id;
      }
      bool unbroken = true;
      for (size_t i = 0; i < plan->rungs.size(); ++i) {
        const Rung& rung = plan->rungs[i];
        RungResult rr;
        rr.id = rung.id;
        rr.title = rung.title;
        rr.met = true;
        for (const auto& q : rung.requires_) {
          RequirementResult res = judge_requirement(q, *plan, surface, manifest, judged, fingerprints);
          rr.met = rr.met && res.met;
          if ((q.kind == "receipts" || q.kind == "gate") && first_receipts < 0)
            first_receipts = static_cast<int>(i);
          rr.requirements.push_back(std::move(res));
        }
        if (unbroken && rr.met) stood = static_cast<int>(i);
        else unbroken = false;
        st.rungs.push_back(std::move(rr));
      }
      if (stood >= 0) {
        st.rung = plan->rungs[stood].id;
        st.rung_title = plan->rungs[stood].title;
      }
      if (stood + 1 < static_cast<int>(plan->rungs.size())) {
        const RungResult& next = st.rungs[stood + 1];
        st.next_rung = next.id;
        st.next_title = next.title;
        for (const auto& q : next.requirements)
          if (!q.met) st.next_missing.push_back(q.text + " (" + q.detail + ")");
      }
    }
    for (const detail::SurfaceBackend& b : surface.backends) {
      Cell c;
      c.backend = b.backend;
      for (const auto& j : judged) {
        const ProofRow& r = j.src->row;
        if (!on_surface(j, surface.id) || r.requested_backend != b.backend) continue;
        if (!r.has_receipt || r.receipt.actual_backend != b.backend) ++c.fallback_rows;
        if (j.counts && j.fresh) ++c.fresh_rows;
        if (j.counts && !j.fresh) ++c.stale_rows;
      }
      const std::string stale_note =
          c.stale_rows ? " (" + std::to_string(c.stale_rows) + " stale receipts do not count)" : "";
      if (!b.applies) {
        c.light = "red";
        c.reason_tag = b.reason_tag;
        c.detail = "fails closed [" + b.reason_tag + "]";
      } else if (plan && b.backend == plan->target_backend) {
        const bool green = first_receipts >= 0 && stood >= first_receipts;
        c.light = green ? "green" : "yellow";
        c.detail = st.rung.empty() ? "on no rung" : "on " + st.rung + " (" + st.rung_title + ")";
        if (!st.next_rung.empty()) {
          c.owed.push_back(st.next_rung + " (" + st.next_title + ")");
          for (const auto& m : st.next_missing) c.owed.push_back(m);
        }
        c.detail += stale_note;
      } else {
        c.light = c.fresh_rows > 0 ? "green" : "yellow";
        c.detail = std::to_string(c.fresh_rows) + " counting receipts of the current kernels" + stale_note;
        if (c.fresh_rows == 0) {
          const detail::BackendDef* d = detail::find_backend(std::string_view(b.backend));
          if (d != nullptr && d->tensors == DeviceKind::kCPU)
            c.owed.push_back("a counting receipt: host-backend rows are observational and never "
                             "count; its proof is the cpu contract tests");
          else
            c.owed.push_back("one counting execute receipt of the current kernels on a GPU");
        }
      }
      if (c.fallback_rows)
        c.detail += "; " + std::to_string(c.fallback_rows) + " rows requested it but another backend (or none) ran";
      st.cells.push_back(std::move(c));
    }
    rep.surfaces.push_back(std::move(st));
  }
  return rep;
}

nlohmann::json status_to_json(const StatusReport& rep, bool with_fingerprints) {
  nlohmann::json j;
  j["schema"] = kStatusSchema;
  if (with_fingerprints) j["fingerprints"] = rep.fingerprints;
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : rep.files)
    files.push_back({{"path", f.path}, {"error", f.error}, {"rows", f.rows},
                     {"counting", f.counting}, {"stale", f.stale}});
  j["files"] = files;
  j["rows"] = rep.rows;
  j["backends"] = rep.backends;
  nlohmann::json surfaces = nlohmann::json::array();
  for (const auto& s : rep.surfaces) {
    nlohmann::json rungs = nlohmann::json::array();
    for (const auto& r : s.rungs) {
      nlohmann::json reqs = nlohmann::json::array();
      for (const auto& q : r.requirements)
        reqs.push_back({{"kind", q.kind}, {"text", q.text}, {"met", q.met}, {"detail", q.detail},
                        {"fresh_rows", q.fresh_rows}, {"stale_rows", q.stale_rows}});
      rungs.push_back({{"id", r.id}, {"title", r.title}, {"met", r.met}, {"requirements", reqs}});
    }
    nlohmann::json cells = nlohmann::json::array();
    for (const auto& c : s.cells)
      cells.push_back({{"backend", c.backend}, {"light", c.light}, {"reason_tag", c.reason_tag},
                       {"detail", c.detail}, {"owed", c.owed}, {"fresh_rows", c.fresh_rows},
                       {"stale_rows", c.stale_rows}, {"fallback_rows", c.fallback_rows}});
    surfaces.push_back({{"surface", s.surface}, {"description", s.description},
                        {"has_code", s.has_code}, {"reason_tag", s.reason_tag},
                        {"in_manifest", s.in_manifest}, {"target_backend", s.target_backend},
                        {"rung", s.rung}, {"rung_title", s.rung_title},
                        {"rung_if_current", s.rung_if_current}, {"next_rung", s.next_rung},
                        {"next_title", s.next_title}, {"next_missing", s.next_missing},
                        {"rungs", rungs}, {"cells", cells}});
  }
  j["surfaces"] = surfaces;
  return j;
}

namespace {
std::string light_word(const Cell& c) {
  if (c.light == "red") return "red [" + c.reason_tag + "]";
  return c.light;
}
}  // namespace

std::string status_to_text(const StatusReport& rep) {
  std::ostringstream o;
  int counting = 0, stale = 0;
  for (const auto& f : rep.files) {
    counting += f.counting;
    stale += f.stale;
  }
  o << "status: " << rep.files.size() << " receipt files, " << rep.rows << " rows, " << counting
    << " count (current kernels), " << stale << " stale\n";
  o << "kernel fingerprints of this build:";
  for (const auto& [b, fp] : rep.fingerprints) o << " " << b << "=" << (fp.empty() ? "(none)" : fp);
  o << "\n\n";
  for (const auto& s : rep.surfaces) {
    o << s.surface << ": rung " << (s.rung.empty() ? "-" : s.rung);
    if (!s.next_rung.empty()) o << ", next " << s.next_rung;
    if (s.rung_if_current != s.rung)
      o << " (stale receipts would reach " << (s.rung_if_current.empty() ? "-" : s.rung_if_current) << ")";
    o << "\n";
    for (const auto& c : s.cells) {
      o << "  " << c.backend << ": " << light_word(c);
      if (c.light != "red") o << ": " << c.detail;
      o << "\n";
      for (const auto& w : c.owed) o << "      owed: " << w << "\n";
    }
  }
  o << "\nreceipt files:\n";
  for (const auto& f : rep.files) {
    o << "  " << f.path << ": ";
    if (!f.error.empty()) o << "unreadable as proof rows, ignored (" << f.error << ")\n";
    else o << f.rows << " rows, " << f.counting << " count, " << f.stale << " stale\n";
  }
  return o.str();
}

std::string status_to_markdown(const StatusReport& rep, const std::string& manifest,
                               const std::string& receipts) {
  std::ostringstream md;
  md << "# Status\n\n"
     << "Generated by `flashlane status --markdown --receipts " << receipts << " --manifest "
     << manifest << "` from the surface catalog (src/dispatch/surfaces.cpp, read from the "
        "backend registry of this build) and the receipts in " << receipts << "; do not edit by "
        "hand. Code comes first, then receipts of the current kernels; prose does not count. A "
        "receipt whose kernel fingerprint is not the build's is stale: listed below, never "
        "counted. Rungs and their requirements: " << manifest << "; schema: docs/RECEIPTS.md.\n\n"
     << "- **green**: counting receipts of the current kernels on the surface's current rung "
        "(at least R1);\n"
     << "- **yellow**: the code exists, proof is owed (named below);\n"
     << "- **red**: fails closed with its tag, or does not apply.\n\n";
  md << "| surface | rung | next |";
  for (const auto& b : rep.backends) md << " " << b << " |";
  md << "\n|---|---|---|";
  for (size_t i = 0; i < rep.backends.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& s : rep.surfaces) {
    md << "| " << s.surface << " | " << (s.rung.empty() ? "-" : s.rung) << " | "
       << (s.next_rung.empty() ? "-" : s.next_rung) << " |";
    for (const auto& c : s.cells)
      md << " " << (c.light == "red" ? "red `" + c.reason_tag + "`" : c.light) << " |";
    md << "\n";
  }
  md << "\n## Surfaces\n";
  for (const auto& s : rep.surfaces) {
    md << "\n### " << s.surface << "\n\n" << s.description << ". ";
    if (!s.has_code) md << "No code yet (`" << s.reason_tag << "`). ";
    if (!s.in_manifest) md << "Not in the manifest.\n";
    else {
      md << "Target backend " << s.target_backend << "; stands on "
         << (s.rung.empty() ? "no rung" : "**" + s.rung + "** (" + s.rung_title + ")");
      if (!s.next_rung.empty()) md << "; next **" << s.next_rung << "** (" << s.next_title << ")";
      md << ".";
      if (s.rung_if_current != s.rung)
        md << " Were the stale receipts of the current kernels, it would stand on "
           << (s.rung_if_current.empty() ? std::string("no rung") : "**" + s.rung_if_current + "**")
           << ".";
      md << "\n";
      if (!s.next_missing.empty()) {
        md << "\nOwed for " << s.next_rung << ":\n";
        for (const auto& m : s.next_missing) md << "- " << m << "\n";
      }
    }
    md << "\n";
    for (const auto& c : s.cells) {
      md << "- " << c.backend << ": " << (c.light == "red" ? "red `" + c.reason_tag + "`" : c.light);
      if (c.light != "red") md << ": " << c.detail;
      if (c.light == "yellow" && !(s.in_manifest && c.backend == s.target_backend))
        for (const auto& w : c.owed) md << "; owed: " << w;
      md << "\n";
    }
  }
  md << "\n## Receipt files\n\n"
     << "Every `*.jsonl` file directly in " << receipts
     << " (subfolders such as archive/ are not read).\n\n"
     << "| file | rows | count | stale | note |\n|---|---|---|---|---|\n";
  for (const auto& f : rep.files) {
    md << "| " << f.path << " | " << f.rows << " | " << f.counting << " | " << f.stale << " | "
       << (f.error.empty() ? (f.stale ? "stale: no or other kernel fingerprint" : "")
                           : "unreadable as proof rows, ignored")
       << " |\n";
  }
  return md.str();
}

}  // namespace flashlane::bench
