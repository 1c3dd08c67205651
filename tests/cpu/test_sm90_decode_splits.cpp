// The split-KV choice of the sm90 decode kernel (src/sm90/decode/split_plan.h): a forced count
// is kept within its bounds, the heuristic fills the machine when few work items exist and does
// not split when they already fill it, and it reads shapes only.
#include <gtest/gtest.h>

#include "sm90/decode/split_plan.h"

namespace fs = flashlane::sm90;

TEST(Sm90DecodeSplits, ForcedCountIsBoundedByKeyBlocksAndTheMaximum) {
  EXPECT_EQ(fs::decode_num_splits(8, 8192, 132, 128, 1), 1);
  EXPECT_EQ(fs::decode_num_splits(8, 8192, 132, 128, 7), 7);
  EXPECT_EQ(fs::decode_num_splits(8, 8192, 132, 128, 1000), fs::kMaxDecodeSplits);
  // 100 keys are two 64-key blocks: at most two splits.
  EXPECT_EQ(fs::decode_num_splits(8, 100, 132, 128, 64), 2);
  EXPECT_EQ(fs::decode_num_splits(8, 0, 132, 128, 5), 1);
}

TEST(Sm90DecodeSplits, HeuristicFillsTheMachineForFewItems) {
  // Batch 1, 8 KV heads, one row tile: 8 items for 264 CTA slots (2 per SM at head_dim 128);
  // at least one CTA per SM (the count is capped at 16 once that holds, see below).
  const int s = fs::decode_num_splits(8, 8192, 132, 128, 0);
  EXPECT_GE(8 * s, 132 * 9 / 10);
  EXPECT_LE(8 * s, 264);
  // Batch 4: 32 items; every CTA slot.
  const int s4 = fs::decode_num_splits(32, 8192, 132, 128, 0);
  EXPECT_GE(32 * s4, 264 * 9 / 10);
  EXPECT_LE(32 * s4, 264);
  // Every split keeps at least two key blocks: 1024 keys = 16 blocks, at most 8 splits.
  EXPECT_EQ(fs::decode_num_splits(8, 1024, 132, 128, 0), 8);
  // head_dim 256 runs one CTA per SM.
  const int s256 = fs::decode_num_splits(8, 32768, 132, 256, 0);
  EXPECT_GE(8 * s256, 132 * 9 / 10);
  EXPECT_LE(8 * s256, 132);
}

TEST(Sm90DecodeSplits, NoSplitWhenTheItemsFillTheMachine) {
  EXPECT_EQ(fs::decode_num_splits(512, 8192, 132, 128, 0), 1);    // batch 64 x 8 heads
  EXPECT_EQ(fs::decode_num_splits(2048, 131072, 132, 128, 0), 1);  // batch 256 x 8 heads
  EXPECT_EQ(fs::decode_num_splits(0, 8192, 132, 128, 0), 1);
}

TEST(Sm90DecodeSplits, SharedMemoryFitsTwoCtasPerSmUpToHeadDim128) {
  EXPECT_LE(2 * fs::decode_smem_bytes(128), 227 * 1024);
  EXPECT_LE(fs::decode_smem_bytes(256), 227 * 1024);
  EXPECT_TRUE(fs::decode_q_in_smem(256));
  EXPECT_FALSE(fs::decode_q_in_smem(128));
}

TEST(Sm90DecodeSplits, DenseCapsAtSixteenWhenEverySmStillGetsACta) {
  // Batch 1, 8 KV heads, 8k keys: the wave efficiency alone would take 33 splits (264 slots / 8
  // items); 8 x 16 = 128 CTAs still cover 97% of 132 SMs.
  EXPECT_EQ(fs::decode_num_splits(8, 8192, 132, 128, 0), fs::kPreferredMaxSplits);
  EXPECT_EQ(fs::decode_num_splits(8, 131072, 132, 128, 0), fs::kPreferredMaxSplits);
  // MQA (1 item): 16 CTAs would leave most SMs idle; the count stays above 16.
  EXPECT_GT(fs::decode_num_splits(1, 131072, 132, 128, 0), fs::kPreferredMaxSplits);
  // Paged caches keep the wave-efficiency count (33 here).
  EXPECT_GT(fs::decode_num_splits(8, 8192, 132, 128, 0, /*paged=*/true), fs::kPreferredMaxSplits);
  // Counts at or below 16, and forced counts, are unchanged.
  EXPECT_EQ(fs::decode_num_splits(8, 1024, 132, 128, 0), 8);
  EXPECT_EQ(fs::decode_num_splits(8, 8192, 132, 128, 64), 64);
  EXPECT_EQ(fs::decode_num_splits(512, 8192, 132, 128, 0), 1);
}
