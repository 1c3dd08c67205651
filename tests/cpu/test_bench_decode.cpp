// tests/cpu/test_bench_decode.cpp: the decode preset's host-side pieces (src/bench/decode.h):
// the grid, its byte formula, the elementwise check and its JSON figures, the page permutation,
// decode rows through proof-row JSON and the gate (bound figures instead of FlashAttention's
// rule, page size in the row key), and the seeded fill's host mirror.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "bench/decode.h"
#include "bench/device_fill.h"
#include "bench/gate.h"
#include "bench/proof.h"
#include "support/gate_checks.h"

namespace fl = flashlane;
namespace fb = flashlane::bench;
using flashlane::test_support::dump;
using flashlane::test_support::has_rule;

namespace {

/// A counting decode row: sm90 ran on an H200, the elementwise check passed.
fb::ProofRow decode_row(const fb::DecodeCell& c) {
  fb::ProofRow r;
  r.proof_class = "execute";
  r.preset = "decode";
  r.requested_backend = "sm90";
  r.direction = "decode";
  r.runtime_mode = c.paged() ? "paged_decode" : "decode";
  r.surface = r.runtime_mode;
  r.environment.device = "NVIDIA H200";
  r.environment.sm = 90;
  r.gpu_lane.ran = true;
  r.problem = fb::decode_problem_json(c);
  r.has_receipt = true;
  r.receipt.requested_backend = r.receipt.actual_backend = "sm90";
  r.receipt.runtime_mode = r.runtime_mode;
  r.receipt.sm = 90;
  r.receipt.status = "ok";
  r.receipt.variant = "decode";
  r.metrics.median_ms = 0.05;
  r.metrics.gbps = c.bytes_moved() / 0.05e-3 / 1e9;
  r.metrics.copy_gbps = 4266;
  r.metrics.tflops = 1.0;
  r.metrics.check = "pass";
  r.metrics.validation_ran = r.metrics.validation_passed = true;
  r.metrics.validation_scope.kind = "full";
  const std::vector<double> ref = {0.5, -0.25, 2.0}, out = {0.501, -0.2505, 2.01};
  const fb::BoundFigure o = fb::compare_decode_o(out, ref);
  const fb::BoundFigure l = fb::compare_decode_lse({1.0, 2.0}, {1.0002, 2.0});
  r.metrics.errors = nlohmann::json::array({fb::bound_figure_to_json(o), fb::bound_figure_to_json(l)});
  r.metrics.max_abs_diff = o.max_abs_diff;
  r.metrics.checked_tensor = "o";
  fb::compute_counts_for_status(&r);
  return r;
}

}  // namespace

TEST(BenchDecode, GridIsTheBriefsCrossProduct) {
  const auto g = fb::decode_grid();
  // 6 head_dim 64 cells, then 5 batches x 5 cache lengths x 3 layouts x 2 GQA at head_dim 128.
  ASSERT_EQ(g.size(), 156u);
  std::set<std::string> names;
  for (size_t i = 0; i < g.size(); ++i) {
    const auto& c = g[i];
    names.insert(c.describe());
    EXPECT_EQ(c.head_dim, i < 6 ? 64 : 128);
    EXPECT_EQ(c.heads_kv, 8);
    EXPECT_EQ(c.seqlen_q, 1);
    EXPECT_EQ(c.dtype, fl::DType::kBFloat16);
    EXPECT_TRUE(c.page_size == 0 || c.page_size == 16 || c.page_size == 64);
    // The paged pool is exactly the dense buffer's memory: one fill serves every layout.
    EXPECT_EQ(c.cache_rows(), c.batch * c.cache_len);
  }
  EXPECT_EQ(names.size(), 156u);
  // Cells of one (batch, cache length) are adjacent and share the K/V seed.
  for (size_t i = 1; i < g.size(); ++i)
    if (g[i].batch == g[i - 1].batch && g[i].cache_len == g[i - 1].cache_len)
      EXPECT_EQ(g[i].kv_seed(), g[i - 1].kv_seed());
  EXPECT_EQ(fb::decode_cpu_grid().size(), 2u);
}

