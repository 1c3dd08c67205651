// tests/cpu/test_status.cpp: the surface catalog (src/dispatch/surfaces.h), kernel fingerprints,
// the gate's stop rules that status relies on (stale fingerprint, train failure, mode not
// executed, manifest baselines), the rollout manifest and `flashlane status`
// (src/bench/status.h): every way a row can fail to be proof keeps its cell from going green,
// a surface whose only receipts come from a fallback backend is never green for the requested
// one, and docs/STATUS.md is what the tool prints for the checked-in receipts and manifest.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <sys/wait.h>
#include <unistd.h>

#include "bench/gate.h"
#include "bench/harness.h"
#include "bench/proof.h"
#include "bench/status.h"
#include "dispatch/surfaces.h"
#include "flashlane/flashlane.h"
#include "flashlane/version.h"
#include "support/host_problem.h"
#include "support/gate_checks.h"

namespace fl = flashlane;
namespace fb = flashlane::bench;
using flashlane::test_support::dump;
using flashlane::test_support::has_rule;
namespace fd = flashlane::detail;

namespace {

const std::string kSrc = FLASHLANE_SOURCE_DIR;

fb::ProblemSpec cell(int64_t head_dim, bool causal, int64_t seqlen) {
  fb::ProblemSpec s;
  s.head_dim = s.head_dim_v = head_dim;
  s.heads_q = s.heads_kv = 2048 / head_dim;
  s.seqlen_q = s.seqlen_k = seqlen;
  s.batch = 16384 / seqlen;
  s.mask = causal ? fl::MaskType::kCausal : fl::MaskType::kNoMask;
  return s;
}

/// A counting execute row of the current kernels: `backend` ran `mode` on an H200, validated.
fb::ProofRow row(const std::string& backend = "sm90", const std::string& mode = "fwd",
                 int64_t head_dim = 128, bool causal = false, int64_t seqlen = 4096) {
  fb::ProofRow r;
  r.proof_class = "execute";
  r.artifact_kind = "microbench_case";
  r.preset = "canonical";
  r.requested_backend = backend;
  r.runtime_mode = mode;
  r.direction = mode.find("bwd") != std::string::npos ? "bwd" : "fwd";
  r.surface = fb::bench_surface(r.direction, false);
  r.environment.device = "NVIDIA H200";
  r.environment.sm = 90;
  r.environment.kernel_fingerprint = fl::kernel_fingerprint(backend.c_str());
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
  r.receipt.kernel_fingerprint = r.environment.kernel_fingerprint;
  r.metrics.median_ms = 1.0;
  r.metrics.tflops = 500.0;
  r.metrics.peak_memory_mib = 1000.0;
  r.metrics.max_abs_diff = 0.0015;
  r.metrics.ref_max_abs_diff = 0.001;
  r.metrics.checked_tensor = "o";
  r.metrics.validation_ran = true;
  r.metrics.validation_passed = true;
  r.metrics.validation_scope.kind = "full";
  fb::compute_counts_for_status(&r);
  return r;
}

/// A small manifest for dense_fwd on sm90: L0, L1, R1, R2 (two cells), R7 (gate over them),
/// with baselines 500 TFLOP/s and 1000 MiB for the two cells.
nlohmann::json small_manifest() {
  const nlohmann::json cells = nlohmann::json::array(
      {{{"runtime_mode", "fwd"}, {"head_dim", 128}, {"causal", false}, {"seqlen", 4096}},
       {{"runtime_mode", "fwd"}, {"head_dim", 64}, {"causal", true}, {"seqlen", 1024}}});
  nlohmann::json required = cells;
  for (auto& c : required) c["backend"] = "sm90";
  nlohmann::json baselines = nlohmann::json::array();
  for (auto c : required) {
    c["artifact_kind"] = "microbench_case";
    baselines.push_back({{"match", c}, {"tflops", 500.0}, {"peak_memory_mib", 1000.0}});
  }
  return {{"schema", "flashlane.rollout_manifest/1"},
          {"surfaces",
           {{{"surface", "dense_fwd"},
             {"target_backend", "sm90"},
             {"baselines", baselines},
             {"rungs",
              {{{"id", "L0"}, {"title", "code"}, {"requires", {{{"kind", "code"}, {"text", "code"}}}}},
               {{"id", "L1"},
                {"title", "fails closed"},
                {"requires", {{{"kind", "fail_closed"}, {"text", "fails closed"}}}}},
               {{"id", "R1"},
                {"title", "one execute receipt"},
                {"requires",
                 {{{"text", "one receipt"}, {"artifact_kind", "microbench_case"},
                   {"proof_class", "execute"}, {"device_class", "hopper"}}}}},
               {{"id", "R2"},
                {"title", "grid"},
                {"requires",
                 {{{"text", "grid"}, {"artifact_kind", "microbench_case"},
                   {"proof_class", "execute"}, {"device_class", "hopper"}, {"rows", cells}}}}},
               {{"id", "R7"},
                {"title", "gate"},
                {"requires",
                 {{{"kind", "gate"}, {"text", "gate"}, {"required", required},
                   {"claims", {"fwd"}}}}}}}}}}}};
}

fb::Manifest parse(const nlohmann::json& j) {
  fb::Manifest m;
  std::string why;
  EXPECT_TRUE(fb::manifest_from_json(j, &m, &why)) << why;
  return m;
}

fb::StatusReport status_of(const std::vector<fb::ProofRow>& rows,
                           const nlohmann::json& manifest = small_manifest()) {
  std::vector<fb::SourcedRow> src;
  for (const auto& r : rows) src.push_back({r, "test.jsonl"});
  fb::ReceiptFile f;
  f.path = "test.jsonl";
  f.rows = static_cast<int>(rows.size());
  return fb::compute_status(parse(manifest), src, {f}, fb::build_kernel_fingerprints());
}

const fb::SurfaceStatus& surface(const fb::StatusReport& rep, const std::string& id) {
  for (const auto& s : rep.surfaces)
    if (s.surface == id) return s;
  static fb::SurfaceStatus none;
  ADD_FAILURE() << "no surface " << id;
  return none;
}

const fb::Cell& cell_of(const fb::StatusReport& rep, const std::string& s, const std::string& b) {
  for (const auto& c : surface(rep, s).cells)
    if (c.backend == b) return c;
  static fb::Cell none;
  ADD_FAILURE() << "no cell " << s << " x " << b;
  return none;
}

/// The two R2 cells of small_manifest(), counting and current.
std::vector<fb::ProofRow> grid_rows() { return {row("sm90", "fwd", 128, false, 4096), row("sm90", "fwd", 64, true, 1024)}; }

fb::GateConfig gate_for(const std::vector<fb::ProofRow>& rows) {
  fb::GateConfig c;
  for (const auto& r : rows)
    c.required.push_back({{"runtime_mode", r.runtime_mode}, {"backend", r.requested_backend},
                          {"head_dim", r.problem["head_dim"]}, {"causal", r.problem["causal"]},
                          {"seqlen", r.problem["seqlen_q"]}});
  c.claims = {"fwd"};
  c.baseline = fb::gate_baselines(parse(small_manifest()));
  c.current_fingerprints = fb::build_kernel_fingerprints();
  return c;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The catalog and fingerprints.

TEST(SurfaceCatalog, IdsModesAndTags) {
  const std::vector<std::string> ids = {"dense_fwd", "dense_bwd", "varlen_fwd", "varlen_bwd",
                                        "decode", "paged_decode", "append_decode",
                                        "attention_sinks", "context_parallel"};
  ASSERT_EQ(fd::surface_catalog().size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(fd::surface_catalog()[i].id, ids[i]);
  EXPECT_EQ(fd::surface_for_mode("fwd"), "dense_fwd");
  EXPECT_EQ(fd::surface_for_mode("varlen_bwd"), "varlen_bwd");
  EXPECT_EQ(fd::surface_for_mode("paged_decode"), "paged_decode");
  EXPECT_EQ(fd::surface_for_mode("nonsense"), "");
  EXPECT_EQ(fd::surface_for_mode("sinks_fwd"), "attention_sinks");
  EXPECT_EQ(fd::surface_for_mode("sinks_bwd"), "attention_sinks");
  EXPECT_EQ(fd::surface_for_mode("sinks_varlen_fwd"), "attention_sinks");
  EXPECT_EQ(fd::surface_for_mode("sinks_varlen_bwd"), "attention_sinks");
  {
    const fd::Surface* s = fd::find_surface("context_parallel");
    ASSERT_NE(s, nullptr);
    EXPECT_FALSE(s->has_code);
    EXPECT_EQ(s->reason_tag, "surface.not_implemented");
    for (const auto& b : s->backends) EXPECT_FALSE(b.applies) << b.backend;
  }
  // The decode surfaces and the sinks have code on reference_cpu, reference_cuda and sm90 (when
  // compiled); every other backend carries its tag.
  for (const char* id : {"decode", "paged_decode", "append_decode", "attention_sinks"}) {
    const fd::Surface* s = fd::find_surface(id);
    ASSERT_NE(s, nullptr);
    EXPECT_TRUE(s->has_code) << id;
    EXPECT_EQ(s->reason_tag, "");
    EXPECT_TRUE(fd::surface_backend(*s, "reference_cpu")->applies) << id;
    EXPECT_TRUE(fd::surface_backend(*s, "reference_cuda")->applies) << id;
    EXPECT_EQ(fd::surface_backend(*s, "reference_cuda")->reason_tag, "") << id;
    EXPECT_EQ(fd::surface_backend(*s, "sm90")->applies, FLASHLANE_TEST_HAS_SM90 != 0) << id;
    EXPECT_EQ(fd::surface_backend(*s, "sm90")->reason_tag,
              FLASHLANE_TEST_HAS_SM90 ? "" : "sm90.not_compiled") << id;
    EXPECT_EQ(fd::surface_backend(*s, "sm100")->reason_tag, "sm100.not_implemented") << id;
  }
  const fd::Surface* dense = fd::find_surface("dense_fwd");
  ASSERT_NE(dense, nullptr);
  EXPECT_TRUE(dense->has_code);
  EXPECT_EQ(fd::surface_backend(*dense, "sm100")->reason_tag, "sm100.not_implemented");
  EXPECT_EQ(fd::surface_backend(*dense, "cudnn")->reason_tag, "cudnn.not_implemented");
  EXPECT_TRUE(fd::surface_backend(*dense, "reference_cpu")->applies);
  EXPECT_TRUE(fd::surface_backend(*dense, "reference_cuda")->applies);
#if FLASHLANE_TEST_HAS_SM90
  EXPECT_TRUE(fd::surface_backend(*dense, "sm90")->applies);
#else
  EXPECT_EQ(fd::surface_backend(*dense, "sm90")->reason_tag, "sm90.not_compiled");
#endif
  ASSERT_FALSE(dense->exclusions.empty());
  EXPECT_EQ(dense->exclusions[0].reason_tag, "surface.dtype_fp8_unsupported");
  EXPECT_EQ(fd::surfaces_json()["surfaces"].size(), ids.size());
}

TEST(KernelFingerprint, EveryBackendWithSourcesHasOneAndReceiptsCarryIt) {
  for (const char* b : {"sm90", "reference_cuda", "reference_cpu"}) {
    const std::string fp = fl::kernel_fingerprint(b);
    EXPECT_EQ(fp.size(), 16u) << b;
    EXPECT_EQ(fp.find_first_not_of("0123456789abcdef"), std::string::npos) << b << " " << fp;
  }
  EXPECT_NE(std::string(fl::kernel_fingerprint("sm90")), fl::kernel_fingerprint("reference_cpu"));
  EXPECT_EQ(std::string(fl::kernel_fingerprint("sm100")), "");
  EXPECT_EQ(std::string(fl::kernel_fingerprint(nullptr)), "");
  // A call that ran stamps the fingerprint of the backend that ran; a refusal stamps none.
  fl::test_support::HostProblemConfig cfg;
  cfg.seqlen_q = cfg.seqlen_k = 16;
  cfg.heads_q = cfg.heads_kv = 2;
  cfg.head_dim = 32;
  fl::test_support::HostProblem hp(cfg);
  ASSERT_TRUE(fl::forward(hp.problem(), {fl::Backend::kReferenceCpu, true}, nullptr).ok());
  EXPECT_EQ(fl::last_receipt().kernel_fingerprint, fl::kernel_fingerprint("reference_cpu"));
  fl::Receipt back;
  ASSERT_TRUE(fl::receipt_from_json(fl::receipt_to_json(fl::last_receipt()), &back));
  EXPECT_EQ(back, fl::last_receipt());
  EXPECT_FALSE(fl::forward(hp.problem(), {fl::Backend::kSm100, true}, nullptr).ok());
  EXPECT_EQ(fl::last_receipt().kernel_fingerprint, "");
  // Older receipts (no field) parse, as empty: stale.
  nlohmann::json older = nlohmann::json::parse(fl::receipt_to_json(back));
  older.erase("kernel_fingerprint");
  const std::string old = older.dump();
  ASSERT_TRUE(fl::receipt_from_json(old, &back)) << old;
  EXPECT_EQ(back.kernel_fingerprint, "");
}

TEST(KernelFingerprint, ProofRowsCarryItAndFreshnessNeedsIt) {
  fb::ProofRow r = row();
  const nlohmann::json j = fb::proof_row_to_json(r);
  EXPECT_EQ(j["environment"]["kernel_fingerprint"], fl::kernel_fingerprint("sm90"));
  EXPECT_EQ(j["surface"], "dense_fwd");
  fb::ProofRow back;
  std::string why;
  ASSERT_TRUE(fb::proof_row_from_json(j, &back, &why)) << why;
  EXPECT_EQ(back, r);
  const std::string current = fl::kernel_fingerprint("sm90");
  EXPECT_TRUE(fb::row_is_fresh(r, current, &why)) << why;
  r.environment.kernel_fingerprint.clear();
  EXPECT_FALSE(fb::row_is_fresh(r, current, &why));
  EXPECT_NE(why.find("no kernel fingerprint"), std::string::npos) << why;
  r.environment.kernel_fingerprint = "0000000000000000";
  EXPECT_FALSE(fb::row_is_fresh(r, current, &why));
  EXPECT_NE(why.find("!= current"), std::string::npos) << why;
  r = row();
  r.receipt.kernel_fingerprint = "1111111111111111";  // the receipt disagrees with the row
  EXPECT_FALSE(fb::row_is_fresh(r, current, &why));
  EXPECT_FALSE(fb::row_is_fresh(row(), "", &why));
}

// sm90's kernel families: each mode maps to the family that serves it, each family has its own
// fingerprint (the backend's sources without the other families' files), and a row is current
// with its family's fingerprint or the whole backend's, never with another family's.
TEST(KernelFingerprint, Sm90FamiliesAndTheirRows) {
  struct M { const char* backend; const char* mode; const char* family; };
  for (const M& m : {M{"sm90", "fwd", "sm90_fwd"}, M{"sm90", "varlen_fwd", "sm90_fwd"},
                     M{"sm90", "sinks_varlen_fwd", "sm90_fwd"}, M{"sm90", "cp_fwd", "sm90_fwd"},
                     M{"sm90", "bwd", "sm90_bwd"}, M{"sm90", "sinks_bwd", "sm90_bwd"},
                     M{"sm90", "decode", "sm90_decode"}, M{"sm90", "paged_decode", "sm90_decode"},
                     M{"sm90", "append_decode", "sm90_decode"}, M{"sm90", "short_train", "sm90"},
                     M{"sm90", "", "sm90"}, M{"reference_cuda", "bwd", "reference_cuda"},
                     M{"reference_cpu", "decode", "reference_cpu"}}) {
    EXPECT_EQ(std::string(fl::kernel_family(m.backend, m.mode)), m.family) << m.backend << " " << m.mode;
    EXPECT_EQ(std::string(fl::kernel_fingerprint(m.backend, m.mode)), fl::kernel_fingerprint(m.family));
  }
  EXPECT_EQ(std::string(fl::kernel_family(nullptr, nullptr)), "");
  std::set<std::string> distinct;
  for (const char* f : {"sm90", "sm90_fwd", "sm90_bwd", "sm90_decode"}) {
    const std::string fp = fl::kernel_fingerprint(f);
    EXPECT_EQ(fp.size(), 16u) << f;
    distinct.insert(fp);
  }
  EXPECT_EQ(distinct.size(), 4u) << "a family's file set is the whole backend's or another's";

  const auto fps = fb::build_kernel_fingerprints();
  ASSERT_EQ(fps.count("sm90_bwd"), 1u);
  std::string why;
  auto stamped = [](const std::string& mode, const char* fp) {
    fb::ProofRow r = row("sm90", mode);
    r.environment.kernel_fingerprint = r.receipt.kernel_fingerprint = fp;
    return r;
  };
  EXPECT_TRUE(fb::row_is_fresh(stamped("fwd", fl::kernel_fingerprint("sm90_fwd")), fps, &why)) << why;
  EXPECT_TRUE(fb::row_is_fresh(stamped("fwd", fl::kernel_fingerprint("sm90")), fps, &why)) << why;
  EXPECT_TRUE(fb::row_is_fresh(stamped("varlen_bwd", fl::kernel_fingerprint("sm90_bwd")), fps, &why))
      << why;
  EXPECT_FALSE(fb::row_is_fresh(stamped("fwd", fl::kernel_fingerprint("sm90_bwd")), fps, &why));
  EXPECT_NE(why.find("!= current"), std::string::npos) << why;
  EXPECT_FALSE(fb::row_is_fresh(stamped("decode", fl::kernel_fingerprint("sm90_fwd")), fps, &why));
  // The receipt's mode decides the family: a row claiming fwd whose receipt ran bwd.
  fb::ProofRow r = stamped("fwd", fl::kernel_fingerprint("sm90_fwd"));
  r.receipt.runtime_mode = "bwd";
  EXPECT_FALSE(fb::row_is_fresh(r, fps, &why));
  // A receipt of another family's fingerprint makes the row stale too.
  r = stamped("fwd", fl::kernel_fingerprint("sm90_fwd"));
  r.receipt.kernel_fingerprint = fl::kernel_fingerprint("sm90_decode");
  EXPECT_FALSE(fb::row_is_fresh(r, fps, &why));
  EXPECT_NE(why.find("receipt kernel fingerprint"), std::string::npos) << why;
  // Without the build's fingerprints nothing is current.
  EXPECT_FALSE(fb::row_is_fresh(stamped("fwd", fl::kernel_fingerprint("sm90_fwd")),
                                std::map<std::string, std::string>{}, &why));
}

TEST(KernelFingerprint, SurfacesOfRows) {
  fb::ProofRow r = row("sm90", "varlen_bwd");
  r.surface.clear();
  EXPECT_EQ(fb::surfaces_of_row(r), std::vector<std::string>{"varlen_bwd"});
  r.artifact_kind = "short_train";
  EXPECT_EQ(fb::surfaces_of_row(r), (std::vector<std::string>{"dense_fwd", "dense_bwd"}));
  r = row("sm90", "fwd");
  r.surface.clear();
  r.has_receipt = false;
  r.runtime_mode = "something";
  r.problem["varlen"] = true;
  EXPECT_EQ(fb::surfaces_of_row(r), std::vector<std::string>{"varlen_fwd"});
}

// ---------------------------------------------------------------------------------------------
// The gate's rules, with manifest baselines and fingerprints.

TEST(StatusGate, CurrentRowsPass) {
  const auto rows = grid_rows();
  const fb::GateResult g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(g.pass) << dump(g);
  EXPECT_EQ(g.stale_rows, 0);
}

TEST(StatusGate, StaleFingerprintFailsAndDoesNotCount) {
  auto rows = grid_rows();
  rows[0].environment.kernel_fingerprint = "0123456789abcdef";
  fb::GateResult g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_FALSE(g.pass);
  EXPECT_TRUE(has_rule(g, "stale_fingerprint", "!= current")) << dump(g);
  EXPECT_TRUE(has_rule(g, "required_not_counted", "stale")) << dump(g);
  EXPECT_EQ(g.stale_rows, 1);
  EXPECT_EQ(g.counting_rows, 1);
  rows[0].environment.kernel_fingerprint.clear();  // a row from before fingerprints
  g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(has_rule(g, "stale_fingerprint", "no kernel fingerprint")) << dump(g);
}

TEST(StatusGate, ThroughputElevenPercentBelowTheManifestBaselineFails) {
  auto rows = grid_rows();
  rows[1].metrics.tflops = 500.0 * 0.89;
  fb::GateResult g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(has_rule(g, "throughput", "config baseline")) << dump(g);
  EXPECT_FALSE(g.pass);
  rows[1].metrics.tflops = 500.0 * 0.91;  // within 10%
  g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(g.pass) << dump(g);
}

TEST(StatusGate, MemorySixPercentAboveTheManifestBaselineFails) {
  auto rows = grid_rows();
  rows[0].metrics.peak_memory_mib = 1060.0;
  fb::GateResult g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(has_rule(g, "memory", "config baseline")) << dump(g);
  rows[0].metrics.peak_memory_mib = 1040.0;
  g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(g.pass) << dump(g);
}

TEST(StatusGate, ManifestBaselinesApplyOnlyToTheirSurface) {
  const auto base = fb::gate_baselines(parse(small_manifest()));
  ASSERT_EQ(base.size(), 2u);
  EXPECT_EQ(base[0].match["surface"], "dense_fwd");
  fb::ProofRow r = row("sm90", "fwd", 128, false, 4096);
  EXPECT_TRUE(fb::selector_matches(base[0].match, r));
  r.surface = "varlen_fwd";
  EXPECT_FALSE(fb::selector_matches(base[0].match, r));
}

TEST(StatusGate, NanRowFails) {
  auto rows = grid_rows();
  rows[0].metrics.nan_count = 3;
  fb::compute_counts_for_status(&rows[0]);
  const fb::GateResult g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(has_rule(g, "non_finite", "nan_count=3")) << dump(g);
  EXPECT_TRUE(has_rule(g, "required_not_counted", "non-finite")) << dump(g);
}

TEST(StatusGate, PlannerOnlyRowFails) {
  auto rows = grid_rows();
  for (auto& r : rows) {
    r.proof_class = "planner";
    r.has_receipt = false;
    r.status = "backend_inapplicable [sm90.requires_sm90]";
    fb::compute_counts_for_status(&r);
  }
  const fb::GateResult g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(has_rule(g, "required_not_counted", "proof_class is planner")) << dump(g);
  EXPECT_TRUE(has_rule(g, "no_counting_row")) << dump(g);
  EXPECT_TRUE(has_rule(g, "claim_not_executed")) << dump(g);
}

TEST(StatusGate, RequestedBackendNotExecutedFails) {
  auto rows = grid_rows();
  rows[0].receipt.actual_backend = "reference_cuda";  // a fallback
  rows[0].receipt.kernel_fingerprint = fl::kernel_fingerprint("reference_cuda");
  fb::compute_counts_for_status(&rows[0]);
  rows[1].receipt.actual_backend.clear();  // nothing ran
  rows[1].receipt.status = "backend_inapplicable";
  fb::compute_counts_for_status(&rows[1]);
  const fb::GateResult g = fb::run_gate(rows, gate_for(rows), {});
  EXPECT_TRUE(has_rule(g, "required_not_counted", "requested sm90 but reference_cuda ran")) << dump(g);
  EXPECT_TRUE(has_rule(g, "mode_not_executed", "nothing ran")) << dump(g);
  EXPECT_FALSE(g.pass);
}

TEST(StatusGate, MissingRequiredRowFails) {
  auto rows = grid_rows();
  const fb::GateConfig c = gate_for(rows);
  rows.pop_back();
  const fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "required_missing", "no row matches")) << dump(g);
}

TEST(StatusGate, DecodeClaimWithoutDecodeRowsFails) {
  auto rows = grid_rows();
  fb::GateConfig c = gate_for(rows);
  c.claims = {"fwd", "decode"};
  fb::GateResult g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "claim_not_executed")) << dump(g);
  bool decode = false;
  for (const auto& v : g.violations) decode = decode || (v.rule == "claim_not_executed" && v.key == "decode");
  EXPECT_TRUE(decode) << dump(g);
  // A row that says decode while its receipt ran the forward does not execute decode.
  rows[0].runtime_mode = "decode";
  g = fb::run_gate(rows, c, {});
  EXPECT_TRUE(has_rule(g, "mode_not_executed", "receipt ran fwd")) << dump(g);
}

