// test_sm90_kernel_table.cpp: the sm90 kernel table and what derives from it, on the CPU: the
// supports checks of both directions against the build's FLASHLANE_SM90_HEAD_DIMS, the
// applicability rows that judge head dims, the variant names, and the params builder (the
// problem -> kernel parameters translation both directions share). Runs in every build with
// the sm90 kernels, including one configured with -DFLASHLANE_SM90_HEAD_DIMS=128.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <string>
#include <tuple>

#include "dispatch/applicability.h"
#include "dispatch/backends.h"
#include "sm90/common/instantiations.h"
#include "sm90/common/kernel_table.h"
#include "sm90/common/params_builder.h"
#include "sm90/common/tile_order.h"
#include "support/host_problem.h"

namespace fl = flashlane;
namespace sm90 = flashlane::sm90;
using fl::test_support::HostProblem;
using fl::test_support::HostProblemConfig;

namespace {

/// FLASHLANE_SM90_HEAD_DIMS of this build, from the CMake cache ("64,96,128,192,256").
std::set<int> configured_head_dims() {
  std::set<int> dims;
  std::stringstream ss(FLASHLANE_TEST_SM90_HEAD_DIMS);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) dims.insert(std::stoi(item));
  }
  return dims;
}

fl::DeviceInfo fake_hopper() {
  fl::DeviceInfo d;
  d.cuda_available = true;
  d.ordinal = 0;
  d.sm = 90;
  d.sm_count = 132;
  d.name = "fake H100 (test)";
  return d;
}

/// A validated CUDA-labelled problem (validation reads no data of it) of one head-dim pair.
struct CudaProblem {
  fl::AttentionProblem p;
  fl::ProblemInfo info;
};

CudaProblem cuda_problem(int64_t d, int64_t dv, fl::Direction dir) {
  // Fake, 16-byte aligned device addresses: nothing dereferences them.
  alignas(16) static unsigned char arena[16 * 16];
  auto t = [&](int i, std::initializer_list<int64_t> shape, fl::DType dt) {
    return fl::TensorView::contiguous(arena + 16 * i, dt, shape, fl::Device::cuda(0));
  };
  CudaProblem c;
  const auto bf = fl::DType::kBFloat16;
  c.p.q = t(0, {2, 256, 8, d}, bf);
  c.p.k = t(1, {2, 256, 2, d}, bf);
  c.p.v = t(2, {2, 256, 2, dv}, bf);
  c.p.o = t(3, {2, 256, 8, dv}, bf);
  c.p.lse = t(4, {2, 8, 256}, fl::DType::kFloat32);
  if (dir == fl::Direction::kBackward) {
    c.p.dout = t(5, {2, 256, 8, dv}, bf);
    c.p.dq = t(6, {2, 256, 8, d}, bf);
    c.p.dk = t(7, {2, 256, 2, d}, bf);
    c.p.dv = t(8, {2, 256, 2, dv}, bf);
  }
  const fl::Status st = fl::validate(c.p, dir, &c.info);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return c;
}

}  // namespace

TEST(Sm90KernelTable, RowsAreUniqueAndWellFormed) {
  std::set<std::pair<int, int>> seen;
  for (const sm90::KernelConfig& c : sm90::kKernelTable) {
    EXPECT_TRUE(seen.insert({c.head_dim, c.head_dim_v}).second) << c.head_dim;
    EXPECT_EQ(c.head_dim % 16, 0);
    EXPECT_EQ(c.head_dim_v % 16, 0);
    EXPECT_LE(c.head_dim, 256);
    EXPECT_EQ(c.fwd.block_n % 16, 0);
    EXPECT_GE(c.fwd.stages, 1);
    // fwd/softmax.h's static_asserts, checked here for every row (compiled or not).
    EXPECT_GE(c.fwd.exp2_emulated_per16, 0);
    EXPECT_LE(c.fwd.exp2_emulated_per16, 16);
    EXPECT_GE(c.fwd.rescale_threshold, 0);
    EXPECT_LE(c.fwd.rescale_threshold, 32);
    EXPECT_GE(c.bwd.stages, 1);
    EXPECT_EQ(sm90::find_row(c.head_dim, c.head_dim_v), size_t(&c - sm90::kKernelTable));
    // The keys split keeps dK and dV of its 64 keys in registers: head_dim <= 128 only.
    if (c.bwd.split == sm90::BwdSplit::kKeys) {
      EXPECT_LE(c.head_dim, 128);
      EXPECT_EQ(c.head_dim, c.head_dim_v);
    }
  }
  EXPECT_EQ(sm90::find_row(64, 128), sm90::kKernelTableSize);
}