TEST(BenchDecode, BytesFollowTheFormula) {
  fb::DecodeCell c;
  c.batch = 16;
  c.cache_len = 8192;
  c.heads_q = 32;
  c.heads_kv = 8;
  c.head_dim = 128;
  // K + V: 16 x 8192 x 8 heads x (128 + 128) x 2 bytes; q + o: 16 x 32 x (128 + 128) x 2.
  EXPECT_DOUBLE_EQ(c.kv_read_bytes(), 16.0 * 8192 * 8 * 256 * 2);
  EXPECT_DOUBLE_EQ(c.bytes_moved(), 16.0 * 8192 * 8 * 256 * 2 + 16.0 * 32 * 256 * 2);
  EXPECT_DOUBLE_EQ(c.flops(), 4.0 * 16 * 32 * 8192 * 128);
  c.page_size = 64;
  EXPECT_EQ(c.layout(), "paged64");
  EXPECT_EQ(c.pages_per_seq(), 128);
  EXPECT_EQ(c.num_pages(), 16 * 128);
  EXPECT_DOUBLE_EQ(c.kv_alloc_bytes(), c.kv_read_bytes());
  const nlohmann::json p = fb::decode_problem_json(c);
  EXPECT_EQ(p["layout"], "paged64");
  EXPECT_EQ(p["page_size"], 64);
  EXPECT_EQ(p["seqlen_k"], 8192);
  EXPECT_EQ(p["cache_len"], 8192);
  EXPECT_DOUBLE_EQ(p["bytes_moved"].get<double>(), c.bytes_moved());
}

TEST(BenchDecode, ElementwiseBound) {
  // Bound 2^-7 max(1, |ref|) + 1e-3: 0.0088125 at |ref| <= 1, 0.0166 at |ref| = 2.
  fb::BoundFigure f = fb::compare_decode_o({0.0088}, {0.0});
  EXPECT_TRUE(f.pass);
  EXPECT_NEAR(f.max_ratio, 0.0088 / (1.0 / 128 + 1e-3), 1e-12);
  EXPECT_FALSE(fb::compare_decode_o({0.0089}, {0.0}).pass);
  EXPECT_TRUE(fb::compare_decode_o({2.0165}, {2.0}).pass);
  EXPECT_FALSE(fb::compare_decode_o({2.0167}, {2.0}).pass);
  f = fb::compare_decode_o({std::nan(""), 0.0}, {0.0, 0.0});
  EXPECT_FALSE(f.pass);
  EXPECT_EQ(f.nan_count, 1);
  EXPECT_FALSE(fb::compare_decode_o({0.0}, {0.0, 0.0}).pass);  // sizes differ
  EXPECT_FALSE(fb::compare_decode_o({}, {}).pass);             // nothing compared
  const double ninf = -std::numeric_limits<double>::infinity();
  EXPECT_TRUE(fb::compare_decode_lse({1.0009, ninf}, {1.0, ninf}).pass);
  EXPECT_FALSE(fb::compare_decode_lse({1.0011}, {1.0}).pass);
  EXPECT_FALSE(fb::compare_decode_lse({ninf}, {1.0}).pass);
  const nlohmann::json j = fb::bound_figure_to_json(fb::compare_decode_lse({1.0011}, {1.0}));
  EXPECT_EQ(j["tensor"], "lse");
  EXPECT_FALSE(j["pass"].get<bool>());
  EXPECT_GT(j["max_ratio"].get<double>(), 1.0);
  EXPECT_FALSE(j.contains("ref_max_abs_diff"));
}

TEST(BenchDecode, PagePermutationIsASeededPermutation) {
  const auto p = fb::page_permutation(1000, 7);
  std::set<int32_t> s(p.begin(), p.end());
  EXPECT_EQ(s.size(), 1000u);
  EXPECT_EQ(*s.begin(), 0);
  EXPECT_EQ(*s.rbegin(), 999);
  EXPECT_EQ(p, fb::page_permutation(1000, 7));
  EXPECT_NE(p, fb::page_permutation(1000, 8));
  int fixed = 0;
  for (int i = 0; i < 1000; ++i) fixed += p[i] == i ? 1 : 0;
  EXPECT_LT(fixed, 20);  // a real gather, not the identity
}