TEST(StatusGate, FailedTwoStepTrainFails) {
  fb::ProofRow r = row();
  r.artifact_kind = "short_train";
  r.preset = "real_work.steps2";
  r.metrics.tflops.reset();
  r.metrics.errors = nlohmann::json::array(
      {{{"criterion", "losses_finite"}, {"value", 0}, {"limit", 0}, {"pass", true}},
       {{"criterion", "final_loss_ratio"}, {"value", 1.2}, {"limit", 1.05}, {"pass", false}}});
  r.metrics.validation_passed = false;
  fb::compute_counts_for_status(&r);
  fb::GateConfig c;
  c.current_fingerprints = fb::build_kernel_fingerprints();
  const fb::GateResult g = fb::run_gate({r}, c, {});
  EXPECT_TRUE(has_rule(g, "train_failed", "final_loss_ratio")) << dump(g);
}

// ---------------------------------------------------------------------------------------------
// The manifest.

TEST(RolloutManifest, StrictParsing) {
  fb::Manifest m;
  std::string why;
  nlohmann::json j = small_manifest();
  EXPECT_TRUE(fb::manifest_from_json(j, &m, &why)) << why;
  EXPECT_EQ(m.surfaces[0].rungs[2].requires_[0].backend, "sm90");  // defaults to the target
  j["surfaces"][0]["rungs"][2]["requires"][0]["min_row"] = 1;  // a typo
  EXPECT_FALSE(fb::manifest_from_json(j, &m, &why));
  EXPECT_NE(why.find("unknown key 'min_row'"), std::string::npos) << why;
  j = small_manifest();
  j["surfaces"][0]["surface"] = "dense_forward";
  EXPECT_FALSE(fb::manifest_from_json(j, &m, &why));
  EXPECT_NE(why.find("unknown surface"), std::string::npos) << why;
  j = small_manifest();
  j["schema"] = "flashlane.rollout_manifest/0";
  EXPECT_FALSE(fb::manifest_from_json(j, &m, &why));
  j = small_manifest();
  j["surfaces"][0]["rungs"][0]["requires"][0]["kind"] = "vibes";
  EXPECT_FALSE(fb::manifest_from_json(j, &m, &why));
}

