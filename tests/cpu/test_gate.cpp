// tests/cpu/test_gate.cpp: the gate (src/bench/gate.h) and proof rows (src/bench/proof.h).
// Rows that must pass, then one test per stop rule with rows that must fail, malformed and empty
// inputs, counts_for_status derivation, the proof-row JSON round trip (object and file), and the
// committed receipts of bench/results (older format) still parsing and passing. The
// validation_scope field (sampled validation) has its own tests in test_bench_sampling.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include <unistd.h>

#include "bench/gate.h"
#include "bench/grid.h"
#include "bench/harness.h"
#include "bench/proof.h"
#include "bench/timer.h"
#include "core/numeric.h"
#include "support/gate_checks.h"

namespace fl = flashlane;
namespace fb = flashlane::bench;
using flashlane::test_support::dump;
using flashlane::test_support::has_rule;

namespace {

fb::ProblemSpec cell(int64_t head_dim, bool causal, int64_t seqlen) {
  fb::ProblemSpec s;
  s.head_dim = s.head_dim_v = head_dim;
  s.heads_q = s.heads_kv = 2048 / head_dim;
  s.seqlen_q = s.seqlen_k = seqlen;
  s.batch = 16384 / seqlen;
  s.mask = causal ? fl::MaskType::kCausal : fl::MaskType::kNoMask;
  return s;
}

/// An execute row that counts for status: sm90 ran on an H200 and validation passed.
fb::ProofRow good_row(int64_t head_dim = 128, bool causal = false, int64_t seqlen = 4096,
                      const std::string& backend = "sm90", const std::string& mode = "fwd") {
  fb::ProofRow r;
  r.proof_class = "execute";
  r.artifact_kind = "microbench_case";
  r.preset = "canonical";
  r.timestamp = "2026-11-22T00:00:00Z";
  r.requested_backend = backend;
  r.runtime_mode = mode;
  r.direction = mode.find("bwd") != std::string::npos ? "bwd" : "fwd";
  r.environment.device = "NVIDIA H200";
  r.environment.sm = 90;
  r.environment.driver = "13.0";
  r.environment.cuda_runtime = "13.0";
  r.environment.library_version = "0.1.0";
  r.environment.git_commit = "abc";
  r.gpu_lane.ran = true;
  r.problem = fb::spec_to_json(cell(head_dim, causal, seqlen));
  r.has_receipt = true;
  r.receipt.requested_backend = backend;
  r.receipt.actual_backend = backend;
  r.receipt.runtime_mode = mode;
  r.receipt.strict = true;
  r.receipt.device_name = "NVIDIA H200";
  r.receipt.sm = 90;
  r.receipt.status = "ok";
  r.receipt.variant = "tile128x128";
  r.metrics.median_ms = 1.0;
  r.metrics.tflops = 500.0;
  r.metrics.median_tok_per_sec = 1e7;
  r.metrics.peak_memory_mib = 1000.0;
  r.metrics.reps = 20;
  r.metrics.warmup = 3;
  r.metrics.max_abs_diff = 0.0015;
  r.metrics.ref_max_abs_diff = 0.001;
  r.metrics.checked_tensor = "o";
  r.metrics.validation_ran = true;
  r.metrics.validation_passed = true;
  r.metrics.validation_scope.kind = "full";
  r.metrics.validation_method = "every element of o and lse";
  fb::ErrorFigure f;
  f.tensor = "o";
  f.max_abs_diff = 0.0015;
  f.ref_max_abs_diff = 0.001;
  f.tolerance = 0.00201;
  f.count = 10;
  f.pass = true;
  r.metrics.errors = nlohmann::json::array({fb::figure_to_json(f)});
  fb::compute_counts_for_status(&r);
  return r;
}

fb::GateConfig config_requiring(const std::vector<fb::ProofRow>& rows) {
  fb::GateConfig c;
  for (const auto& r : rows) {
    c.required.push_back({{"runtime_mode", r.runtime_mode},
                          {"backend", r.requested_backend},
                          {"dtype", "bfloat16"},
                          {"head_dim", r.problem["head_dim"]},
                          {"causal", r.problem["causal"]},
                          {"seqlen", r.problem["seqlen_q"]}});
  }
  c.claims = {"fwd"};
  return c;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("flashlane_test_gate_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

}  // namespace

TEST(GateTest, CountingRowsPass) {
  std::vector<fb::ProofRow> rows = {good_row(128, false, 4096), good_row(128, true, 4096)};
  ASSERT_TRUE(rows[0].counts_for_status) << rows[0].not_counted_reason;
  const fb::GateResult g = fb::run_gate(rows, config_requiring(rows), {});
  EXPECT_TRUE(g.pass) << dump(g);
  EXPECT_EQ(g.counting_rows, 2);
}

TEST(GateTest, WithinBaselineTolerancesPasses) {
  std::vector<fb::ProofRow> rows = {good_row()};
  fb::ProofRow base = good_row();
  base.metrics.tflops = 550.0;           // 500 >= 0.9 * 550 = 495
  base.metrics.peak_memory_mib = 960.0;  // 1000 <= 1.05 * 960 = 1008
  const fb::GateResult g = fb::run_gate(rows, config_requiring(rows), {base});
  EXPECT_TRUE(g.pass) << dump(g);
}

TEST(GateTest, EmptyRowsFail) {
  const fb::GateResult g = fb::run_gate({}, fb::GateConfig{}, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "no_rows"));
}

TEST(GateTest, NoCountingRowFails) {
  fb::ProofRow r = good_row();
  r.gpu_lane = {false, "no CUDA device: test"};
  fb::compute_counts_for_status(&r);
  ASSERT_FALSE(r.counts_for_status);
  const fb::GateResult g = fb::run_gate({r}, fb::GateConfig{}, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "no_counting_row")) << dump(g);
}

