// tools/cmd_gate.cpp: `flashlane gate FILE... [--config FILE] [--baseline FILE] [--json]`:
// applies DESIGN.md's stop rules (src/bench/gate.h) to proof rows, fail-closed: a file that
// cannot be read or holds a malformed line fails the gate, an empty set of rows fails, and only
// rows that count for status prove anything. Prints one line per violation (rule, row key,
// detail), then PASS or FAIL. Exit 0 only on PASS.
// Config: --config, else bench/gate_default.json when it exists in the working directory, else
// a built-in config with no required rows and no claims (said in the output). The rollout
// manifest's baselines (--manifest, else bench/rollout_manifest.json when present) join the
// config's, and rows must be of this build's kernels (stale_fingerprint; --allow-stale to judge
// rows of another build).
#include <filesystem>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "bench/gate.h"
#include "bench/proof.h"
#include "bench/status.h"
#include "cli_common.h"

namespace flashlane::cli {

namespace {

struct GateOptions {
  std::vector<std::string> files;
  std::string config;
  std::string baseline;
  std::string manifest;
  bool allow_stale = false;
  bool json = false;
};

int run_gate_command(const GateOptions& o) {
  std::vector<std::string> problems;  // reasons the gate fails before any rule
  bench::GateConfig config;
  std::string config_source;
  std::string why;
  if (!o.config.empty()) {
    config_source = o.config;
    if (!bench::load_gate_config(o.config, &config, &why)) problems.push_back("config: " + why);
  } else if (std::filesystem::exists("bench/gate_default.json")) {
    config_source = "bench/gate_default.json";
    if (!bench::load_gate_config(config_source, &config, &why)) problems.push_back("config: " + why);
  } else {
    config_source = "built-in (no required rows, no claims; pass --config to require rows)";
  }
  // The rollout manifest's per-row baselines join the config's.
  std::string manifest_source = o.manifest;
  if (manifest_source.empty() && std::filesystem::exists("bench/rollout_manifest.json"))
    manifest_source = "bench/rollout_manifest.json";
  if (!manifest_source.empty()) {
    bench::Manifest manifest;
    why.clear();
    if (!bench::load_manifest(manifest_source, &manifest, &why)) problems.push_back("manifest: " + why);
    for (auto& e : bench::gate_baselines(manifest)) config.baseline.push_back(std::move(e));
  }
  // Rows must be of this build's kernels (stale_fingerprint), unless told otherwise.
  if (!o.allow_stale) config.current_fingerprints = bench::build_kernel_fingerprints();
  std::vector<bench::ProofRow> rows, baseline;
  for (const auto& f : o.files) {
    why.clear();
    if (!bench::read_proof_rows(f, &rows, &why)) problems.push_back("malformed input: " + why);
  }
  if (!o.baseline.empty() && !bench::read_proof_rows(o.baseline, &baseline, &why))
    problems.push_back("malformed baseline: " + why);

  bench::GateResult g = bench::run_gate(rows, config, baseline);
  for (const auto& p : problems) g.violations.insert(g.violations.begin(), {"input", p, ""});
  g.pass = g.violations.empty();

  if (o.json) {
    nlohmann::json v = nlohmann::json::array();
    for (const auto& x : g.violations) v.push_back({{"rule", x.rule}, {"key", x.key}, {"detail", x.detail}});
    std::cout << nlohmann::json{{"pass", g.pass}, {"rows", g.rows}, {"counting_rows", g.counting_rows},
                                {"sampled_rows", g.sampled_rows},
                                {"unrecorded_scope_rows", g.unrecorded_scope_rows},
                                {"stale_rows", g.stale_rows},
                                {"config", config_source}, {"manifest", manifest_source},
                                {"violations", v}}
                     .dump(2)
              << std::endl;
  } else {
    std::cout << "gate: " << g.rows << " rows from " << o.files.size() << " file(s), "
              << g.counting_rows << " count for status";
    if (g.sampled_rows) std::cout << " (" << g.sampled_rows << " validated on sampled (batch, head) slices)";
    if (g.unrecorded_scope_rows)
      std::cout << "; " << g.unrecorded_scope_rows << " rows without a structured validation_scope (older format, accepted)";
    if (g.stale_rows)
      std::cout << "; " << g.stale_rows << " stale rows (kernels other than this build's) do not count";
    std::cout << "; config: " << config_source;
    if (!manifest_source.empty()) std::cout << "; manifest baselines: " << manifest_source;
    std::cout << "\n";
    for (const auto& x : g.violations) std::cout << x.to_string() << "\n";
    std::cout << (g.pass ? "PASS" : "FAIL") << std::endl;
  }
  return g.pass ? kExitOk : kExitFailed;
}

}  // namespace

void add_gate_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<GateOptions>();
  CLI::App* sub = app.add_subcommand("gate", "Apply the stop rules to proof rows (fail-closed)");
  sub->add_option("files", o->files, "Proof row files (JSON lines)")->required();
  sub->add_option("--config", o->config, "Gate configuration (default: bench/gate_default.json)");
  sub->add_option("--baseline", o->baseline, "Baseline proof rows for the throughput/memory rules");
  sub->add_option("--manifest", o->manifest,
                  "Rollout manifest whose baselines join the config's (default: "
                  "bench/rollout_manifest.json when present)");
  sub->add_flag("--allow-stale", o->allow_stale,
                "Do not apply the stale_fingerprint rule (judge rows of other builds)");
  sub->add_flag("--json", o->json, "Print the result as JSON");
  sub->callback([o, exit_code] { *exit_code = run_gate_command(*o); });
}

}  // namespace flashlane::cli