TEST(Sm90KernelTable, CompiledSetIsTheConfiguredHeadDims) {
  const std::set<int> want = configured_head_dims();
  ASSERT_FALSE(want.empty());
  std::set<int> compiled;
  for (int d : sm90::kCompiledHeadDims) {
    if (d != 0) compiled.insert(d);
  }
  EXPECT_EQ(compiled, want);
}

// Both directions accept exactly the compiled rows: nothing for a pair without a row, nothing
// for a head dim the build left out.
TEST(Sm90KernelTable, SupportsFollowTheTableAndTheBuildFilter) {
  const std::set<int> built = configured_head_dims();
  for (int d = 8; d <= 256; d += 8) {
    for (int dv = 8; dv <= 256; dv += 8) {
      const bool row = sm90::find_row(d, dv) != sm90::kKernelTableSize;
      const bool want = row && built.count(d) > 0;
      EXPECT_EQ(fl::detail::sm90_forward_supports(d, dv), want) << d << "/" << dv;
      EXPECT_EQ(fl::detail::sm90_backward_supports(d, dv), want) << d << "/" << dv;
    }
  }
}

// The applicability table refuses a head dim the build did not compile, in each direction with
// its own tag, and accepts the compiled ones (on a Hopper device as the rules see it).
TEST(Sm90KernelTable, RulesRefuseHeadDimsTheBuildLeftOut) {
  const std::set<int> built = configured_head_dims();
  const fl::DeviceInfo hopper = fake_hopper();
  for (const sm90::KernelConfig& c : sm90::kKernelTable) {
    for (fl::Direction dir : {fl::Direction::kForward, fl::Direction::kBackward}) {
      CudaProblem cp = cuda_problem(c.head_dim, c.head_dim_v, dir);
      const fl::detail::RuleContext ctx{cp.info, hopper};
      const fl::detail::Rule* failing = fl::detail::first_failing_rule(fl::Backend::kSm90, ctx);
      const char* want_tag = dir == fl::Direction::kForward ? "sm90.head_dim_unsupported"
                                                            : "sm90.bwd_head_dim_unsupported";
      if (built.count(c.head_dim)) {
        EXPECT_EQ(failing, nullptr) << c.head_dim << "/" << c.head_dim_v << ": "
                                    << (failing ? failing->tag : std::string());
      } else {
        ASSERT_NE(failing, nullptr) << c.head_dim;
        EXPECT_EQ(failing->tag, want_tag) << c.head_dim << "/" << c.head_dim_v;
      }
    }
  }
}

TEST(Sm90KernelTable, HeadDimTextNamesEveryRowAndTheCompiledOnes) {
  const std::string text = fl::detail::sm90_head_dims_text();
  for (const sm90::KernelConfig& c : sm90::kKernelTable) {
    const std::string pair =
        "(" + std::to_string(c.head_dim) + ", " + std::to_string(c.head_dim_v) + ")";
    EXPECT_NE(text.find(pair), std::string::npos) << pair << " in: " << text;
  }
  const size_t here = text.find("compiled here:");
  ASSERT_NE(here, std::string::npos) << text;
  for (int d : configured_head_dims()) {
    EXPECT_NE(text.find("(" + std::to_string(d) + ", ", here), std::string::npos) << d;
  }
}

