// visits.h: which query tiles a key tile of the backward visits, and, for the deterministic
// mode, how many lower key tiles visit a given query tile: integer arithmetic on MaskRule,
// compiled for the GPU and for the host (the CPU tests check the closed form against the
// definition, tests/cpu/test_bwd_visits.cpp).
//
// Rows i of a sequence see keys j with j - shift - window_right <= i <= j - shift + window_left
// (shift = MaskRule::diagonal_shift, a negative window = unbounded). Both ends of that row range
// are non-decreasing in j, so the rows that see some key of a key tile are one contiguous range,
// and so are the query tiles of kBlockM rows that hold them.
#pragma once

#include <cstdint>

#include "core/attention_rules.h"
#include "sm90/common/host_device.h"

namespace flashlane::sm90::bwd {

FLASHLANE_HOST_DEVICE inline int64_t visits_max(int64_t a, int64_t b) { return a > b ? a : b; }
FLASHLANE_HOST_DEVICE inline int64_t visits_min(int64_t a, int64_t b) { return a < b ? a : b; }

/// Query tiles [*m_begin, *m_end) of kBlockM rows that see some key of [n0, n0 + rows_used) in a
/// sequence of len_q query rows and used_k keys. An empty range has *m_begin == *m_end.
template <int kBlockM>
FLASHLANE_HOST_DEVICE inline void visiting_query_tiles(const MaskRule& mask, int len_q,
                                                       int used_k, int n0, int rows_used,
                                                       int* m_begin, int* m_end) {
  const int64_t shift = mask.diagonal_shift(len_q, used_k);
  int64_t i_lo = 0, i_end = rows_used > 0 ? len_q : 0;
  if (mask.window_right >= 0) i_lo = visits_max(0, n0 - shift - mask.window_right);
  if (mask.window_left >= 0) {
    i_end = visits_min(i_end, int64_t(n0) + rows_used - shift + mask.window_left);
  }
  *m_begin = int(i_lo / kBlockM);
  *m_end = i_end > i_lo ? int((i_end + kBlockM - 1) / kBlockM) : *m_begin;
}

/// The number of key tiles n' < n_block (of kBlockN keys) whose visiting range contains query
/// tile m, for a key tile n_block that visits m (so n_block * kBlockN < used_k: every lower tile
/// is full, and m * kBlockM < len_q). A closed form of counting over n':
///   lo(n') <= m  <=>  n' kBlockN < (m + 1) kBlockM + shift + window_right      (A of them)
///   hi(n') <= m  <=>  n' kBlockN <= m kBlockM - kBlockN + shift - window_left  (B of them)
/// and, since lo(n') <= hi(n'), the tiles with lo <= m < hi are A - B. An empty range (a tile
/// left of every row's window) has lo = hi = 0 and is counted in both. A few integer operations
/// instead of a loop over n_block tiles.
template <int kBlockM, int kBlockN>
FLASHLANE_HOST_DEVICE inline int lower_key_tiles_visiting(const MaskRule& mask, int len_q,
                                                          int used_k, int n_block, int m) {
  const int64_t shift = mask.diagonal_shift(len_q, used_k);
  int64_t a = n_block;
  if (mask.window_right >= 0) {
    const int64_t x = int64_t(m + 1) * kBlockM + shift + mask.window_right;
    a = visits_min(n_block, x > 0 ? (x + kBlockN - 1) / kBlockN : 0);
  }
  int64_t b = 0;
  if (mask.window_left >= 0) {
    const int64_t y = int64_t(m) * kBlockM - kBlockN + shift - mask.window_left;
    b = visits_min(n_block, y >= 0 ? y / kBlockN + 1 : 0);
  }
  return int(a - b);
}

}  // namespace flashlane::sm90::bwd