TEST(GateTest, RequiredRowMissingFails) {
  std::vector<fb::ProofRow> rows = {good_row(128, false, 4096)};
  fb::GateConfig c = config_requiring({good_row(128, false, 4096), good_row(256, true, 8192)});
  const fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "required_missing")) << dump(g);
}

TEST(GateTest, RequiredRowNotCountingFails) {
  // The receipt says reference_cuda ran although sm90 was requested: a fallback is not proof.
  fb::ProofRow fallback = good_row(128, true, 4096);
  fallback.receipt.actual_backend = "reference_cuda";
  fb::compute_counts_for_status(&fallback);
  ASSERT_FALSE(fallback.counts_for_status);
  std::vector<fb::ProofRow> rows = {good_row(128, false, 4096), fallback};
  const fb::GateResult g = fb::run_gate(rows, config_requiring(rows), {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "required_not_counted")) << dump(g);
}

TEST(GateTest, NanCountFails) {
  fb::ProofRow r = good_row();
  r.metrics.nan_count = 3;
  const fb::GateResult g = fb::run_gate({good_row(64), r}, fb::GateConfig{}, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "non_finite")) << dump(g);
}

TEST(GateTest, NonFiniteMetricFails) {
  fb::ProofRow r = good_row();
  r.metrics.tflops = std::numeric_limits<double>::infinity();
  fb::GateResult g = fb::run_gate({good_row(64), r}, fb::GateConfig{}, {});
  EXPECT_TRUE(has_rule(g, "non_finite")) << dump(g);
  r = good_row();
  r.metrics.max_abs_diff = std::nan("");
  g = fb::run_gate({good_row(64), r}, fb::GateConfig{}, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "non_finite")) << dump(g);
}

TEST(GateTest, ErrorBoundFails) {
  fb::ProofRow r = good_row();
  r.metrics.max_abs_diff = 2 * 0.001 + 2e-5;  // > 2 * ref + 1e-5
  fb::GateResult g = fb::run_gate({good_row(64), r}, fb::GateConfig{}, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "error_bound")) << dump(g);
  // A per-tensor figure over its bound fails too, even when the row summary looks fine.
  r = good_row();
  r.metrics.errors.push_back({{"tensor", "lse"}, {"max_abs_diff", 1e-3}, {"ref_max_abs_diff", 0.0},
                              {"nan_count", 0}, {"pass", false}});
  g = fb::run_gate({good_row(64), r}, fb::GateConfig{}, {});
  EXPECT_TRUE(has_rule(g, "error_bound")) << dump(g);
  // Exactly on the bound passes.
  r = good_row();
  r.metrics.max_abs_diff = 2 * 0.001 + 1e-5;
  g = fb::run_gate({r}, fb::GateConfig{}, {});
  EXPECT_TRUE(g.pass) << dump(g);
}

TEST(GateTest, CountingRowWithoutErrorFiguresFails) {
  fb::ProofRow r = good_row();
  r.metrics.max_abs_diff.reset();
  const fb::GateResult g = fb::run_gate({r}, fb::GateConfig{}, {});
  EXPECT_TRUE(has_rule(g, "error_bound")) << dump(g);
}

