// tests/cpu/test_bench_sampling.cpp: sampled validation of large bench problems
// (src/bench/sampling.h): how many slices and which (deterministic for a seed, within bounds,
// first and last included, unique, whole GQA groups), the sub-problem views (pointer offsets,
// shapes and strides for bshd, the GQA kv head), the sampled references against the slices of
// the full references, the check end to end with reference_cpu as "backend" and reference, the
// validation_scope field through the proof-row JSON and the gate, and `flashlane bench
// --full-validation-max-seqlen` run as a user would.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "bench/gate.h"
#include "bench/grid.h"
#include "bench/harness.h"
#include "bench/proof.h"
#include "bench/sampling.h"
#include "flashlane/flashlane.h"
#include "support/gate_checks.h"

namespace fl = flashlane;
namespace fb = flashlane::bench;
using flashlane::test_support::dump;
using flashlane::test_support::has_rule;

namespace {

fb::ProblemSpec canonical(int64_t head_dim, bool causal, int64_t seqlen) {
  for (const auto& s : fb::canonical_grid())
    if (s.head_dim == head_dim && s.seqlen_q == seqlen && (s.mask != fl::MaskType::kNoMask) == causal)
      return s;
  ADD_FAILURE() << "no canonical cell d" << head_dim << " s" << seqlen;
  return {};
}

fb::ProblemSpec small(int64_t batch, int64_t seqlen_q, int64_t seqlen_k, int64_t heads_q,
                      int64_t heads_kv, int64_t head_dim, fl::MaskType mask, uint64_t seed) {
  fb::ProblemSpec s;
  s.batch = batch;
  s.seqlen_q = seqlen_q;
  s.seqlen_k = seqlen_k;
  s.heads_q = heads_q;
  s.heads_kv = heads_kv;
  s.head_dim = head_dim;
  s.head_dim_v = head_dim;
  s.dtype = fl::DType::kBFloat16;
  s.mask = mask;
  s.seed = seed;
  return s;
}

void expect_valid_selection(const std::vector<fb::SliceUnit>& units, int64_t batch,
                            int64_t heads_q, int64_t heads_kv, const std::string& what) {
  const int64_t group = heads_q / heads_kv;
  ASSERT_FALSE(units.empty()) << what;
  std::set<std::pair<int64_t, int64_t>> seen;
  for (size_t i = 0; i < units.size(); ++i) {
    const auto& u = units[i];
    EXPECT_GE(u.batch, 0) << what;
    EXPECT_LT(u.batch, batch) << what;
    EXPECT_EQ(u.heads, group) << what;            // whole GQA groups
    EXPECT_EQ(u.head % group, 0) << what;
    EXPECT_GE(u.head, 0) << what;
    EXPECT_LE(u.head + u.heads, heads_q) << what;
    EXPECT_TRUE(seen.insert({u.batch, u.head}).second) << what << ": repeated unit";
    if (i > 0) {
      const auto& p = units[i - 1];
      EXPECT_TRUE(p.batch < u.batch || (p.batch == u.batch && p.head < u.head)) << what << ": not sorted";
    }
  }
  // First (batch 0, head 0) and last (batch - 1, last group) included.
  EXPECT_EQ(units.front().batch, 0) << what;
  EXPECT_EQ(units.front().head, 0) << what;
  EXPECT_EQ(units.back().batch, batch - 1) << what;
  EXPECT_EQ(units.back().head, heads_q - group) << what;
}

struct Result {
  int code = -1;
  std::string out;
};

Result run_tool(const std::string& args, const std::string& cwd) {
  Result r;
  if (!std::filesystem::exists(FLASHLANE_TOOL_PATH)) {
    r.out = std::string("the flashlane tool is not built: ") + FLASHLANE_TOOL_PATH;
    return r;
  }
  const std::string cmd = "cd '" + cwd + "' && '" + FLASHLANE_TOOL_PATH + "' " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string temp_dir(const std::string& name) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("flashlane_test_sampling_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

const char* ptr_at(const fl::TensorView& t, int64_t elements) {
  return static_cast<const char*>(t.data) + elements * fl::dtype_size(t.dtype);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// How many slices

TEST(SamplingTest, SliceCountBoundsTheReferenceWorkOfTheCanonicalGrid) {
  const int64_t T = fb::kDefaultFullValidationMaxSeqlen;
  for (const auto& s : fb::canonical_grid()) {
    const int64_t total = s.batch * s.heads_q;
    const int64_t n = fb::sampled_slice_count(s, T);
    if (s.seqlen_q <= T) {
      EXPECT_EQ(n, total) << s.describe();  // up to 4k: every element
      EXPECT_FALSE(fb::plan_validation(s, T).sampled) << s.describe();
      continue;
    }
    EXPECT_LT(n, total) << s.describe();
    // The sampled reference computes at most the score pairs of a full 4k cell (same tokens).
    const double pairs = static_cast<double>(n) * s.seqlen_q * s.seqlen_k;
    EXPECT_LE(pairs, 16384.0 * s.heads_q * T) << s.describe();
    // ... and at least half of them (the budget is used, not wasted), never fewer than 2 slices.
    EXPECT_GE(pairs, 0.5 * 16384.0 * s.heads_q * T) << s.describe();
    EXPECT_GE(n, 2) << s.describe();
  }
  // The canonical numbers (bench/README.md): 8k cells check heads_q of 2 * heads_q slices, 16k
  // cells heads_q / 4 of heads_q.
  EXPECT_EQ(fb::sampled_slice_count(canonical(64, false, 8192), T), 32);
  EXPECT_EQ(fb::sampled_slice_count(canonical(64, true, 16384), T), 8);
  EXPECT_EQ(fb::sampled_slice_count(canonical(128, false, 16384), T), 4);
  EXPECT_EQ(fb::sampled_slice_count(canonical(256, false, 8192), T), 8);
  EXPECT_EQ(fb::sampled_slice_count(canonical(256, true, 16384), T), 2);
}

TEST(SamplingTest, SliceCountEdgeCases) {
  const fb::ProblemSpec big = canonical(128, false, 16384);
  EXPECT_EQ(fb::sampled_slice_count(big, 0), 16);      // 0: sampling off
  EXPECT_EQ(fb::sampled_slice_count(big, 16384), 16);  // at the threshold: full
  EXPECT_EQ(fb::sampled_slice_count(big, 100), 2);     // tiny threshold: never below 2
  // Long queries against short keys: the full check costs no more than the budget.
  fb::ProblemSpec wide = small(2, 8192, 512, 4, 4, 64, fl::MaskType::kNoMask, 1);
  EXPECT_EQ(fb::sampled_slice_count(wide, 4096), 8);
  EXPECT_FALSE(fb::plan_validation(wide, 4096).sampled);
  // Varlen problems stay full.
  fb::ProblemSpec varlen = small(1, 0, 0, 4, 4, 64, fl::MaskType::kNoMask, 1);
  varlen.seqlens_q = {9000, 100};
  varlen.seqlens_k = {9000, 100};
  EXPECT_EQ(fb::sampled_slice_count(varlen, 4096), 8);
  EXPECT_FALSE(fb::plan_validation(varlen, 4096).sampled);
  // One slice in all: nothing to sample.
  fb::ProblemSpec one = small(1, 16384, 16384, 1, 1, 64, fl::MaskType::kNoMask, 1);
  EXPECT_FALSE(fb::plan_validation(one, 4096).sampled);
}

// ---------------------------------------------------------------------------------------------
// Which slices

TEST(SamplingTest, SelectionIsDeterministicBoundedUniqueAndKeepsFirstAndLast) {
  for (uint64_t seed : {uint64_t{0}, uint64_t{1}, uint64_t{64016391}, ~uint64_t{0}}) {
    for (int64_t n : {2, 3, 8, 31}) {
      const auto a = fb::select_units(1, 32, 32, n, seed);
      const auto b = fb::select_units(1, 32, 32, n, seed);
      EXPECT_EQ(a, b) << "seed " << seed << " n " << n;  // a function of its arguments
      EXPECT_EQ(static_cast<int64_t>(a.size()), n);
      expect_valid_selection(a, 1, 32, 32, "mha n" + std::to_string(n));
    }
    const auto c = fb::select_units(2, 16, 16, 16, seed);  // a 8k d128 cell: 16 of 32
    EXPECT_EQ(c.size(), 16u);
    expect_valid_selection(c, 2, 16, 16, "two batches");
  }
  // The seed matters (the middle is drawn, not fixed).
  std::set<std::vector<int64_t>> distinct;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    std::vector<int64_t> heads;
    for (const auto& u : fb::select_units(1, 32, 32, 8, seed)) heads.push_back(u.head);
    distinct.insert(heads);
  }
  EXPECT_GT(distinct.size(), 4u);
  // Every slice gets drawn eventually: no position is excluded by the scheme.
  std::set<int64_t> drawn;
  for (uint64_t seed = 0; seed < 200; ++seed)
    for (const auto& u : fb::select_units(1, 32, 32, 4, seed)) drawn.insert(u.head);
  EXPECT_EQ(drawn.size(), 32u);
  // Fewer than 2 asked: 2; as many as there are, or more: all.
  EXPECT_EQ(fb::select_units(1, 32, 32, 0, 5).size(), 2u);
  EXPECT_EQ(fb::select_units(1, 32, 32, 32, 5).size(), 32u);
  EXPECT_EQ(fb::select_units(1, 32, 32, 99, 5).size(), 32u);
  EXPECT_EQ(fb::select_units(1, 1, 1, 2, 5).size(), 1u);
  EXPECT_TRUE(fb::select_units(1, 6, 4, 2, 5).empty());  // heads_q % heads_kv != 0
}

TEST(SamplingTest, GqaSelectionTakesWholeGroups) {
  // heads_q 8, heads_kv 2 (group 4), batch 3: units are (batch, kv head), 6 of them.
  const auto u = fb::select_units(3, 8, 2, 12, 77);  // 12 slices -> 3 units
  ASSERT_EQ(u.size(), 3u);
  expect_valid_selection(u, 3, 8, 2, "gqa");
  // MQA: a unit is a whole batch element.
  const auto m = fb::select_units(4, 8, 1, 16, 3);
  ASSERT_EQ(m.size(), 2u);
  expect_valid_selection(m, 4, 8, 1, "mqa");
  // The plan lists every (batch, query head) compared, unit after unit.
  fb::ProblemSpec s = small(3, 256, 256, 8, 2, 64, fl::MaskType::kCausal, 9);
  const fb::ValidationPlan p = fb::plan_validation(s, 64);  // 3 * 8 * 64 / 256 = 6 -> 1 -> 2 units
  ASSERT_TRUE(p.sampled);
  ASSERT_EQ(p.units.size(), 2u);
  const auto slices = p.slices();
  ASSERT_EQ(slices.size(), 8u);
  EXPECT_EQ(slices.front(), (std::array<int64_t, 2>{0, 0}));
  EXPECT_EQ(slices[3], (std::array<int64_t, 2>{0, 3}));
  EXPECT_EQ(slices.back(), (std::array<int64_t, 2>{2, 7}));
  EXPECT_EQ(p.total_slices, 24);
}

TEST(SamplingTest, PlanOfACanonicalCellAndItsScope) {
  const fb::ProblemSpec s = canonical(64, true, 16384);
  const fb::ValidationPlan p = fb::plan_validation(s, fb::kDefaultFullValidationMaxSeqlen);
  ASSERT_TRUE(p.sampled);
  EXPECT_EQ(p.seed, s.seed);
  EXPECT_EQ(p.units.size(), 8u);
  const fb::ValidationScope v = p.scope();
  EXPECT_EQ(v.kind, "sampled");
  EXPECT_EQ(v.slices.size(), 8u);
  EXPECT_EQ(v.slices.front(), (std::array<int64_t, 2>{0, 0}));
  EXPECT_EQ(v.slices.back(), (std::array<int64_t, 2>{0, 31}));
  EXPECT_EQ(v.total_slices, 32);
  EXPECT_EQ(v.full_max_seqlen, 4096);
  EXPECT_EQ(v.seed, s.seed);
  // Same spec, same plan (what a rerun of the bench would check).
  EXPECT_EQ(fb::plan_validation(s, 4096).units, p.units);
  EXPECT_EQ(fb::plan_validation(canonical(64, true, 4096), 4096).scope().kind, "full");
  EXPECT_NE(p.describe(fl::Direction::kForward).find("8 of 32"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Sub-problem views

TEST(SamplingTest, SubProblemViewsOffsetThePointersOfTheFullTensors) {
  // GQA: heads_q 6, heads_kv 2 (group 3); backward tensors and seqused_k present.
  fb::ProblemSpec s = small(3, 40, 56, 6, 2, 16, fl::MaskType::kCausalBottomRight, 5);
  s.head_dim_v = 24;
  s.seqused_k = {56, 30, 41};
  fb::ProblemTensors t;
  ASSERT_TRUE(fb::build_tensors(s, fb::make_inputs(s, true), s.dtype, fl::Device::cpu(), true, &t).ok());
  const fl::AttentionProblem& full = t.problem;
  const int64_t b = 2, head = 3, heads = 3, kvh = 1;  // query heads 3..5 read kv head 1
  fl::AttentionProblem sub;
  std::string why;
  ASSERT_TRUE(fb::slice_problem(full, {b, head, heads}, &sub, &why)) << why;
  const int64_t sq = 40, sk = 56, hq = 6, hk = 2, d = 16, dv = 24;
  // q-like tensors: [1, sq, heads, d] at (b, 0, head, 0).
  EXPECT_EQ(sub.q.data, ptr_at(full.q, b * sq * hq * d + head * d));
  EXPECT_EQ(sub.q.shape, (std::array<int64_t, 4>{1, sq, heads, d}));
  EXPECT_EQ(sub.q.stride, full.q.stride);
  EXPECT_EQ(sub.o.data, ptr_at(full.o, b * sq * hq * dv + head * dv));
  EXPECT_EQ(sub.o.shape, (std::array<int64_t, 4>{1, sq, heads, dv}));
  EXPECT_EQ(sub.dout.data, ptr_at(full.dout, b * sq * hq * dv + head * dv));
  EXPECT_EQ(sub.dq.data, ptr_at(full.dq, b * sq * hq * d + head * d));
  // kv-like tensors: [1, sk, 1, d] at (b, 0, head / group, 0).
  EXPECT_EQ(sub.k.data, ptr_at(full.k, b * sk * hk * d + kvh * d));
  EXPECT_EQ(sub.k.shape, (std::array<int64_t, 4>{1, sk, 1, d}));
  EXPECT_EQ(sub.k.stride, full.k.stride);
  EXPECT_EQ(sub.v.data, ptr_at(full.v, b * sk * hk * dv + kvh * dv));
  EXPECT_EQ(sub.v.shape, (std::array<int64_t, 4>{1, sk, 1, dv}));
  EXPECT_EQ(sub.dk.data, ptr_at(full.dk, b * sk * hk * d + kvh * d));
  EXPECT_EQ(sub.dv.data, ptr_at(full.dv, b * sk * hk * dv + kvh * dv));
  // lse [1, heads, sq] at (b, head, 0); seqused_k [1] at b.
  EXPECT_EQ(sub.lse.data, ptr_at(full.lse, (b * hq + head) * sq));
  EXPECT_EQ(sub.lse.rank, 3);
  EXPECT_EQ(sub.lse.shape[0], 1);
  EXPECT_EQ(sub.lse.shape[1], heads);
  EXPECT_EQ(sub.lse.shape[2], sq);
  EXPECT_EQ(sub.lse.stride, full.lse.stride);
  EXPECT_EQ(sub.seqused_k.data, ptr_at(full.seqused_k, b));
  EXPECT_EQ(sub.seqused_k.shape[0], 1);
  EXPECT_EQ(sub.mask, full.mask);
  // The sub-problem is a valid problem in both directions.
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate(sub, fl::Direction::kForward, &info).ok());
  EXPECT_EQ(info.batch, 1);
  EXPECT_EQ(info.heads_q, heads);
  EXPECT_EQ(info.heads_kv, 1);
  ASSERT_TRUE(fl::validate(sub, fl::Direction::kBackward, &info).ok());

  // One query head: its kv head is head / (heads_q / heads_kv).
  for (int64_t h = 0; h < hq; ++h) {
    ASSERT_TRUE(fb::slice_problem(full, {1, h, 1}, &sub, &why)) << why;
    EXPECT_EQ(sub.q.data, ptr_at(full.q, 1 * sq * hq * d + h * d));
    EXPECT_EQ(sub.k.data, ptr_at(full.k, 1 * sk * hk * d + (h / 3) * d)) << h;
    EXPECT_EQ(sub.q.shape[2], 1);
    EXPECT_EQ(sub.k.shape[2], 1);
  }
  // Refused: two kv heads in one unit, outside the problem, varlen.
  EXPECT_FALSE(fb::slice_problem(full, {0, 2, 2}, &sub, &why));
  EXPECT_FALSE(fb::slice_problem(full, {3, 0, 1}, &sub, &why));
  EXPECT_FALSE(fb::slice_problem(full, {0, 5, 3}, &sub, &why));
  fb::ProblemSpec vs = small(1, 0, 0, 2, 2, 16, fl::MaskType::kNoMask, 1);
  vs.seqlens_q = {5, 7};
  vs.seqlens_k = {6, 8};
  fb::ProblemTensors vt;
  ASSERT_TRUE(fb::build_tensors(vs, fb::make_inputs(vs, false), vs.dtype, fl::Device::cpu(), false, &vt).ok());
  EXPECT_FALSE(fb::slice_problem(vt.problem, {0, 0, 1}, &sub, &why));
}

// ---------------------------------------------------------------------------------------------
// Sampled references = the same slices of the full references

namespace {

void expect_same(const std::vector<double>& a, const std::vector<double>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  ASSERT_FALSE(a.empty()) << what;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) && a[i] == b[i]) continue;
    worst = std::max(worst, std::fabs(a[i] - b[i]));
  }
  EXPECT_LE(worst, 1e-12) << what;
}

}  // namespace

TEST(SamplingTest, SampledReferencesEqualTheSlicesOfTheFullReferences) {
  struct Case { fb::ProblemSpec spec; int64_t threshold; };
  fb::ProblemSpec gqa = small(3, 48, 64, 8, 2, 16, fl::MaskType::kCausal, 21);
  gqa.seqused_k = {64, 33, 50};
  fb::ProblemSpec mha = small(2, 64, 64, 6, 6, 32, fl::MaskType::kCausalBottomRight, 22);
  mha.softcap = 5.0;
  fb::ProblemSpec window = small(2, 64, 48, 4, 4, 16, fl::MaskType::kNoMask, 23);
  window.window_left = 8;
  window.window_right = 3;
  // Sinks: each slice takes its query heads' sinks (a whole-problem sink tensor given to a slice
  // of fewer heads would be refused as a shape mismatch); dlearnable_sink is not sliced.
  fb::ProblemSpec sinks = small(2, 48, 64, 8, 2, 16, fl::MaskType::kNoMask, 24);
  sinks.learnable_sink = {40.f, -30.f, 0.5f, 2.f, -1.f, 3.f, 1.5f, 0.f};
  const Case cases[] = {{gqa, 16}, {mha, 16}, {window, 16}, {sinks, 16}};
  for (const Case& c : cases) {
    const fb::ProblemSpec& s = c.spec;
    const fb::ValidationPlan plan = fb::plan_validation(s, c.threshold);
    ASSERT_TRUE(plan.sampled) << s.describe();
    const fb::HostInputs in = fb::make_inputs(s, true);
    for (fl::DType dt : {fl::DType::kFloat64, s.dtype}) {
      fb::Outputs full, part;
      ASSERT_TRUE(fb::reference_outputs(s, in, dt, true, false, &full).ok());
      const fl::Status st = fb::sampled_reference_outputs(s, in, dt, true, false, plan, &part);
      ASSERT_TRUE(st.ok()) << st.to_string();
      const fb::Outputs f = fb::gather_slices(s, plan, fl::Direction::kForward, full);
      const fb::Outputs b = fb::gather_slices(s, plan, fl::Direction::kBackward, full);
      const std::string what = s.describe() + " " + fl::dtype_name(dt);
      EXPECT_EQ(part.o.size(), plan.slices().size() * s.seqlen_q * s.dv()) << what;
      expect_same(part.o, f.o, what + " o");
      expect_same(part.lse, f.lse, what + " lse");
      expect_same(part.dq, b.dq, what + " dq");
      expect_same(part.dk, b.dk, what + " dk");
      expect_same(part.dv, b.dv, what + " dv");
      EXPECT_TRUE(part.dsink.empty()) << what << ": a sampled reference has no dlearnable_sink";
    }
  }
}

TEST(SamplingTest, SampledCheckEndToEndWithReferenceCpuAsTheBackend) {
  // reference_cpu through the dispatcher is the "backend"; its outputs are gathered on the
  // plan's slices and checked against the sampled ref64 / ref_lowp with FlashAttention's rule.
  fb::ProblemSpec s = small(2, 96, 96, 4, 2, 32, fl::MaskType::kCausal, 31);
  const fb::ValidationPlan plan = fb::plan_validation(s, 32);
  ASSERT_TRUE(plan.sampled);
  const fb::HostInputs in = fb::make_inputs(s, true);
  fb::Outputs ref64, lowp;
  ASSERT_TRUE(fb::sampled_reference_outputs(s, in, fl::DType::kFloat64, true, false, plan, &ref64).ok());
  ASSERT_TRUE(fb::sampled_reference_outputs(s, in, s.dtype, true, false, plan, &lowp).ok());
  fb::ProblemTensors t;
  ASSERT_TRUE(fb::build_tensors(s, in, s.dtype, fl::Device::cpu(), true, &t).ok());
  const fl::Request req{fl::Backend::kReferenceCpu, /*strict=*/true};
  ASSERT_TRUE(fl::forward(t.problem, req, nullptr).ok());
  ASSERT_TRUE(fl::backward(t.problem, req, nullptr).ok());
  fb::Outputs got;
  ASSERT_TRUE(fb::fetch_outputs(t, fl::Direction::kForward, &got).ok());
  ASSERT_TRUE(fb::fetch_outputs(t, fl::Direction::kBackward, &got).ok());
  for (fl::Direction dir : {fl::Direction::kForward, fl::Direction::kBackward}) {
    const fb::CheckResult c = fb::check_outputs(dir, fb::gather_slices(s, plan, dir, got), ref64, lowp);
    EXPECT_TRUE(c.pass);
    for (const auto& f : c.figures) {
      EXPECT_TRUE(f.pass) << f.tensor;
      EXPECT_GT(f.count, 0) << f.tensor;
    }
  }
  // A wrong value inside a sampled slice fails; one outside every sampled slice is not seen
  // (what sampling trades for time).
  const auto& first = plan.units.front();  // (0, kv head 0): query heads 0, 1
  const int64_t sq = s.seqlen_q, hq = s.heads_q, dv = s.dv();
  fb::Outputs bad = got;
  bad.o[static_cast<size_t>(((first.batch * sq + 5) * hq + first.head) * dv + 3)] += 1.0;
  EXPECT_FALSE(fb::check_outputs(fl::Direction::kForward, fb::gather_slices(s, plan, fl::Direction::kForward, bad),
                                 ref64, lowp).pass);
  std::set<std::pair<int64_t, int64_t>> sampled;
  for (const auto& sl : plan.slices()) sampled.insert({sl[0], sl[1]});
  ASSERT_LT(sampled.size(), 8u);
  int64_t ob = -1, oh = -1;
  for (int64_t b = 0; b < 2 && ob < 0; ++b)
    for (int64_t h = 0; h < hq; ++h)
      if (!sampled.count({b, h})) { ob = b; oh = h; break; }
  bad = got;
  bad.o[static_cast<size_t>(((ob * sq + 5) * hq + oh) * dv + 3)] += 1.0;
  EXPECT_TRUE(fb::check_outputs(fl::Direction::kForward, fb::gather_slices(s, plan, fl::Direction::kForward, bad),
                                ref64, lowp).pass);
}

// ---------------------------------------------------------------------------------------------
// validation_scope through the proof-row JSON and the gate

namespace {

fb::ProofRow sampled_row() {
  fb::ProofRow r;
  r.proof_class = "execute";
  r.preset = "canonical";
  r.requested_backend = "sm90";
  r.runtime_mode = "fwd";
  r.direction = "fwd";
  r.environment.device = "NVIDIA H200";
  r.environment.sm = 90;
  r.gpu_lane.ran = true;
  const fb::ProblemSpec s = canonical(128, false, 16384);
  r.problem = fb::spec_to_json(s);
  r.has_receipt = true;
  r.receipt.requested_backend = "sm90";
  r.receipt.actual_backend = "sm90";
  r.receipt.runtime_mode = "fwd";
  r.receipt.sm = 90;
  r.receipt.status = "ok";
  r.metrics.median_ms = 3.3;
  r.metrics.tflops = 660.0;
  r.metrics.peak_memory_mib = 600.0;
  r.metrics.max_abs_diff = 0.0004;
  r.metrics.ref_max_abs_diff = 0.0004;
  r.metrics.checked_tensor = "o";
  r.metrics.validation_ran = true;
  r.metrics.validation_passed = true;
  r.metrics.validation_scope = fb::plan_validation(s, 4096).scope();
  r.metrics.validation_method = "o and lse of 4 of 16 (batch, head) slices";
  r.metrics.errors = nlohmann::json::array(
      {{{"tensor", "o"}, {"max_abs_diff", 0.0004}, {"ref_max_abs_diff", 0.0004}, {"tolerance", 0.00081},
        {"nan_count", 0}, {"count", 4 * 16384 * 128}, {"pass", true}}});
  fb::compute_counts_for_status(&r);
  return r;
}

}  // namespace

TEST(SamplingScopeTest, RoundTripsThroughTheProofRowJson) {
  const fb::ProofRow r = sampled_row();
  ASSERT_TRUE(r.counts_for_status) << r.not_counted_reason;  // sampled rows count
  const nlohmann::json j = fb::proof_row_to_json(r);
  const nlohmann::json& v = j["metrics"]["validation_scope"];
  EXPECT_EQ(v["kind"], "sampled");
  ASSERT_EQ(v["slices"].size(), 4u);
  EXPECT_EQ(v["slices"][0], nlohmann::json::array({0, 0}));
  EXPECT_EQ(v["slices"][3], nlohmann::json::array({0, 15}));
  EXPECT_EQ(v["seed"], r.problem["seed"]);
  EXPECT_EQ(v["total_slices"], 16);
  EXPECT_EQ(v["full_max_seqlen"], 4096);
  fb::ProofRow back;
  std::string why;
  ASSERT_TRUE(fb::proof_row_from_json(nlohmann::json::parse(j.dump()), &back, &why)) << why;
  EXPECT_TRUE(back == r);
  EXPECT_EQ(back.metrics.validation_scope, r.metrics.validation_scope);
  // full and none too.
  for (const char* kind : {"full", "none"}) {
    fb::ProofRow x = r;
    x.metrics.validation_scope = fb::ValidationScope{};
    x.metrics.validation_scope.kind = kind;
    const nlohmann::json jx = fb::proof_row_to_json(x);
    EXPECT_EQ(jx["metrics"]["validation_scope"], nlohmann::json({{"kind", kind}}));
    ASSERT_TRUE(fb::proof_row_from_json(jx, &back, &why)) << why;
    EXPECT_TRUE(back == x) << kind;
  }
}

TEST(SamplingScopeTest, RowsWithoutAStructuredScopeStillParse) {
  // Rows written before the field: free text in validation_scope (bench/results/archive/2026-11-22-*),
  // or nothing. They parse as "unrecorded", the words kept as validation_method.
  nlohmann::json j = fb::proof_row_to_json(sampled_row());
  j["metrics"]["validation_scope"] = "every element of o and lse against ref64 = reference_cuda ...";
  j["metrics"].erase("validation_method");
  fb::ProofRow back;
  std::string why;
  ASSERT_TRUE(fb::proof_row_from_json(j, &back, &why)) << why;
  EXPECT_EQ(back.metrics.validation_scope.kind, "unrecorded");
  EXPECT_EQ(back.metrics.validation_method, "every element of o and lse against ref64 = reference_cuda ...");
  // Written again: no structured scope is invented for it, and it reads back the same.
  const nlohmann::json again = fb::proof_row_to_json(back);
  EXPECT_FALSE(again["metrics"].contains("validation_scope"));
  fb::ProofRow back2;
  ASSERT_TRUE(fb::proof_row_from_json(again, &back2, &why)) << why;
  EXPECT_TRUE(back2 == back);
  j["metrics"].erase("validation_scope");
  ASSERT_TRUE(fb::proof_row_from_json(j, &back, &why)) << why;
  EXPECT_EQ(back.metrics.validation_scope.kind, "unrecorded");
  // The gate accepts them (and counts them), as it accepts the other fields older rows lack.
  fb::compute_counts_for_status(&back);
  const fb::GateResult g = fb::run_gate({back}, fb::GateConfig{}, {});
  EXPECT_TRUE(g.pass) << dump(g);
  EXPECT_EQ(g.unrecorded_scope_rows, 1);
  EXPECT_EQ(g.counting_rows, 1);
}

TEST(SamplingScopeTest, MalformedScopesAreRefusedByTheReader) {
  const nlohmann::json good = fb::proof_row_to_json(sampled_row());
  fb::ProofRow out;
  std::string why;
  auto refused = [&](const std::function<void(nlohmann::json&)>& edit, const char* what) {
    nlohmann::json j = good;
    edit(j["metrics"]["validation_scope"]);
    EXPECT_FALSE(fb::proof_row_from_json(j, &out, &why)) << what;
  };
  refused([](nlohmann::json& v) { v["kind"] = "most"; }, "unknown kind");
  refused([](nlohmann::json& v) { v.erase("kind"); }, "no kind");
  refused([](nlohmann::json& v) { v.erase("slices"); }, "sampled without slices");
  refused([](nlohmann::json& v) { v.erase("seed"); }, "sampled without seed");
  refused([](nlohmann::json& v) { v["slices"] = {{0, 1, 2}}; }, "not a pair");
  refused([](nlohmann::json& v) { v["slices"] = {{0, -1}}; }, "negative");
  refused([](nlohmann::json& v) { v["slices"] = "all"; }, "not an array");
  refused([](nlohmann::json& v) { v = 3; }, "not an object");
}

TEST(SamplingScopeTest, GateCountsSampledRowsAndRejectsInconsistentScopes) {
  fb::ProofRow r = sampled_row();
  fb::GateConfig c;
  c.required.push_back({{"backend", "sm90"}, {"seqlen", 16384}, {"head_dim", 128}});
  c.claims = {"fwd"};
  fb::GateResult g = fb::run_gate({r}, c, {});
  EXPECT_TRUE(g.pass) << dump(g);  // a required row validated on slices satisfies the gate
  EXPECT_EQ(g.sampled_rows, 1);
  EXPECT_EQ(g.counting_rows, 1);

  auto violates = [&](fb::ProofRow x, const char* what) {
    const fb::GateResult gx = fb::run_gate({x}, fb::GateConfig{}, {});
    EXPECT_FALSE(gx.pass) << what;
    EXPECT_TRUE(has_rule(gx, "validation_scope")) << what << "\n" << dump(gx);
  };
  { auto x = r; x.metrics.validation_scope.slices.push_back({1, 0}); violates(x, "batch out of range"); }
  { auto x = r; x.metrics.validation_scope.slices.push_back({0, 16}); violates(x, "head out of range"); }
  { auto x = r; x.metrics.validation_scope.slices.push_back(x.metrics.validation_scope.slices[0]); violates(x, "repeated"); }
  { auto x = r; x.metrics.validation_scope.slices.clear(); violates(x, "no slices"); }
  { auto x = r; x.metrics.validation_scope.total_slices = 32; violates(x, "wrong total"); }
  { auto x = r; x.metrics.validation_scope = fb::ValidationScope{}; violates(x, "none but validated"); }
  {
    auto x = r;
    x.metrics.validation_ran = false;
    x.metrics.validation_passed = false;
    fb::compute_counts_for_status(&x);
    violates(x, "sampled but not validated");
  }
  // A full scope on the same row is fine.
  auto x = r;
  x.metrics.validation_scope = fb::ValidationScope{};
  x.metrics.validation_scope.kind = "full";
  g = fb::run_gate({x}, c, {});
  EXPECT_TRUE(g.pass) << dump(g);
  EXPECT_EQ(g.sampled_rows, 0);
}

// ---------------------------------------------------------------------------------------------
// The tool: `flashlane bench --full-validation-max-seqlen`, then `flashlane gate`

TEST(SamplingCliTest, BenchSamplesAboveTheThresholdAndTheGateReadsIt) {
  // --preset cpu: the host lane (reference_cpu as backend and reference) on any machine.
  const std::string dir = temp_dir("bench");
  // The cpu grid: [1, 256, 4, 64] bf16, no_mask and causal. Threshold 64: 1 * 4 * 64 / 256 = 1
  // slice -> 2 (first and last) of 4.
  Result r = run_tool("bench --preset cpu --full-validation-max-seqlen 64 --out s.jsonl --overwrite", dir);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("2 of 2 problems sampled"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("4 validated on sampled slices"), std::string::npos) << r.out;
  std::vector<fb::ProofRow> rows;
  std::string why;
  ASSERT_TRUE(fb::read_proof_rows(dir + "/s.jsonl", &rows, &why)) << why;
  ASSERT_EQ(rows.size(), 4u);
  for (const auto& row : rows) {
    const fb::ValidationScope& v = row.metrics.validation_scope;
    EXPECT_EQ(v.kind, "sampled");
    EXPECT_TRUE(row.metrics.validation_ran);
    EXPECT_TRUE(row.metrics.validation_passed) << row.metrics.validation_method;
    ASSERT_EQ(v.slices.size(), 2u);
    EXPECT_EQ(v.slices[0], (std::array<int64_t, 2>{0, 0}));
    EXPECT_EQ(v.slices[1], (std::array<int64_t, 2>{0, 3}));
    EXPECT_EQ(v.total_slices, 4);
    EXPECT_EQ(v.full_max_seqlen, 64);
    EXPECT_EQ(v.seed, row.problem["seed"].get<uint64_t>());
    for (const auto& f : row.metrics.errors) {
      const int64_t per_slice = f["tensor"] == "lse" ? 256 : 256 * 64;
      EXPECT_EQ(f["count"].get<int64_t>(), 2 * per_slice) << f.dump();
    }
  }
  // The gate reads the rows: no scope violation (the CPU lane's rows fail for not counting).
  Result g = run_tool("gate s.jsonl --json", dir);
  EXPECT_EQ(g.code, 1) << g.out;
  EXPECT_EQ(g.out.find("validation_scope"), std::string::npos) << g.out;
  EXPECT_NE(g.out.find("no_counting_row"), std::string::npos) << g.out;
  // The default threshold keeps the cpu grid (seqlen 256) in full; 0 turns sampling off.
  for (const char* args : {"bench --preset cpu --out f.jsonl --overwrite",
                           "bench --preset cpu --full-validation-max-seqlen 0 --out f.jsonl --overwrite"}) {
    r = run_tool(args, dir);
    ASSERT_EQ(r.code, 0) << r.out;
    rows.clear();
    ASSERT_TRUE(fb::read_proof_rows(dir + "/f.jsonl", &rows, &why)) << why;
    ASSERT_EQ(rows.size(), 4u);
    for (const auto& row : rows) EXPECT_EQ(row.metrics.validation_scope.kind, "full") << args;
  }
  r = run_tool("bench --preset cpu --full-validation-max-seqlen -1 --out f.jsonl", dir);
  EXPECT_EQ(r.code, 2) << r.out;
  std::filesystem::remove_all(dir);
}