// Receipts keep the names the kernels have always had: tile edges, dtype, design.
TEST(Sm90KernelTable, VariantNames) {
  const sm90::KernelConfig& d128 = sm90::kKernelTable[sm90::find_row(128, 128)];
  EXPECT_EQ(sm90::fwd_variant_name(d128, fl::DType::kBFloat16),
            "fwd_m128_n128_d128_bf16_ws2_stages2");
  EXPECT_EQ(sm90::bwd_variant_name(d128, fl::DType::kBFloat16), "bwd_m64_n128_d128_bf16_wgmma");
  const sm90::KernelConfig& d64 = sm90::kKernelTable[sm90::find_row(64, 64)];
  EXPECT_EQ(sm90::fwd_variant_name(d64, fl::DType::kFloat16), "fwd_m128_n192_d64_fp16_ws2_stages3");
  EXPECT_EQ(sm90::bwd_variant_name(d64, fl::DType::kFloat16), "bwd_m128_n128_d64_fp16_wgmma");
  const sm90::KernelConfig& d192 = sm90::kKernelTable[sm90::find_row(192, 128)];
  EXPECT_EQ(sm90::fwd_variant_name(d192, fl::DType::kBFloat16),
            "fwd_m128_n64_d192_dv128_bf16_ws2_stages2");
  EXPECT_EQ(sm90::bwd_variant_name(d192, fl::DType::kBFloat16),
            "bwd_m64_n64_d192_dv128_bf16_wgmma");
}

// The forward's softmax choices appear in its variant name exactly when a row makes them.
TEST(Sm90KernelTable, VariantNamesCarryTheSoftmaxChoices) {
  using sm90::BwdSplit;
  using sm90::BwdTile;
  using sm90::FwdTile;
  const auto plain = sm90::row(64, 64, FwdTile{192, 3}, BwdTile{128, 128, 2, BwdSplit::kKeys});
  const auto emulated =
      sm90::row(64, 64, FwdTile{192, 3, 4, 0}, BwdTile{128, 128, 2, BwdSplit::kKeys});
  const auto both = sm90::row(64, 64, FwdTile{192, 3, 4, 8}, BwdTile{128, 128, 2, BwdSplit::kKeys});
  const auto rescale_only =
      sm90::row(64, 64, FwdTile{192, 3, 0, 8}, BwdTile{128, 128, 2, BwdSplit::kKeys});
  const auto bf = fl::DType::kBFloat16;
  EXPECT_EQ(sm90::fwd_variant_name(plain, bf), "fwd_m128_n192_d64_bf16_ws2_stages3");
  EXPECT_EQ(sm90::fwd_variant_name(emulated, bf), "fwd_m128_n192_d64_bf16_ws2_stages3_exp2fma4of16");
  EXPECT_EQ(sm90::fwd_variant_name(both, bf),
            "fwd_m128_n192_d64_bf16_ws2_stages3_exp2fma4of16_rescale8");
  EXPECT_EQ(sm90::fwd_variant_name(rescale_only, bf), "fwd_m128_n192_d64_bf16_ws2_stages3_rescale8");
}