TEST(GateTest, ThroughputRegressionFails) {
  std::vector<fb::ProofRow> rows = {good_row()};
  fb::ProofRow base = good_row();
  base.metrics.tflops = 600.0;  // 500 < 0.9 * 600 = 540
  fb::GateResult g = fb::run_gate(rows, config_requiring(rows), {base});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "throughput")) << dump(g);
  // The same bar from numbers in the config.
  fb::GateConfig c = config_requiring(rows);
  c.baseline.push_back({nlohmann::json{{"backend", "sm90"}, {"head_dim", 128}}, 600.0, std::nullopt});
  g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "throughput")) << dump(g);
}

TEST(GateTest, MemoryRegressionFails) {
  std::vector<fb::ProofRow> rows = {good_row()};
  fb::ProofRow base = good_row();
  base.metrics.peak_memory_mib = 900.0;  // 1000 > 1.05 * 900 = 945
  fb::GateResult g = fb::run_gate(rows, config_requiring(rows), {base});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "memory")) << dump(g);
  fb::GateConfig c = config_requiring(rows);
  c.baseline.push_back({nlohmann::json{{"backend", "sm90"}}, std::nullopt, 900.0});
  g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "memory")) << dump(g);
}

TEST(GateTest, ClaimWithoutExecutedRowsFails) {
  std::vector<fb::ProofRow> rows = {good_row()};
  fb::GateConfig c = config_requiring(rows);
  c.claims = {"fwd", "bwd", "decode"};
  // A bwd row that was refused (planner) does not make the claim.
  fb::ProofRow refused = good_row(128, false, 4096, "sm90", "bwd");
  refused.proof_class = "planner";
  refused.receipt.actual_backend = "";
  refused.receipt.status = "backend_inapplicable";
  fb::compute_counts_for_status(&refused);
  rows.push_back(refused);
  const fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_FALSE(g.pass);
  int claims = 0;
  for (const auto& v : g.violations)
    if (v.rule == "claim_not_executed") ++claims;
  EXPECT_EQ(claims, 2) << dump(g);  // bwd and decode
}

TEST(GateTest, CountsForStatusDerivation) {
  fb::ProofRow r = good_row();
  EXPECT_TRUE(r.counts_for_status);
  EXPECT_TRUE(r.not_counted_reason.empty());
  auto check_not = [](fb::ProofRow row, const char* what) {
    fb::compute_counts_for_status(&row);
    EXPECT_FALSE(row.counts_for_status) << what;
    EXPECT_FALSE(row.not_counted_reason.empty()) << what;
  };
  { auto x = r; x.proof_class = "observational"; check_not(x, "observational"); }
  { auto x = r; x.gpu_lane.ran = false; check_not(x, "no gpu lane"); }
  { auto x = r; x.environment.sm = 0; check_not(x, "no sm"); }
  { auto x = r; x.has_receipt = false; check_not(x, "no receipt"); }
  { auto x = r; x.receipt.actual_backend = "reference_cuda"; check_not(x, "fallback"); }
  { auto x = r; x.receipt.status = "cuda_error"; check_not(x, "failed call"); }
  { auto x = r; x.receipt.sm = 0; check_not(x, "cpu receipt"); }
  { auto x = r; x.metrics.validation_ran = false; check_not(x, "not validated"); }
  { auto x = r; x.metrics.validation_passed = false; check_not(x, "validation failed"); }
  { auto x = r; x.metrics.nan_count = 1; check_not(x, "nan"); }
}

TEST(GateTest, ProofRowJsonRoundTrip) {
  fb::ProofRow r = good_row(256, true, 16384);
  r.peers.push_back({"reference_cuda", 10.0, 50.0, 10.0, true});
  r.receipt.skipped.push_back({"sm100", "sm100.not_implemented"});
  const nlohmann::json j = fb::proof_row_to_json(r);
  fb::ProofRow back;
  std::string why;
  ASSERT_TRUE(fb::proof_row_from_json(nlohmann::json::parse(j.dump()), &back, &why)) << why;
  EXPECT_TRUE(back == r);
  EXPECT_EQ(fb::proof_row_to_json(back), j);
  // Required fields of the schema are present at the top level.
  for (const char* k : {"proof_class", "artifact_kind", "counts_for_status", "environment",
                        "problem", "receipt", "metrics", "peer", "gpu_lane"})
    EXPECT_TRUE(j.contains(k)) << k;
  for (const char* k : {"median_ms", "tflops", "peak_memory_mib", "max_abs_diff",
                        "ref_max_abs_diff", "nan_count", "validation_scope", "validation_method"})
    EXPECT_TRUE(j["metrics"].contains(k)) << k;
  EXPECT_EQ(j["metrics"]["validation_scope"], nlohmann::json({{"kind", "full"}}));
}

