// Problem tests: mask names, ProblemInfo::visible_pairs against a brute-force double loop over
// MaskRule::visible for every mask / window combination (square, rectangular, empty, varlen,
// seqused_k), and forward_flops. ProblemInfo comes from validate(), so the normalization the
// backends see (causal -> window_right 0, diagonal alignment) is the one counted.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/attention_rules.h"
#include "flashlane/flashlane.h"

namespace fl = flashlane;
using fl::AttentionProblem;
using fl::Device;
using fl::Direction;
using fl::DType;
using fl::MaskType;
using fl::ProblemInfo;
using fl::TensorView;

namespace {

void* fake_ptr(int slot) {
  return reinterpret_cast<void*>((uintptr_t{1} << 36) + static_cast<uintptr_t>(slot) * 0x1000000);
}

constexpr MaskType kMasks[] = {MaskType::kNoMask, MaskType::kCausal, MaskType::kCausalBottomRight};
constexpr int64_t kWindows[] = {-1, 0, 1, 3, 17};

fl::MaskRule rule_of(const ProblemInfo& info) {
  fl::MaskRule r;
  r.window_left = info.window_left;
  r.window_right = info.window_right;
  r.bottom_right = info.bottom_right;
  return r;
}

/// Brute force over every (query, key) pair of one sequence.
int64_t brute_pairs(const fl::MaskRule& rule, int64_t sq, int64_t sk) {
  int64_t n = 0;
  for (int64_t i = 0; i < sq; ++i) {
    for (int64_t j = 0; j < sk; ++j) n += rule.visible(i, j, sq, sk) ? 1 : 0;
  }
  return n;
}

/// A validated bshd forward problem (fake host pointers), heads_q = 3.
ProblemInfo bshd_info(int64_t batch, int64_t sq, int64_t sk, MaskType mask, int64_t left,
                      int64_t right, const std::vector<int32_t>* used = nullptr) {
  AttentionProblem p;
  const Device dev = Device::cpu();
  p.q = TensorView::contiguous(fake_ptr(0), DType::kBFloat16, {batch, sq, 3, 64}, dev);
  p.k = TensorView::contiguous(fake_ptr(1), DType::kBFloat16, {batch, sk, 1, 64}, dev);
  p.v = TensorView::contiguous(fake_ptr(2), DType::kBFloat16, {batch, sk, 1, 32}, dev);
  p.o = TensorView::contiguous(fake_ptr(3), DType::kBFloat16, {batch, sq, 3, 32}, dev);
  if (used != nullptr) {
    p.seqused_k = TensorView::contiguous(const_cast<int32_t*>(used->data()), DType::kInt32,
                                         {static_cast<int64_t>(used->size())}, dev);
  }
  p.mask = mask;
  p.window_left = left;
  p.window_right = right;
  ProblemInfo info;
  const fl::Status st = fl::validate(p, Direction::kForward, &info);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return info;
}

bool window_allowed(MaskType mask, int64_t right) {
  return mask == MaskType::kNoMask || right == -1 || right == 0;
}

}  // namespace

TEST(ProblemTest, MaskTypeNamesRoundTrip) {
  for (MaskType m : kMasks) {
    MaskType parsed = MaskType::kNoMask;
    ASSERT_TRUE(fl::parse_mask_type(fl::mask_type_name(m), &parsed)) << fl::mask_type_name(m);
    EXPECT_EQ(parsed, m);
  }
  EXPECT_STREQ(fl::mask_type_name(MaskType::kNoMask), "no_mask");
  EXPECT_STREQ(fl::mask_type_name(MaskType::kCausal), "causal");
  EXPECT_STREQ(fl::mask_type_name(MaskType::kCausalBottomRight), "causal_bottom_right");
  MaskType untouched = MaskType::kCausal;
  for (const char* bad : {"", "Causal", "causal ", "bottom_right", "none", "unknown"}) {
    EXPECT_FALSE(fl::parse_mask_type(bad, &untouched)) << bad;
    EXPECT_EQ(untouched, MaskType::kCausal);
  }
}

TEST(ProblemTest, VisiblePairsBshdMatchesBruteForce) {
  const int64_t shapes[][2] = {{1, 1}, {5, 5}, {7, 13}, {13, 7}, {0, 5}, {5, 0}, {33, 33}, {1, 40},
                               {40, 1}};
  for (const auto& shape : shapes) {
    const int64_t sq = shape[0], sk = shape[1];
    for (MaskType mask : kMasks) {
      for (int64_t left : kWindows) {
        for (int64_t right : kWindows) {
          if (!window_allowed(mask, right)) continue;
          SCOPED_TRACE(std::string(fl::mask_type_name(mask)) + " sq=" + std::to_string(sq) +
                       " sk=" + std::to_string(sk) + " left=" + std::to_string(left) +
                       " right=" + std::to_string(right));
          const ProblemInfo info = bshd_info(2, sq, sk, mask, left, right);
          const double expected = 2.0 * 3.0 * brute_pairs(rule_of(info), sq, sk);
          EXPECT_EQ(info.visible_pairs(nullptr, nullptr, nullptr), expected);
        }
      }
    }
  }
}

TEST(ProblemTest, VisiblePairsBshdWithSequsedK) {
  const std::vector<int32_t> used{0, 4, 13};
  for (MaskType mask : kMasks) {
    for (int64_t left : kWindows) {
      for (int64_t right : kWindows) {
        if (!window_allowed(mask, right)) continue;
        SCOPED_TRACE(std::string(fl::mask_type_name(mask)) + " left=" + std::to_string(left) +
                     " right=" + std::to_string(right));
        const ProblemInfo info = bshd_info(3, 9, 13, mask, left, right, &used);
        const fl::MaskRule rule = rule_of(info);
        double expected = 0;
        for (int32_t u : used) expected += 3.0 * brute_pairs(rule, 9, u);
        EXPECT_EQ(info.visible_pairs(nullptr, nullptr, used.data()), expected);
      }
    }
  }
}