// The params builder: one translation for both directions; the backward's extends the
// forward's with the gradients.
TEST(Sm90ParamsBuilder, DenseForwardAndBackward) {
  HostProblemConfig cfg;
  cfg.dtype = fl::DType::kBFloat16;
  cfg.batch = 3;
  cfg.seqlen_q = 300;
  cfg.seqlen_k = 200;
  cfg.heads_q = 6;
  cfg.heads_kv = 2;
  cfg.head_dim = 128;
  cfg.mask = fl::MaskType::kCausalBottomRight;
  cfg.window_left = 1 << 20;  // wider than any sequence: clamped
  cfg.softcap = 30.0;
  cfg.softmax_scale = 0.125;
  cfg.pad_heads = 8;
  cfg.heads_major = true;
  cfg.deterministic = true;
  HostProblem hp(cfg);
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate(hp.problem(), fl::Direction::kBackward, &info).ok());
  const fl::AttentionProblem& pb = hp.problem();

  sm90::FwdParams f;
  ASSERT_TRUE(sm90::build_fwd_params(pb, info, &f).ok());
  EXPECT_EQ(f.q, pb.q.data);
  EXPECT_EQ(f.o, pb.o.data);
  EXPECT_EQ(f.lse, pb.lse.data);
  EXPECT_EQ(f.q_batch_stride, pb.q.stride[0]);
  EXPECT_EQ(f.q_row_stride, pb.q.stride[1]);
  EXPECT_EQ(f.q_head_stride, pb.q.stride[2]);
  EXPECT_EQ(f.v_row_stride, pb.v.stride[1]);
  EXPECT_EQ(f.lse_batch_stride, pb.lse.stride[0]);
  EXPECT_EQ(f.lse_head_stride, pb.lse.stride[1]);
  EXPECT_EQ(f.lse_row_stride, pb.lse.stride[2]);
  EXPECT_FALSE(f.varlen_q);
  EXPECT_EQ(f.kv_layout, fl::KvLayout::kDense);
  EXPECT_EQ(f.rows_q, 300);
  EXPECT_EQ(f.rows_k, 200);
  EXPECT_EQ(f.heads_q, 6);
  EXPECT_EQ(f.heads_kv, 2);
  EXPECT_TRUE(f.has_softcap);
  EXPECT_FLOAT_EQ(f.softcap_prescale, float(0.125 / 30.0));
  EXPECT_FLOAT_EQ(f.score_to_log2, float(30.0 * 1.4426950408889634));
  EXPECT_EQ(f.mask.window_left, 300 + 200 + 1);
  EXPECT_EQ(f.mask.window_right, 0);
  EXPECT_TRUE(f.mask.bottom_right);
  EXPECT_EQ(f.num_m_blocks, 3);  // ceil(300 / 128)
  EXPECT_EQ(f.num_tiles, 3 * 6 * 3);
  EXPECT_FALSE(f.persistent);  // causal: one tile per CTA

  sm90::BwdParams b;
  ASSERT_TRUE(sm90::build_bwd_params(pb, info, &b).ok());
  // Everything the forward's builder fills is the same in the backward's.
  EXPECT_EQ(b.q, f.q);
  EXPECT_EQ(b.k_head_stride, f.k_head_stride);
  EXPECT_EQ(b.lse_row_stride, f.lse_row_stride);
  EXPECT_EQ(b.score_to_log2, f.score_to_log2);
  EXPECT_EQ(b.mask.window_left, f.mask.window_left);
  EXPECT_EQ(b.dout, pb.dout.data);
  EXPECT_EQ(b.dq, pb.dq.data);
  EXPECT_EQ(b.dk_batch_stride, pb.dk.stride[0]);
  EXPECT_EQ(b.dv_row_stride, pb.dv.stride[1]);
  EXPECT_EQ(b.do_head_stride, pb.dout.stride[2]);
  EXPECT_FLOAT_EQ(b.softmax_scale, 0.125f);
  EXPECT_TRUE(b.deterministic);
  EXPECT_EQ(b.num_tiles, 0);  // the forward grid is the forward's
}