TEST(GateTest, CommittedReceiptsWithoutStructuredScopeStillParseAndPass) {
  // bench/results/archive/2026-11-22-*: written before metrics.validation_scope became an object
  // (it held words then) and before kernel fingerprints. They parse, their scope reads as
  // "unrecorded", and the forward grid still passes the default gate judged as rows of their own
  // build, as docs/PERF.md says; against this build's fingerprints every row is stale.
  const std::string dir = std::string(FLASHLANE_SOURCE_DIR) + "/bench/results/archive/";
  for (const char* name : {"2026-11-22-h200-fwd-canonical.jsonl", "2026-11-22-h200-bwd-wgmma-canonical.jsonl",
                           "2026-11-22-h200-fwd-bwd-subset.jsonl"}) {
    std::vector<fb::ProofRow> rows;
    std::string why;
    ASSERT_TRUE(fb::read_proof_rows(dir + name, &rows, &why)) << why;
    ASSERT_FALSE(rows.empty()) << name;
    for (const auto& r : rows) {
      EXPECT_EQ(r.metrics.validation_scope.kind, "unrecorded") << name;
      EXPECT_EQ(r.metrics.validation_method.rfind("every element of", 0), 0u) << name;
    }
  }
  std::vector<fb::ProofRow> rows;
  std::string why;
  ASSERT_TRUE(fb::read_proof_rows(dir + "2026-11-22-h200-fwd-canonical.jsonl", &rows, &why)) << why;
  fb::GateConfig c;
  ASSERT_TRUE(fb::load_gate_config(std::string(FLASHLANE_SOURCE_DIR) + "/bench/gate_default.json", &c, &why))
      << why;
  const fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(g.pass) << dump(g);
  EXPECT_EQ(g.unrecorded_scope_rows, 72);
  EXPECT_EQ(g.sampled_rows, 0);
  c.current_fingerprints = fb::build_kernel_fingerprints();
  const fb::GateResult stale = fb::run_gate(rows, c, {});
  EXPECT_FALSE(stale.pass);
  EXPECT_EQ(stale.stale_rows, 72);
  EXPECT_EQ(stale.counting_rows, 0);
  EXPECT_TRUE(has_rule(stale, "stale_fingerprint"));
  EXPECT_TRUE(has_rule(stale, "required_not_counted"));
}

TEST(GateTest, ProofRowFileRoundTripAndNonFiniteSurvives) {
  const std::string path = temp_path("rows.jsonl");
  fb::ProofRow a = good_row(64), b = good_row(128);
  b.metrics.tflops = std::nan("");  // written as "nan", read back as NaN: the gate still sees it
  std::string why;
  ASSERT_TRUE(fb::append_proof_rows(path, {a}, /*truncate=*/true, &why)) << why;
  ASSERT_TRUE(fb::append_proof_rows(path, {b}, /*truncate=*/false, &why)) << why;
  std::vector<fb::ProofRow> rows;
  ASSERT_TRUE(fb::read_proof_rows(path, &rows, &why)) << why;
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(rows[0] == a);
  ASSERT_TRUE(rows[1].metrics.tflops.has_value());
  EXPECT_TRUE(std::isnan(*rows[1].metrics.tflops));
  EXPECT_TRUE(has_rule(fb::run_gate(rows, fb::GateConfig{}, {}), "non_finite"));
  std::filesystem::remove(path);
}

// A peer row as bench/peers/torch_sdpa.py writes it (no runtime mode, sm, GPU lane, receipt or NaN
// count) is read, since it never counts; the same row claiming to count is refused.
TEST(GateTest, PeerRowsParseOnlyAsNotCounting) {
  const nlohmann::json peer = nlohmann::json::parse(R"({"schema": "flashlane.proof_row/1",
      "proof_class": "execute", "artifact_kind": "microbench_case", "counts_for_status": false,
      "requested_backend": "torch_sdpa_cudnn", "direction": "fwd",
      "environment": {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "cudnn": 91900},
      "problem": {"batch": 1, "heads_q": 8, "heads_kv": 8, "seqlen_q": 16384, "seqlen_k": 16384,
                  "head_dim": 256, "dtype": "bfloat16", "causal": true},
      "metrics": {"median_ms": 3.5, "tflops": 627.0}, "status": "ok"})");
  fb::ProofRow out;
  std::string why;
  ASSERT_TRUE(fb::proof_row_from_json(peer, &out, &why)) << why;
  EXPECT_FALSE(out.counts_for_status);
  EXPECT_EQ(out.runtime_mode, "fwd");
  EXPECT_FALSE(out.has_receipt);
  EXPECT_FALSE(out.gpu_lane.ran);
  nlohmann::json claims = peer;
  claims["counts_for_status"] = true;
  EXPECT_FALSE(fb::proof_row_from_json(claims, &out, &why));
}

