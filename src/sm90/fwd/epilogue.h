// epilogue.h: writes one tile's O (normalized, converted to 16-bit) and LSE straight from the
// consumer registers to global memory. Every row is bounds-checked against the sequence's
// query length, so ragged tiles and varlen sequences never write into a neighbour.
//
// Next step for speed: stage O through shared memory (the free sQ) and store it with TMA,
// which coalesces the 4-byte register stores into full lines; the row bound then comes from a
// TMA view clipped to the sequence.
#pragma once

#include <cute/tensor.hpp>

#include "sm90/fwd/kernel_traits.h"
#include "sm90/common/params.h"
#include "sm90/fwd/tile_scheduler.h"
#include "sm90/common/wgmma.h"

namespace flashlane::sm90 {

template <class Traits>
struct FwdEpilogue {
  using Element = typename Traits::Element;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kHeadDimV = Traits::kHeadDimV;

  /// tOrO: fp32 accumulators already multiplied by 1 / rowsum; lse: per-row natural-log LSE.
  template <class FragO, int kRows>
  __device__ static void store(const FwdParams& p, const TileCoord& tile, const SeqInfo& seq,
                               FragO const& tOrO, const float (&lse)[kRows], int thread_idx) {
    typename Traits::TiledMmaPV mma_pv;
    auto thr_pv = mma_pv.get_thread_slice(thread_idx);
    Tensor cO = make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDimV>>{});
    Tensor tOcO_rc = rowcol_view(thr_pv.partition_C(cO));
    auto tOrOut = convert_fragment<Element>(tOrO);
    Tensor tOut_rc = rowcol_view(tOrOut);
    static_assert(decltype(size<0>(tOut_rc))::value == kRows);

    const int m0 = tile.m_block * kBlockM;
    const int64_t batch_term = p.varlen_q ? 0 : int64_t(tile.batch) * p.o_batch_stride;
    Element* o_base = static_cast<Element*>(p.o) + batch_term +
                      int64_t(tile.head) * p.o_head_stride +
                      int64_t(seq.offset_q) * p.o_row_stride;
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = m0 + get<0>(tOcO_rc(r, 0));
      if (row >= seq.len_q) continue;
      Element* o_row = o_base + int64_t(row) * p.o_row_stride;
      // Columns come in adjacent pairs (mode 0 of the accumulator): one 4-byte store each.
      CUTE_UNROLL
      for (int c = 0; c < size<1>(tOut_rc); c += 2) {
        const int col = get<1>(tOcO_rc(r, c));
        cutlass::Array<Element, 2> pair;
        pair[0] = tOut_rc(r, c);
        pair[1] = tOut_rc(r, c + 1);
        *reinterpret_cast<cutlass::Array<Element, 2>*>(o_row + col) = pair;
      }
    }
    // One thread of each quad owns the row statistics (they are quad-uniform).
    if (p.lse != nullptr && (thread_idx % 4) == 0) {
      const int64_t lse_batch = p.varlen_q ? 0 : int64_t(tile.batch) * p.lse_batch_stride;
      float* lse_base = p.lse + lse_batch + int64_t(tile.head) * p.lse_head_stride;
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        const int row = m0 + get<0>(tOcO_rc(r, 0));
        if (row < seq.len_q) lse_base[int64_t(seq.offset_q + row) * p.lse_row_stride] = lse[r];
      }
    }
  }
};

}  // namespace flashlane::sm90