TEST(Sm90ParamsBuilder, VarlenIsPackedOnBothSides) {
  HostProblemConfig cfg;
  cfg.dtype = fl::DType::kFloat16;
  cfg.seqlens_q = {5, 130, 0, 64};
  cfg.seqlens_k = {7, 1, 300, 64};
  cfg.seqused_k = {7, 0, 100, 64};
  cfg.heads_q = 4;
  cfg.heads_kv = 4;
  cfg.head_dim = 64;
  HostProblem hp(cfg);
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate(hp.problem(), fl::Direction::kForward, &info).ok());
  EXPECT_EQ(info.kv_layout, fl::KvLayout::kVarlenPacked);
  sm90::FwdParams f;
  ASSERT_TRUE(sm90::build_fwd_params(hp.problem(), info, &f).ok());
  EXPECT_TRUE(f.varlen_q);
  EXPECT_EQ(f.kv_layout, fl::KvLayout::kVarlenPacked);
  EXPECT_EQ(f.rows_q, 5 + 130 + 0 + 64);
  EXPECT_EQ(f.rows_k, 7 + 1 + 300 + 64);
  EXPECT_EQ(f.q_batch_stride, 0);
  EXPECT_EQ(f.k_row_stride, hp.problem().k.stride[0]);
  EXPECT_EQ(f.k_head_stride, hp.problem().k.stride[1]);
  EXPECT_EQ(f.lse_head_stride, hp.problem().lse.stride[0]);
  EXPECT_EQ(f.lse_row_stride, hp.problem().lse.stride[1]);
  EXPECT_EQ(f.cu_seqlens_q, hp.problem().cu_seqlens_q.data);
  EXPECT_EQ(f.cu_seqlens_k, hp.problem().cu_seqlens_k.data);
  EXPECT_EQ(f.seqused_k, hp.problem().seqused_k.data);
  EXPECT_EQ(f.seqlen_q, 130);  // max_seqlen_q, computed by validation
  EXPECT_EQ(f.seqlen_k, 300);
  EXPECT_FALSE(f.has_softcap);
  EXPECT_FLOAT_EQ(f.score_to_log2, float(1.4426950408889634 / std::sqrt(64.0)));
  EXPECT_FALSE(f.persistent);  // varlen: one tile per CTA
}

TEST(Sm90ParamsBuilder, PagedKvIsRefusedWithATag) {
  HostProblemConfig cfg;
  cfg.dtype = fl::DType::kBFloat16;
  cfg.seqlen_q = cfg.seqlen_k = 16;
  cfg.head_dim = 64;
  HostProblem hp(cfg);
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate(hp.problem(), fl::Direction::kForward, &info).ok());
  info.kv_layout = fl::KvLayout::kPaged;  // no entry point produces it yet
  sm90::FwdParams f;
  fl::Status st = sm90::build_fwd_params(hp.problem(), info, &f);
  EXPECT_EQ(st.code(), fl::ErrorCode::kInternal);
  EXPECT_EQ(st.reason_tag(), "sm90.kv_layout_unsupported");
  // Dense q with packed k/v: the kernels read q and k/v packed alike.
  info.kv_layout = fl::KvLayout::kVarlenPacked;
  sm90::BwdParams b;
  st = sm90::build_bwd_params(hp.problem(), info, &b);
  EXPECT_EQ(st.reason_tag(), "sm90.kv_layout_unsupported") << st.to_string();
}

TEST(Sm90ParamsBuilder, ForwardGridLimit) {
  fl::ProblemInfo info;
  info.seqlen_q = 128 * 1024;
  info.heads_q = 128;
  info.batch = 1;
  EXPECT_TRUE(fl::detail::sm90_forward_grid_fits(info));
  info.batch = (int64_t(INT32_MAX) / (1024 * 128)) + 1;
  EXPECT_FALSE(fl::detail::sm90_forward_grid_fits(info));
  info.batch = int64_t(1) << 40;
  EXPECT_FALSE(fl::detail::sm90_forward_grid_fits(info));
}

TEST(Sm90KernelTable, VariantFeatures) {
  fl::ProblemInfo info;
  info.heads_q = info.heads_kv = 4;
  EXPECT_EQ(sm90::variant_features(info), "");
  info.mask = fl::MaskType::kCausalBottomRight;
  info.window_left = 64;
  info.softcap = 30.0;
  info.varlen = true;
  info.heads_kv = 1;
  EXPECT_EQ(sm90::variant_features(info), "+causal+window+softcap+varlen+gqa");
}