TEST(GateTest, MalformedInputFails) {
  std::string why;
  std::vector<fb::ProofRow> rows;
  EXPECT_FALSE(fb::read_proof_rows(temp_path("does_not_exist.jsonl"), &rows, &why));
  const std::string path = temp_path("bad.jsonl");
  {
    std::ofstream f(path);
    f << fb::proof_row_to_json(good_row()).dump() << "\n{not json\n";
  }
  rows.clear();
  EXPECT_FALSE(fb::read_proof_rows(path, &rows, &why));
  EXPECT_NE(why.find(":2:"), std::string::npos) << why;
  // Valid JSON, wrong shape: missing fields, wrong types, unknown class or schema.
  fb::ProofRow out;
  nlohmann::json j = fb::proof_row_to_json(good_row());
  for (const char* k : {"proof_class", "counts_for_status", "environment", "metrics", "receipt"}) {
    nlohmann::json bad = j;
    bad.erase(k);
    EXPECT_FALSE(fb::proof_row_from_json(bad, &out, &why)) << k;
  }
  nlohmann::json bad = j;
  bad["proof_class"] = "vibes";
  EXPECT_FALSE(fb::proof_row_from_json(bad, &out, &why));
  bad = j;
  bad["schema"] = "something/2";
  EXPECT_FALSE(fb::proof_row_from_json(bad, &out, &why));
  bad = j;
  bad["metrics"]["tflops"] = "fast";
  EXPECT_FALSE(fb::proof_row_from_json(bad, &out, &why));
  EXPECT_FALSE(fb::proof_row_from_json(nlohmann::json::array(), &out, &why));
  // An empty file yields no rows, and no rows fail the gate.
  {
    std::ofstream f(path, std::ios::trunc);
  }
  rows.clear();
  ASSERT_TRUE(fb::read_proof_rows(path, &rows, &why));
  EXPECT_FALSE(fb::run_gate(rows, fb::GateConfig{}, {}).pass);
  std::filesystem::remove(path);
}

TEST(GateTest, ConfigParsing) {
  fb::GateConfig c;
  std::string why;
  EXPECT_FALSE(fb::gate_config_from_json({{"requird", nlohmann::json::array()}}, &c, &why));
  EXPECT_NE(why.find("requird"), std::string::npos);
  EXPECT_FALSE(fb::gate_config_from_json(nlohmann::json::array(), &c, &why));
  EXPECT_FALSE(fb::gate_config_from_json({{"required", {nlohmann::json::object()}}}, &c, &why));
  EXPECT_FALSE(fb::gate_config_from_json({{"throughput_tolerance", 2.0}}, &c, &why));
  ASSERT_TRUE(fb::gate_config_from_json(
      {{"claims", {"fwd"}}, {"required", {{{"backend", "sm90"}}}}, {"memory_tolerance", 0.1}}, &c, &why))
      << why;
  EXPECT_EQ(c.claims.size(), 1u);
  EXPECT_DOUBLE_EQ(c.memory_tolerance, 0.1);
  EXPECT_DOUBLE_EQ(c.throughput_tolerance, 0.10);
}

TEST(GateTest, DefaultConfigRequiresTheCanonicalForwardGridOnSm90) {
  fb::GateConfig c;
  std::string why;
  ASSERT_TRUE(fb::load_gate_config(std::string(FLASHLANE_SOURCE_DIR) + "/bench/gate_default.json", &c, &why))
      << why;
  EXPECT_EQ(c.required.size(), 36u);
  // Rows built from the canonical grid, all counting, satisfy it exactly.
  std::vector<fb::ProofRow> rows;
  for (const auto& spec : fb::canonical_grid()) {
    fb::ProofRow r = good_row(spec.head_dim, spec.mask != fl::MaskType::kNoMask, spec.seqlen_q);
    rows.push_back(r);
  }
  fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(g.pass) << dump(g);
  rows.pop_back();
  g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "required_missing")) << dump(g);
}

TEST(GateTest, SelectorMatching) {
  const fb::ProofRow r = good_row(128, true, 2048);
  EXPECT_TRUE(fb::selector_matches({{"seqlen", 2048}, {"causal", true}}, r));
  EXPECT_TRUE(fb::selector_matches({{"head_dim", 128.0}}, r));  // numbers as numbers
  EXPECT_FALSE(fb::selector_matches({{"seqlen", 4096}}, r));
  EXPECT_FALSE(fb::selector_matches({{"no_such_field", 1}}, r));
  EXPECT_EQ(fb::row_key(r), "fwd sm90 bfloat16 b8 sq2048 sk2048 hq16 hkv16 d128 causal");
}