TEST(RolloutManifest, CheckedInManifestCoversTheCatalogAndItsBaselinesAreTheReceipts) {
  fb::Manifest m;
  std::string why;
  ASSERT_TRUE(fb::load_manifest(kSrc + "/bench/rollout_manifest.json", &m, &why)) << why;
  ASSERT_EQ(m.surfaces.size(), fd::surface_catalog().size());
  const std::vector<std::string> ladder = {"L0", "L1", "R1", "R2", "R3", "R4"};
  for (const auto& s : m.surfaces) {
    ASSERT_GE(s.rungs.size(), ladder.size() + 1) << s.surface;
    for (size_t i = 0; i < ladder.size(); ++i) EXPECT_EQ(s.rungs[i].id, ladder[i]) << s.surface;
    EXPECT_EQ(s.rungs.back().id, "R7") << s.surface;
    EXPECT_EQ(s.rungs.back().requires_[0].kind, "gate") << s.surface;
  }
  int checked = 0;
  for (const auto& s : m.surfaces) {
    if (s.baselines.empty()) continue;
    std::vector<fb::ProofRow> rows;
    ASSERT_TRUE(fb::read_proof_rows(kSrc + "/" + s.baseline_source, &rows, &why)) << why;
    for (const auto& b : s.baselines) {
      int hits = 0;
      for (const auto& r : rows) {
        if (!r.counts_for_status || !fb::selector_matches(b.match, r)) continue;
        ++hits;
        EXPECT_NEAR(*b.tflops, *r.metrics.tflops, 1e-3) << b.match.dump();
        EXPECT_NEAR(*b.peak_memory_mib, *r.metrics.peak_memory_mib, 1e-3) << b.match.dump();
      }
      EXPECT_EQ(hits, 1) << s.surface << " " << b.match.dump();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 144);  // the default preset: sm90 and reference_cuda, fwd and bwd, 36 cells each
}

// ---------------------------------------------------------------------------------------------
// Status.

TEST(StatusTest, CurrentReceiptsClimbTheLadderAndGoGreen) {
  auto rows = grid_rows();
  rows.push_back(row("reference_cuda", "fwd", 128, false, 4096));
  const fb::StatusReport rep = status_of(rows);
  const auto& s = surface(rep, "dense_fwd");
  EXPECT_EQ(s.rung, "R7");
  EXPECT_EQ(s.next_rung, "");
  EXPECT_EQ(cell_of(rep, "dense_fwd", "sm90").light, "green");
  EXPECT_EQ(cell_of(rep, "dense_fwd", "reference_cuda").light, "green");
  EXPECT_EQ(cell_of(rep, "dense_fwd", "reference_cpu").light, "yellow");
  EXPECT_EQ(cell_of(rep, "dense_fwd", "sm100").light, "red");
  EXPECT_EQ(cell_of(rep, "dense_fwd", "sm100").reason_tag, "sm100.not_implemented");
  EXPECT_EQ(cell_of(rep, "dense_fwd", "cudnn").reason_tag, "cudnn.not_implemented");
  const nlohmann::json j = fb::status_to_json(rep, true);
  EXPECT_EQ(j["schema"], "flashlane.status/1");
  EXPECT_EQ(j["surfaces"][0]["rung"], "R7");
  EXPECT_TRUE(j.contains("fingerprints"));
  EXPECT_FALSE(fb::status_to_json(rep, false).contains("fingerprints"));
}

TEST(StatusTest, NoReceiptsIsYellowOnL1WithR1Owed) {
  const fb::StatusReport rep = status_of({});
  const auto& s = surface(rep, "dense_fwd");
  EXPECT_EQ(s.rung, "L1");
  EXPECT_EQ(s.next_rung, "R1");
  ASSERT_EQ(s.next_missing.size(), 1u);
  EXPECT_NE(s.next_missing[0].find("0 of 1 counting receipts"), std::string::npos) << s.next_missing[0];
  const auto& c = cell_of(rep, "dense_fwd", "sm90");
  EXPECT_EQ(c.light, "yellow");
  ASSERT_FALSE(c.owed.empty());
  EXPECT_EQ(c.owed[0].rfind("R1", 0), 0u) << c.owed[0];
}

TEST(StatusTest, SurfacesWithoutCodeAreRed) {
  auto rows = grid_rows();
  const fb::StatusReport rep = status_of(rows);
  for (const auto& c : surface(rep, "context_parallel").cells) {
    EXPECT_EQ(c.light, "red") << c.backend;
    EXPECT_FALSE(c.reason_tag.empty()) << c.backend;
  }
  // Decode and sinks: code on reference_cpu, reference_cuda and sm90; without receipts they are
  // not red (sm90: yellow, code without proof); the backends without the code are red with
  // their tag.
  for (const char* id : {"decode", "paged_decode", "append_decode", "attention_sinks"})
    for (const auto& c : surface(rep, id).cells) {
      if (c.backend == "reference_cpu" || c.backend == "reference_cuda") {
        EXPECT_NE(c.light, "red") << id << " " << c.backend;
        EXPECT_EQ(c.reason_tag, "") << id << " " << c.backend;
        continue;
      }
      if (c.backend == "sm90" && FLASHLANE_TEST_HAS_SM90) {
        EXPECT_EQ(c.light, "yellow") << id;
        continue;
      }
      EXPECT_EQ(c.light, "red") << id << " " << c.backend;
      EXPECT_FALSE(c.reason_tag.empty()) << id << " " << c.backend;
    }
  EXPECT_EQ(cell_of(rep, "decode", "sm100").reason_tag, "sm100.not_implemented");
}

TEST(StatusTest, StaleReceiptsAreShownButDoNotCount) {
  auto rows = grid_rows();
  for (auto& r : rows) r.environment.kernel_fingerprint = "0123456789abcdef";
  const fb::StatusReport rep = status_of(rows);
  const auto& s = surface(rep, "dense_fwd");
  EXPECT_EQ(s.rung, "L1");
  EXPECT_EQ(s.rung_if_current, "R7");  // shown, not counted
  const auto& c = cell_of(rep, "dense_fwd", "sm90");
  EXPECT_EQ(c.light, "yellow");
  EXPECT_EQ(c.stale_rows, 2);
  EXPECT_EQ(c.fresh_rows, 0);
  ASSERT_EQ(rep.files.size(), 1u);
  EXPECT_EQ(rep.files[0].stale, 2);
  EXPECT_EQ(rep.files[0].counting, 0);
  EXPECT_NE(s.next_missing[0].find("2 stale rows would match"), std::string::npos) << s.next_missing[0];
}

TEST(StatusTest, EveryNonProofRowKeepsTheCellFromGreen) {
  struct Case {
    const char* what;
    void (*spoil)(fb::ProofRow*);
  };
  const Case cases[] = {
      {"planner", [](fb::ProofRow* r) { r->proof_class = "planner"; r->has_receipt = false; }},
      {"not executed", [](fb::ProofRow* r) { r->receipt.actual_backend.clear(); }},
      {"nan", [](fb::ProofRow* r) { r->metrics.nan_count = 1; }},
      {"stale", [](fb::ProofRow* r) { r->environment.kernel_fingerprint = "ffffffffffffffff"; }},
      {"no gpu", [](fb::ProofRow* r) { r->environment.sm = 0; r->gpu_lane.ran = false; }},
      {"not hopper", [](fb::ProofRow* r) { r->environment.sm = 80; r->receipt.sm = 80; }},
      {"validation failed", [](fb::ProofRow* r) { r->metrics.validation_passed = false; }},
  };
  for (const Case& c : cases) {
    auto rows = grid_rows();
    for (auto& r : rows) {
      c.spoil(&r);
      fb::compute_counts_for_status(&r);
    }
    const fb::StatusReport rep = status_of(rows);
    EXPECT_EQ(cell_of(rep, "dense_fwd", "sm90").light, "yellow") << c.what;
    EXPECT_EQ(surface(rep, "dense_fwd").rung, "L1") << c.what;
  }
}

TEST(StatusTest, MissingRequiredRowStopsTheLadderAtR1) {
  auto rows = grid_rows();
  rows.pop_back();
  const fb::StatusReport rep = status_of(rows);
  const auto& s = surface(rep, "dense_fwd");
  EXPECT_EQ(s.rung, "R1");
  EXPECT_EQ(s.next_rung, "R2");
  EXPECT_NE(s.next_missing[0].find("1 of 2 required rows"), std::string::npos) << s.next_missing[0];
  EXPECT_EQ(cell_of(rep, "dense_fwd", "sm90").light, "green");  // R1 stands on current receipts
}

TEST(StatusTest, RegressionBelowTheBaselineStopsTheLadderBeforeR7) {
  auto rows = grid_rows();
  rows[0].metrics.tflops = 500.0 * 0.89;
  fb::StatusReport rep = status_of(rows);
  EXPECT_EQ(surface(rep, "dense_fwd").rung, "R2");
  EXPECT_NE(surface(rep, "dense_fwd").next_missing[0].find("throughput"), std::string::npos)
      << surface(rep, "dense_fwd").next_missing[0];
  rows = grid_rows();
  rows[1].metrics.peak_memory_mib = 1060.0;
  rep = status_of(rows);
  EXPECT_EQ(surface(rep, "dense_fwd").rung, "R2");
  EXPECT_NE(surface(rep, "dense_fwd").next_missing[0].find("memory"), std::string::npos);
}

TEST(StatusTest, FallbackReceiptsAreNeverGreenForTheRequestedBackend) {
  // Every row asked for sm90; reference_cuda served each one (valid, on an H200, current kernels).
  auto rows = grid_rows();
  for (auto& r : rows) {
    r.receipt.actual_backend = "reference_cuda";
    r.receipt.variant = "reference_cuda_fp32acc";
    r.receipt.kernel_fingerprint = fl::kernel_fingerprint("reference_cuda");
    fb::compute_counts_for_status(&r);
    ASSERT_FALSE(r.counts_for_status);
  }
  // Even a forged counts_for_status must not help.
  rows[0].counts_for_status = true;
  const fb::StatusReport rep = status_of(rows);
  const auto& sm90 = cell_of(rep, "dense_fwd", "sm90");
  EXPECT_NE(sm90.light, "green");
  EXPECT_EQ(sm90.fallback_rows, 2);
  EXPECT_EQ(surface(rep, "dense_fwd").rung, "L1");
  // Nor do they make the fallback backend green: it was not requested.
  EXPECT_NE(cell_of(rep, "dense_fwd", "reference_cuda").light, "green");
  EXPECT_EQ(cell_of(rep, "dense_fwd", "reference_cuda").fresh_rows, 0);
}

// The checked-in receipts: rows written before receipts carried a kernel fingerprint never count;
// rows with a fingerprint count only when it is this build's, for their backend.
TEST(StatusTest, CheckedInReceiptsCountOnlyWithTheCurrentFingerprint) {
  std::vector<fb::SourcedRow> rows;
  std::vector<fb::ReceiptFile> files;
  std::string why;
  ASSERT_TRUE(fb::read_receipts_dir(kSrc + "/bench/results", &rows, &files, &why)) << why;
  ASSERT_FALSE(rows.empty());
  for (const auto& f : files) EXPECT_EQ(f.error, "") << f.path;
  fb::Manifest m;
  ASSERT_TRUE(fb::load_manifest(kSrc + "/bench/rollout_manifest.json", &m, &why)) << why;
  const auto fingerprints = fb::build_kernel_fingerprints();
  const fb::StatusReport rep = fb::compute_status(m, rows, files, fingerprints);
  int64_t without = 0;
  for (const auto& r : rows) {
    if (r.row.counts_for_status && r.row.environment.kernel_fingerprint.empty()) ++without;
  }
  int64_t stale = 0, counting = 0;
  for (const auto& f : rep.files) {
    stale += f.stale;
    counting += f.counting;
    if (f.path.find("2026-12-01-h200-default-preset") != std::string::npos) {
      EXPECT_EQ(f.counting, 0) << "written before fingerprints: " << f.path;
      EXPECT_EQ(f.stale, f.rows) << f.path;
    }
  }
  EXPECT_GT(without, 0);
  EXPECT_GE(stale, without);
  // Every counting row carries this build's fingerprint of the backend that ran (the whole
  // backend's or that of the kernel family of its mode).
  int64_t current = 0;
  for (const auto& r : rows) {
    if (r.row.counts_for_status && r.row.has_receipt &&
        r.row.receipt.actual_backend == r.row.requested_backend &&
        fb::row_is_fresh(r.row, fingerprints, nullptr)) {
      ++current;
    }
  }
  EXPECT_LE(counting, current);
  // The archive is not read.
  for (const auto& f : rep.files) EXPECT_EQ(f.path.find("archive"), std::string::npos) << f.path;
}

TEST(StatusTest, UnreadableReceiptFilesProveNothing) {
  const auto dir = std::filesystem::temp_directory_path() / ("flashlane_status_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "archive");
  std::ofstream(dir / "bad.jsonl") << "{\"schema\": 1}\n";
  std::ofstream(dir / "archive" / "old.jsonl") << fb::proof_row_to_json(row()).dump() << "\n";
  std::vector<fb::SourcedRow> rows;
  std::vector<fb::ReceiptFile> files;
  std::string why;
  ASSERT_TRUE(fb::read_receipts_dir(dir.string(), &rows, &files, &why)) << why;
  ASSERT_EQ(files.size(), 1u);
  EXPECT_NE(files[0].error, "");
  EXPECT_TRUE(rows.empty());
  EXPECT_FALSE(fb::read_receipts_dir((dir / "missing").string(), &rows, &files, &why));
  std::filesystem::remove_all(dir);
}

TEST(StatusDoc, CheckedInStatusPageIsWhatTheToolPrints) {
#if !FLASHLANE_TEST_HAS_SM90
  GTEST_SKIP() << "docs/STATUS.md describes a build with the sm90 kernels";
#endif
  // The page is generated without fingerprint values and judges the checked-in receipts against
  // the fingerprints computed from the checked-in sources: it changes when what counts changes
  // (a receipt of the current kernels appears, or a kernel edit makes one stale), not otherwise.
  const std::string cmd = "cd '" + kSrc + "' && '" + FLASHLANE_TOOL_PATH +
                          "' status --markdown --receipts bench/results --manifest "
                          "bench/rollout_manifest.json 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int st = pclose(p);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << out;
  std::ifstream f(kSrc + "/docs/STATUS.md");
  std::stringstream page;
  page << f.rdbuf();
  EXPECT_EQ(page.str(), out)
      << "docs/STATUS.md is stale: regenerate it with `build/tools/flashlane status --markdown "
         "--receipts bench/results --manifest bench/rollout_manifest.json > docs/STATUS.md`";
}