// The forward's tile order (common/tile_order.h): every (m_block, head, batch) exactly once, for
// every group size; within a group the longest M-block (the last) of each pair comes first.
TEST(Sm90TileOrder, EveryTileOnceLongestFirstPerGroup) {
  for (int m_blocks : {1, 3, 16}) {
    for (int heads : {1, 5, 8}) {
      for (int batch : {1, 3}) {
        const int pairs = heads * batch;
        const int tiles = m_blocks * pairs;
        for (int group : {1, 2, 4, 7, pairs}) {
          if (group > pairs) continue;
          std::set<std::tuple<int, int, int>> seen;
          for (int t = 0; t < tiles; ++t) {
            const sm90::TileCoord c = sm90::decode_tile(t, m_blocks, heads, tiles, group);
            ASSERT_GE(c.m_block, 0);
            ASSERT_LT(c.m_block, m_blocks);
            ASSERT_GE(c.head, 0);
            ASSERT_LT(c.head, heads);
            ASSERT_GE(c.batch, 0);
            ASSERT_LT(c.batch, batch);
            EXPECT_TRUE(seen.insert({c.m_block, c.head, c.batch}).second)
                << "tile " << t << " group " << group;
            // The first tiles of each group are the last M-block of its pairs.
            const int first_pair = (t / (group * m_blocks)) * group;
            const int in_group = std::min(group, pairs - first_pair);
            if (t % (group * m_blocks) < in_group) EXPECT_EQ(c.m_block, m_blocks - 1) << t;
          }
          EXPECT_EQ(int(seen.size()), tiles);
        }
      }
    }
  }
  // group 1 is the order of one pair's M-blocks in a row, last first.
  const sm90::TileCoord c = sm90::decode_tile(5, 4, 3, 24, 1);
  EXPECT_EQ(c.m_block, 2);  // pair 1, second tile
  EXPECT_EQ(c.head, 1);
  EXPECT_EQ(c.batch, 0);
}

// The forward's tile group (params_builder.h): 1 for persistent problems; otherwise as many
// (batch, head) pairs as keep their K/V within 16 MiB, at most 8 and at most batch * heads.
TEST(Sm90TileOrder, GroupFollowsTheL2Budget) {
  fl::ProblemInfo info;
  info.dtype = fl::DType::kBFloat16;
  info.mask = fl::MaskType::kCausal;
  auto cell = [&](int64_t seqlen, int64_t d, int64_t batch, int64_t heads, int64_t heads_kv) {
    info.seqlen_q = info.seqlen_k = seqlen;
    info.head_dim = info.head_dim_v = d;
    info.batch = batch;
    info.heads_q = heads;
    info.heads_kv = heads_kv;
    return sm90::fwd_tile_group(info, /*persistent=*/false);
  };
  EXPECT_EQ(cell(2048, 128, 8, 16, 16), 8);   // 1 MiB of K/V per head: the cap
  EXPECT_EQ(cell(8192, 128, 2, 16, 16), 4);   // 4 MiB
  EXPECT_EQ(cell(16384, 128, 1, 16, 16), 2);  // 8 MiB
  EXPECT_EQ(cell(16384, 256, 1, 8, 8), 1);    // 16 MiB
  EXPECT_EQ(cell(16384, 64, 1, 32, 32), 4);
  EXPECT_EQ(cell(16384, 128, 1, 16, 4), 8);   // GQA 4:1: four query heads share one K/V
  EXPECT_EQ(cell(512, 64, 1, 3, 3), 3);       // no more than the pairs
  EXPECT_EQ(cell(1 << 20, 256, 1, 4, 4), 1);  // beyond the budget alone: still 1
  EXPECT_EQ(sm90::fwd_tile_group(info, /*persistent=*/true), 1);
}