// ---------------------------------------------------------------------------------------------
// The harness the gate's numbers come from: error figures, inputs, FLOP counting.

TEST(HarnessTest, ErrorFiguresFollowTheRule) {
  const double inf = std::numeric_limits<double>::infinity();
  fb::ErrorFigure f = fb::compare_tensor("o", {1.0, 2.0}, {1.0, 2.1}, {1.0, 2.05});
  EXPECT_NEAR(f.max_abs_diff, 0.1, 1e-12);
  EXPECT_NEAR(f.ref_max_abs_diff, 0.05, 1e-12);
  EXPECT_TRUE(f.pass);  // 0.1 <= 2 * 0.05 + 1e-5
  f = fb::compare_tensor("o", {1.0, 2.3}, {1.0, 2.1}, {1.0, 2.05});  // 0.2 > 0.1 + 1e-5
  EXPECT_FALSE(f.pass);
  f = fb::compare_tensor("o", {std::nan(""), 2.1}, {1.0, 2.1}, {1.0, 2.1});
  EXPECT_EQ(f.nan_count, 1);
  EXPECT_FALSE(f.pass);
  // LSE: -inf where both say the row is fully masked is equal; +inf or a finite mismatch is not.
  f = fb::compare_tensor("lse", {-inf, 0.5}, {-inf, 0.5}, {-inf, 0.5});
  EXPECT_TRUE(f.pass);
  EXPECT_EQ(f.nan_count, 0);
  f = fb::compare_tensor("lse", {0.0, 0.5}, {-inf, 0.5}, {-inf, 0.5});
  EXPECT_FALSE(f.pass);
  f = fb::compare_tensor("lse", {inf, 0.5}, {inf, 0.5}, {inf, 0.5});
  EXPECT_EQ(f.nan_count, 1);
  f = fb::compare_tensor("o", {1.0}, {1.0, 2.0}, {1.0, 2.0});  // size mismatch
  EXPECT_FALSE(f.pass);
}

TEST(HarnessTest, InputsAreSeededNormalAndRounded) {
  fb::ProblemSpec s;
  s.batch = 2;
  s.seqlen_q = s.seqlen_k = 64;
  const fb::HostInputs a = fb::make_inputs(s, true), b = fb::make_inputs(s, true);
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.dout, b.dout);
  s.seed = 1;
  EXPECT_NE(fb::make_inputs(s, false).q, a.q);
  double sum = 0, sq = 0;
  int zeros = 0;
  for (double x : a.q) {
    sum += x;
    sq += x * x;
    zeros += x == 0.0;
    EXPECT_EQ(x, static_cast<double>(fl::numeric::bf16_to_float(fl::numeric::float_to_bf16(static_cast<float>(x)))));
  }
  const double n = static_cast<double>(a.q.size());
  EXPECT_NEAR(sum / n, 0.0, 0.05);
  EXPECT_NEAR(sq / n, 1.0, 0.05);
  EXPECT_LT(zeros, 3);
  EXPECT_NE(a.q, a.k);
}

TEST(HarnessTest, VisiblePairsAgreeWithTheLibrary) {
  struct Case { fl::MaskType mask; int64_t sq, sk, wl, wr; std::vector<int32_t> vq, vk; };
  const Case cases[] = {
      {fl::MaskType::kNoMask, 64, 64, -1, -1, {}, {}},
      {fl::MaskType::kCausal, 64, 96, -1, -1, {}, {}},
      {fl::MaskType::kCausalBottomRight, 64, 96, -1, -1, {}, {}},
      {fl::MaskType::kCausalBottomRight, 96, 64, -1, -1, {}, {}},
      {fl::MaskType::kNoMask, 64, 64, 8, 4, {}, {}},
      {fl::MaskType::kCausal, 64, 64, 16, -1, {}, {}},
      {fl::MaskType::kCausal, 0, 0, -1, -1, {17, 40, 3}, {30, 40, 9}},
  };
  for (const Case& c : cases) {
    fb::ProblemSpec s;
    s.mask = c.mask;
    s.seqlen_q = c.sq;
    s.seqlen_k = c.sk;
    s.window_left = c.wl;
    s.window_right = c.wr;
    s.seqlens_q = c.vq;
    s.seqlens_k = c.vk;
    fb::ProblemTensors t;
    ASSERT_TRUE(fb::build_tensors(s, fb::make_inputs(s, false), s.dtype, fl::Device::cpu(), false, &t).ok());
    fl::ProblemInfo info;
    const fl::Status st = fl::validate(t.problem, fl::Direction::kForward, &info);
    ASSERT_TRUE(st.ok()) << st.to_string();
    std::vector<int32_t> cq{0}, ck{0};
    for (size_t b = 0; b < c.vq.size(); ++b) {
      cq.push_back(cq.back() + c.vq[b]);
      ck.push_back(ck.back() + c.vk[b]);
    }
    const double lib = info.visible_pairs(s.varlen() ? cq.data() : nullptr,
                                          s.varlen() ? ck.data() : nullptr, nullptr);
    EXPECT_DOUBLE_EQ(lib, s.visible_pairs()) << s.describe();
    EXPECT_GT(fl::forward_flops(info, lib), 0.0) << s.describe();
  }
}

