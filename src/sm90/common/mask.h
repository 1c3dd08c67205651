// mask.h: causal / sliding-window / sequence-end masking of tiles, with the semantics of
// MaskRule (core/attention_rules.h), for every sm90 kernel.
//
// Both ends of a query row's visible key range, lo(row) and hi(row), are non-decreasing in the
// row. So a tile of query rows [m0, m_last] sees keys [lo(m0), hi(m_last)), and blocks outside
// it are never loaded or computed; and a key block [n0, n0 + n) inside it needs the per-element
// mask only when some row of the tile does not see all of its keys:
//   not (n0 >= lo(m_last) and n0 + n <= hi(m0))          (tile_needs_mask)
// Everything else runs the unmasked path.
#pragma once

#include <cute/tensor.hpp>

#include "core/attention_rules.h"

namespace flashlane::sm90 {

/// The one needs-mask predicate: key block [n0, n0 + block_n) against a tile of query rows whose
/// last row sees keys from lo_last_row and whose first row sees keys below hi_first_row
/// (Index: int or int64_t, whichever the caller's bounds are).
template <class Index>
__device__ __forceinline__ bool tile_needs_mask(Index n0, int block_n, Index lo_last_row,
                                                Index hi_first_row) {
  return !(n0 >= lo_last_row && n0 + block_n <= hi_first_row);
}

/// Forward: the key blocks one M-block of queries visits.
struct KeyBlockRange {
  int n_min;  // first K/V block to compute
  int n_max;  // one past the last
  int lo_last_row;   // lo(last valid row of the M-block)
  int hi_first_row;  // hi(first row of the M-block)
  __device__ bool empty() const { return n_max <= n_min; }
  /// True when block n needs the per-element mask.
  template <int kBlockN>
  __device__ bool needs_mask(int n_block) const {
    return tile_needs_mask(n_block * kBlockN, kBlockN, lo_last_row, hi_first_row);
  }
};

template <int kBlockM, int kBlockN>
__device__ KeyBlockRange key_block_range(const MaskRule& rule, int m_block, int len_q,
                                         int len_k) {
  const int64_t first_row = int64_t(m_block) * kBlockM;
  const int64_t last_row = cute::min(first_row + kBlockM, int64_t(len_q)) - 1;
  int64_t lo_first, hi_first, lo_last, hi_last;
  rule.key_range(first_row, len_q, len_k, &lo_first, &hi_first);
  rule.key_range(last_row, len_q, len_k, &lo_last, &hi_last);
  KeyBlockRange r;
  r.n_min = int(lo_first / kBlockN);
  r.n_max = hi_last > lo_first ? int((hi_last + kBlockN - 1) / kBlockN) : r.n_min;
  r.lo_last_row = int(lo_last);
  r.hi_first_row = int(cute::max(hi_first, int64_t(0)));
  return r;
}

/// Backward: whether key tile [n0, n0 + kBlockN) needs the per-element mask for the query tile
/// of rows [m0, min(m0 + kBlockM, len_q)).
template <int kBlockM, int kBlockN>
__device__ bool key_tile_needs_mask(const MaskRule& rule, int m0, int len_q, int len_k, int n0) {
  int64_t lo_first, hi_first, lo_last, hi_last;
  const int last_row = cute::min(m0 + kBlockM, len_q) - 1;
  rule.key_range(m0, len_q, len_k, &lo_first, &hi_first);
  rule.key_range(last_row, len_q, len_k, &lo_last, &hi_last);
  return tile_needs_mask(int64_t(n0), kBlockN, lo_last, hi_first);
}

/// Sets every score outside the visible range of its row to -inf. Select, never add: keys
/// past the sequence may hold NaN/Inf garbage, and NaN + (-inf) is NaN.
/// tS_rc / tScS_rc: the thread's scores and their (row, col) tile coordinates as (row, col).
template <class TensorS, class TensorC>
__device__ void apply_mask(TensorS& tS_rc, TensorC const& tScS_rc, const MaskRule& rule,
                           int m0, int n0, int len_q, int len_k) {
  using namespace cute;
  CUTE_UNROLL
  for (int r = 0; r < size<0>(tS_rc); ++r) {
    const int64_t row = m0 + get<0>(tScS_rc(r, 0));
    int64_t lo, hi;
    rule.key_range(row, len_q, len_k, &lo, &hi);
    const int lo_local = int(cute::max(lo - n0, int64_t(-1)));
    const int hi_local = int(cute::min(hi - n0, int64_t(1) << 30));
    CUTE_UNROLL
    for (int c = 0; c < size<1>(tS_rc); ++c) {
      const int col = get<1>(tScS_rc(r, c));
      if (col < lo_local || col >= hi_local) tS_rc(r, c) = -INFINITY;
    }
  }
}

}  // namespace flashlane::sm90
