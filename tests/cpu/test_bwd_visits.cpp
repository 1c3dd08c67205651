// test_bwd_visits.cpp: the sm90 backward's visiting ranges (src/sm90/bwd/visits.h), on the CPU.
// The deterministic mode orders the dQ adds of a query tile by key tile; each key tile waits
// until the counter of the tile equals lower_key_tiles_visiting, a closed form. A count one too
// high hangs the kernel, one too low breaks the order, so it is checked here against its
// definition (a loop over the lower key tiles with visiting_query_tiles, the function that
// decides the visits) on every visited (key tile, query tile) of many masks and lengths.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sm90/bwd/visits.h"

namespace {

using flashlane::MaskRule;
using flashlane::sm90::bwd::lower_key_tiles_visiting;
using flashlane::sm90::bwd::visiting_query_tiles;

struct Counts {
  int64_t checked = 0;
  int64_t nonzero = 0;
};

template <int kBlockM, int kBlockN>
void check_problem(const MaskRule& mask, int len_q, int len_k, int used_k, Counts* counts) {
  const int n_tiles = (len_k + kBlockN - 1) / kBlockN;
  std::vector<int> lo(n_tiles), hi(n_tiles);
  for (int n = 0; n < n_tiles; ++n) {
    const int n0 = n * kBlockN;
    const int rows_used = used_k - n0 < 0 ? 0 : (used_k - n0 < kBlockN ? used_k - n0 : kBlockN);
    visiting_query_tiles<kBlockM>(mask, len_q, used_k, n0, rows_used, &lo[n], &hi[n]);
  }
  for (int n = 0; n < n_tiles; ++n) {
    for (int m = lo[n]; m < hi[n]; ++m) {
      int want = 0;
      for (int below = 0; below < n; ++below) want += (lo[below] <= m && m < hi[below]) ? 1 : 0;
      const int got = lower_key_tiles_visiting<kBlockM, kBlockN>(mask, len_q, used_k, n, m);
      ASSERT_EQ(got, want) << "tiles " << kBlockM << "x" << kBlockN << " len_q " << len_q
                           << " len_k " << len_k << " used_k " << used_k << " window ("
                           << mask.window_left << ", " << mask.window_right << ") bottom_right "
                           << mask.bottom_right << " key tile " << n << " query tile " << m;
      ++counts->checked;
      counts->nonzero += want > 0 ? 1 : 0;
    }
  }
}

std::vector<MaskRule> masks() {
  std::vector<MaskRule> out;
  const int64_t windows[] = {-1, 0, 1, 63, 64, 65, 128, 129, 1000};
  for (bool bottom_right : {false, true}) {
    for (int64_t left : windows) {
      for (int64_t right : windows) out.push_back(MaskRule{left, right, bottom_right});
    }
  }
  return out;
}

template <int kBlockM, int kBlockN>
Counts check_all() {
  Counts counts;
  const int lengths[] = {1, 63, 64, 65, 127, 128, 129, 256, 383, 513, 1000};
  for (const MaskRule& mask : masks()) {
    for (int len_q : lengths) {
      for (int len_k : lengths) {
        for (int used_k : {len_k, len_k / 2, len_k - 1}) {
          if (used_k < 0) continue;
          check_problem<kBlockM, kBlockN>(mask, len_q, len_k, used_k, &counts);
          if (::testing::Test::HasFatalFailure()) return counts;
        }
      }
    }
  }
  return counts;
}

// The tile shapes of the kernel table's backward rows (64 x 128, 128 x 128, 64 x 64) and one
// with kBlockM > kBlockN.
TEST(Sm90BackwardVisits, ClosedFormCountMatchesTheLoopOverLowerKeyTiles) {
  const Counts a = check_all<64, 128>();
  const Counts b = check_all<128, 128>();
  const Counts c = check_all<64, 64>();
  const Counts d = check_all<128, 64>();
  // The sweep reaches the cases that matter: many visits, most with lower key tiles before them.
  for (const Counts& k : {a, b, c, d}) {
    EXPECT_GT(k.checked, 100000);
    EXPECT_GT(k.nonzero, k.checked / 4);
  }
}

TEST(Sm90BackwardVisits, CausalExamples) {
  // Causal (top-left), 1024 x 1024, 64-row query tiles and 128-key tiles: key tile n is visited
  // by query tiles 2n .. 15, and query tile m by key tiles 0 .. m / 2.
  const MaskRule causal{-1, 0, false};
  EXPECT_EQ((lower_key_tiles_visiting<64, 128>(causal, 1024, 1024, 0, 15)), 0);
  EXPECT_EQ((lower_key_tiles_visiting<64, 128>(causal, 1024, 1024, 7, 15)), 7);
  EXPECT_EQ((lower_key_tiles_visiting<64, 128>(causal, 1024, 1024, 3, 7)), 3);
  // A window of 128 keys to the left: query tile 10 (rows 640-703) sees keys 512-703, key tiles
  // 4 and 5; below key tile 5 only tile 4 visits it.
  const MaskRule window{128, 0, false};
  EXPECT_EQ((lower_key_tiles_visiting<64, 128>(window, 1024, 1024, 5, 10)), 1);
  // No mask: every lower key tile visits every query tile.
  const MaskRule none{-1, -1, false};
  EXPECT_EQ((lower_key_tiles_visiting<64, 128>(none, 1024, 1024, 6, 0)), 6);
}

}  // namespace