TEST(HarnessTest, Grids) {
  EXPECT_EQ(fb::canonical_grid().size(), 36u);
  for (const auto& s : fb::canonical_grid()) {
    EXPECT_EQ(s.heads_q * s.head_dim, 2048);
    EXPECT_EQ(s.batch * s.seqlen_q, 16384);
    EXPECT_EQ(s.dtype, fl::DType::kBFloat16);
  }
  EXPECT_EQ(fb::smoke_grid().size(), 8u);
  const auto varlen = fb::varlen_grid();
  ASSERT_EQ(varlen.size(), 6u);
  for (const auto& s : varlen) {
    EXPECT_TRUE(s.varlen());
    EXPECT_EQ(s.total_q(), 16384);
    EXPECT_EQ(s.total_k(), 16384);
    EXPECT_EQ(s.max_seqlen_q(), 8192);
    EXPECT_EQ(s.heads_q * s.head_dim, 2048);
    EXPECT_EQ(s.dtype, fl::DType::kBFloat16);
    std::string why;
    EXPECT_TRUE(s.check(&why)) << why;
    EXPECT_TRUE(fb::spec_to_json(s).at("varlen").get<bool>());
  }
  std::vector<fb::ProblemSpec> by_name;
  ASSERT_TRUE(fb::grid_for_preset("varlen", &by_name));
  EXPECT_EQ(by_name.size(), varlen.size());
  ASSERT_EQ(fb::cpu_grid().size(), 2u);
  EXPECT_EQ(fb::cpu_grid()[0].seqlen_q, 256);
  EXPECT_DOUBLE_EQ(fb::median({3, 1, 2}), 2.0);
  EXPECT_DOUBLE_EQ(fb::median({4, 1, 2, 3}), 2.5);
  EXPECT_TRUE(std::isnan(fb::median({})));
}

TEST(GateTest, ForgedCountsForStatusFails) {
  // A row claiming to count although its receipt shows a fallback: the gate re-derives the flag.
  fb::ProofRow forged = good_row();
  forged.receipt.actual_backend = "reference_cuda";
  forged.counts_for_status = true;
  const fb::GateResult g = fb::run_gate({forged}, fb::GateConfig{}, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "counts_mismatch")) << dump(g);
  EXPECT_TRUE(has_rule(g, "no_counting_row")) << dump(g);
}

// ---------------------------------------------------------------------------------------------
// Real-work rows (artifact_kind short_train / prefill / decode, bench/real_work): they
// carry pass criteria in metrics.errors instead of FlashAttention's error figures.

namespace {

fb::ProofRow real_work_row(const std::string& kind, const std::string& preset, int64_t head_dim,
                           const std::string& mode = "fwd") {
  fb::ProofRow r = good_row(head_dim, true, 2048, "sm90", mode);
  r.artifact_kind = kind;
  r.preset = preset;
  r.metrics.tflops.reset();
  r.metrics.max_abs_diff.reset();
  r.metrics.ref_max_abs_diff.reset();
  r.metrics.checked_tensor.clear();
  r.metrics.errors = nlohmann::json::array(
      {{{"criterion", "receipts_all_sm90"}, {"value", 1600}, {"limit", nullptr}, {"pass", true}},
       {{"criterion", "final_loss_ratio"}, {"value", 1.01}, {"limit", 1.05}, {"pass", true}}});
  fb::compute_counts_for_status(&r);
  return r;
}

std::vector<fb::ProofRow> real_work_rows() {
  std::vector<fb::ProofRow> rows;
  for (int64_t d : {64, 128}) {
    rows.push_back(real_work_row("short_train", "real_work.steps2", d, "bwd"));
    rows.push_back(real_work_row("short_train", "real_work.steps100", d, "bwd"));
    rows.push_back(real_work_row("prefill", "real_work", d));
    rows.push_back(real_work_row("decode", "real_work", d));
  }
  return rows;
}

fb::GateConfig real_work_config() {
  fb::GateConfig c;
  std::string why;
  EXPECT_TRUE(fb::load_gate_config(std::string(FLASHLANE_SOURCE_DIR) + "/bench/gate_real_work.json", &c, &why))
      << why;
  return c;
}

}  // namespace