TEST(ProblemTest, VisiblePairsVarlenWithSequsedKMatchesBruteForce) {
  std::vector<int32_t> cu_q{0, 3, 3, 10, 30, 31};
  std::vector<int32_t> cu_k{0, 5, 6, 6, 26, 27};
  std::vector<int32_t> used{4, 1, 0, 17, 0};
  const int64_t total_q = cu_q.back(), total_k = cu_k.back();
  for (bool with_used : {false, true}) {
    for (MaskType mask : kMasks) {
      for (int64_t left : kWindows) {
        for (int64_t right : kWindows) {
          if (!window_allowed(mask, right)) continue;
          SCOPED_TRACE(std::string(fl::mask_type_name(mask)) + " left=" + std::to_string(left) +
                       " right=" + std::to_string(right) + " seqused=" + std::to_string(with_used));
          AttentionProblem p;
          const Device dev = Device::cpu();
          p.q = TensorView::contiguous(fake_ptr(0), DType::kFloat16, {total_q, 4, 64}, dev);
          p.k = TensorView::contiguous(fake_ptr(1), DType::kFloat16, {total_k, 2, 64}, dev);
          p.v = TensorView::contiguous(fake_ptr(2), DType::kFloat16, {total_k, 2, 64}, dev);
          p.o = TensorView::contiguous(fake_ptr(3), DType::kFloat16, {total_q, 4, 64}, dev);
          p.cu_seqlens_q = TensorView::contiguous(cu_q.data(), DType::kInt32, {6}, dev);
          p.cu_seqlens_k = TensorView::contiguous(cu_k.data(), DType::kInt32, {6}, dev);
          if (with_used) p.seqused_k = TensorView::contiguous(used.data(), DType::kInt32, {5}, dev);
          p.mask = mask;
          p.window_left = left;
          p.window_right = right;
          ProblemInfo info;
          ASSERT_TRUE(fl::validate(p, Direction::kForward, &info).ok());
          const fl::MaskRule rule = rule_of(info);
          double expected = 0;
          for (size_t b = 0; b + 1 < cu_q.size(); ++b) {
            const int64_t sq = cu_q[b + 1] - cu_q[b];
            const int64_t sk = with_used ? used[b] : cu_k[b + 1] - cu_k[b];
            expected += 4.0 * brute_pairs(rule, sq, sk);
          }
          EXPECT_EQ(info.visible_pairs(cu_q.data(), cu_k.data(), with_used ? used.data() : nullptr),
                    expected);
        }
      }
    }
  }
}

TEST(ProblemTest, VisiblePairsKnownValues) {
  // Square causal: n (n + 1) / 2 per head; no mask: n * m; bottom-right causal with
  // seqlen_q > seqlen_k leaves the first seqlen_q - seqlen_k rows empty.
  EXPECT_EQ(bshd_info(1, 8, 8, MaskType::kCausal, -1, -1).visible_pairs(nullptr, nullptr, nullptr),
            3.0 * 36);
  EXPECT_EQ(bshd_info(1, 8, 5, MaskType::kNoMask, -1, -1).visible_pairs(nullptr, nullptr, nullptr),
            3.0 * 40);
  // sq = 8, sk = 5, bottom-right: row i sees keys j <= i - 3 -> rows 3..7 see 1..5 keys = 15.
  EXPECT_EQ(bshd_info(1, 8, 5, MaskType::kCausalBottomRight, -1, -1)
                .visible_pairs(nullptr, nullptr, nullptr),
            3.0 * 15);
  // Top-left causal, same shape: row i sees min(i + 1, 5) keys = 1+2+3+4+5+5+5+5 = 30.
  EXPECT_EQ(bshd_info(1, 8, 5, MaskType::kCausal, -1, -1).visible_pairs(nullptr, nullptr, nullptr),
            3.0 * 30);
}

TEST(ProblemTest, VisiblePairsVarlenWithoutHostArraysIsNaN) {
  ProblemInfo info;
  info.varlen = true;
  info.batch = 2;
  info.heads_q = 1;
  EXPECT_TRUE(std::isnan(info.visible_pairs(nullptr, nullptr, nullptr)));
}

TEST(ProblemTest, VisiblePairsOfHandFilledCausalInfoIsNormalized) {
  // A ProblemInfo filled by hand with mask = causal and window_right = -1 counts like the
  // normalized one (window_right = 0, top-left diagonal).
  ProblemInfo info;
  info.batch = 1;
  info.seqlen_q = 6;
  info.seqlen_k = 6;
  info.heads_q = 1;
  info.mask = MaskType::kCausal;
  info.window_right = -1;
  info.bottom_right = true;
  EXPECT_EQ(info.visible_pairs(nullptr, nullptr, nullptr), 21.0);
}

TEST(ProblemTest, ForwardFlops) {
  ProblemInfo info = bshd_info(2, 16, 16, MaskType::kNoMask, -1, -1);  // head_dim 64, head_dim_v 32
  const double pairs = info.visible_pairs(nullptr, nullptr, nullptr);
  EXPECT_EQ(pairs, 2.0 * 3 * 16 * 16);
  EXPECT_EQ(fl::forward_flops(info, pairs), 2.0 * pairs * (64 + 32));
  info.head_dim_v = info.head_dim;  // equal head dims: FlashAttention's 4 * pairs * head_dim
  EXPECT_EQ(fl::forward_flops(info, pairs), 4.0 * pairs * 64);
  EXPECT_EQ(fl::forward_flops(info, 0.0), 0.0);
}