TEST(BenchDecode, HostMirrorOfTheFillIsNormal) {
  double sum = 0, sq = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double x = fb::normal_at(42, i);
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.05);
  EXPECT_NEAR(sq / n, 1.0, 0.05);
  EXPECT_EQ(fb::normal_at(42, 5), fb::normal_at(42, 5));
  EXPECT_NE(fb::normal_at(42, 5), fb::normal_at(43, 5));
}

TEST(BenchDecode, DecodeRowsRoundTripAndPassTheGate) {
  fb::DecodeCell c;
  c.batch = 16;
  c.cache_len = 8192;
  c.page_size = 16;
  const fb::ProofRow r = decode_row(c);
  ASSERT_TRUE(r.counts_for_status) << r.not_counted_reason;
  const nlohmann::json j = fb::proof_row_to_json(r);
  EXPECT_EQ(j["direction"], "decode");
  EXPECT_EQ(j["metrics"]["check"], "pass");
  EXPECT_TRUE(j["metrics"]["gbps"].is_number());
  EXPECT_EQ(j["metrics"]["copy_gbps"], 4266);
  fb::ProofRow back;
  std::string why;
  ASSERT_TRUE(fb::proof_row_from_json(j, &back, &why)) << why;
  EXPECT_EQ(back, r);
  // Rows of other presets are written as before: no decode fields.
  fb::ProofRow plain = r;
  plain.metrics.gbps.reset();
  plain.metrics.copy_gbps.reset();
  plain.metrics.check.clear();
  const nlohmann::json pj = fb::proof_row_to_json(plain);
  EXPECT_FALSE(pj["metrics"].contains("gbps"));
  EXPECT_FALSE(pj["metrics"].contains("check"));

  // The page size is part of the row key: paged16 and paged64 are different baselines.
  fb::DecodeCell c64 = c;
  c64.page_size = 64;
  EXPECT_NE(fb::row_key(r), fb::row_key(decode_row(c64)));
  EXPECT_NE(fb::row_key(r).find("page16"), std::string::npos) << fb::row_key(r);
  EXPECT_EQ(fb::row_selector_fields(r)["page_size"], 16);

  fb::GateConfig config;
  config.required = {{{"runtime_mode", "paged_decode"}, {"backend", "sm90"}, {"batch", 16}, {"page_size", 16}}};
  config.claims = {"decode", "paged"};
  const fb::GateResult g = fb::run_gate({r}, config, {});
  EXPECT_TRUE(g.pass) << dump(g);
}

TEST(BenchDecode, GateFailsABoundFigureAboveOne) {
  fb::DecodeCell c;
  fb::ProofRow r = decode_row(c);
  r.metrics.errors[0]["max_ratio"] = 1.5;
  fb::GateResult g = fb::run_gate({r}, {}, {});
  EXPECT_TRUE(has_rule(g, "error_bound")) << dump(g);
  // No figures at all: a counting row without error figures.
  r = decode_row(c);
  r.metrics.errors = nlohmann::json::array();
  g = fb::run_gate({r}, {}, {});
  EXPECT_TRUE(has_rule(g, "error_bound")) << dump(g);
  // A non-finite ratio (written as null) fails too.
  r = decode_row(c);
  r.metrics.errors[1]["max_ratio"] = nullptr;
  g = fb::run_gate({r}, {}, {});
  EXPECT_TRUE(has_rule(g, "error_bound")) << dump(g);
  // Non-finite bandwidth is caught like any metric.
  r = decode_row(c);
  r.metrics.gbps = std::nan("");
  g = fb::run_gate({r}, {}, {});
  EXPECT_TRUE(has_rule(g, "non_finite")) << dump(g);
}