TEST(GateRealWorkTest, ConfigRequiresEveryRealWorkRowAndTheyPass) {
  const fb::GateConfig c = real_work_config();
  EXPECT_EQ(c.required.size(), 8u);
  const std::vector<fb::ProofRow> rows = real_work_rows();
  ASSERT_TRUE(rows[0].counts_for_status) << rows[0].not_counted_reason;
  const fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(g.pass) << dump(g);  // no error figures needed: the criteria prove these rows
  EXPECT_EQ(g.counting_rows, 8);
}

TEST(GateRealWorkTest, MissingRequiredRowFails) {
  const fb::GateConfig c = real_work_config();
  for (size_t drop = 0; drop < 8; ++drop) {
    std::vector<fb::ProofRow> rows = real_work_rows();
    rows.erase(rows.begin() + static_cast<long>(drop));
    const fb::GateResult g = fb::run_gate(rows, c, {});
    EXPECT_FALSE(g.pass);
    EXPECT_TRUE(has_rule(g, "required_missing")) << drop << "\n" << dump(g);
  }
}

TEST(GateRealWorkTest, RowThatDidNotExecuteFails) {
  const fb::GateConfig c = real_work_config();
  // Produced without a GPU: observational, the GPU lane did not run.
  std::vector<fb::ProofRow> rows = real_work_rows();
  rows[1].proof_class = "observational";
  rows[1].gpu_lane = {false, "no CUDA device"};
  rows[1].environment.sm = 0;
  fb::compute_counts_for_status(&rows[1]);
  ASSERT_FALSE(rows[1].counts_for_status);
  fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_FALSE(g.pass);
  // proof_class is part of the selector: the non-executed row does not satisfy it.
  EXPECT_TRUE(has_rule(g, "required_missing")) << dump(g);
  // The attention fell back to PyTorch SDPA (the integration's receipt): not proof.
  rows = real_work_rows();
  rows[3].receipt.actual_backend = "torch_sdpa";
  rows[3].receipt.fallback_reason = "transformers.dense_mask_unsupported";
  fb::compute_counts_for_status(&rows[3]);
  g = fb::run_gate(rows, c, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "required_not_counted")) << dump(g);
  // No flashlane call at all (no receipt).
  rows = real_work_rows();
  rows[5].has_receipt = false;
  fb::compute_counts_for_status(&rows[5]);
  g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "required_not_counted")) << dump(g);
  // Validation failed (e.g. the loss ratio above 1.05).
  rows = real_work_rows();
  rows[2].metrics.errors[1]["pass"] = false;
  rows[2].metrics.validation_passed = false;
  fb::compute_counts_for_status(&rows[2]);
  g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "required_not_counted")) << dump(g);
}

TEST(GateRealWorkTest, CriteriaMustBePresentAndPassed) {
  const fb::GateConfig c = real_work_config();
  std::vector<fb::ProofRow> rows = real_work_rows();
  rows[0].metrics.errors = nlohmann::json::array();  // validation_passed without any criterion
  fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "criteria")) << dump(g);
  rows = real_work_rows();
  rows[0].metrics.errors[0]["pass"] = false;  // says passed, one criterion did not
  g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "criteria")) << dump(g);
  // A microbench row without error figures still fails error_bound.
  fb::ProofRow bench = good_row();
  bench.metrics.max_abs_diff.reset();
  g = fb::run_gate({bench}, fb::GateConfig{}, {});
  EXPECT_TRUE(has_rule(g, "error_bound")) << dump(g);
}

TEST(GateRealWorkTest, RowsWrittenByPythonAreRead) {
  // The JSON shape bench/real_work/realwork_rows.py writes (extra keys: receipts_summary, details;
  // criteria entries in metrics.errors) parses and keeps its counts_for_status.
  fb::ProofRow r = real_work_row("decode", "real_work", 64);
  nlohmann::json j = fb::proof_row_to_json(r);
  j["receipts_summary"] = {{"count", 248}};
  j["details"] = {{"decode_backend", "sm90"}};
  fb::ProofRow back;
  std::string why;
  ASSERT_TRUE(fb::proof_row_from_json(j, &back, &why)) << why;
  fb::compute_counts_for_status(&back);
  EXPECT_TRUE(back.counts_for_status) << back.not_counted_reason;
  EXPECT_EQ(back.artifact_kind, "decode");
}
