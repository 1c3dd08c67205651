// kv_tile_loader.h: cp.async loads of one K tile and one V tile (kDecodeBlockN keys x head_dim)
// of a sequence's cache into shared memory, dense or paged, row by row.
//
// Every key row is gathered on its own, so any page size works (a page of 1 key, vLLM's 16,
// 64, ...), and a dense cache is the case "one page per sequence". Rows at or beyond the
// sequence's seqlen_k are zero-filled (cp.async with source size 0): they are never read from
// global memory, and a zero V row times a zero probability stays zero, where a stale or NaN row
// would not.
//
// Shared layout: row-major [key][head_dim], 16-byte chunks XOR-swizzled by the row's low three
// bits (chunk c of row r at r * kChunks + (c ^ (r & 7))), so the ldmatrix reads of eight rows
// of one chunk column (kernel.h) hit eight different bank groups.
#pragma once

#include <cute/arch/copy_sm80.hpp>
#include <cutlass/fast_math.h>

#include "sm90/decode/params.h"
#include "sm90/decode/split_plan.h"

namespace flashlane::sm90::decode {

template <int kHeadDim>
struct TileGeometry {
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  static constexpr int kRowsPerPass = kDecodeThreads / kChunks;
  static constexpr int kPasses = kDecodeBlockN / kRowsPerPass;
  static constexpr int kTileElems = kDecodeBlockN * kHeadDim;
  static_assert(kDecodeThreads % kChunks == 0 && kDecodeBlockN % kRowsPerPass == 0);

  __device__ static int swizzled(int row, int chunk) { return row * kChunks + (chunk ^ (row & 7)); }
};

/// Where sequence b's keys live, resolved once per CTA.
template <int kHeadDim, bool kPaged>
struct KvTileLoader {
  using Geo = TileGeometry<kHeadDim>;
  const cute::uint128_t* k_base;  // cache base + kv head offset
  const cute::uint128_t* v_base;
  int64_t k_page_stride, k_row_stride, v_page_stride, v_row_stride;  // in 16-byte chunks
  const int32_t* page_row;  // page_table row of the sequence (paged)
  cutlass::FastDivmod page_divmod;
  int seqlen_k;
  int chunk;     // this thread's chunk column
  int row0;      // this thread's first row in a tile

  __device__ KvTileLoader(const DecodeParams& p, int b, int kv_head, int seqlen_k_, int tid)
      : seqlen_k(seqlen_k_), chunk(tid % Geo::kChunks), row0(tid / Geo::kChunks) {
    // Element strides are multiples of 8 (validation: 16-byte aligned rows), chunk strides exact.
    k_page_stride = p.k_page_stride / 8;
    k_row_stride = p.k_row_stride / 8;
    v_page_stride = p.v_page_stride / 8;
    v_row_stride = p.v_row_stride / 8;
    const auto* k = static_cast<const cute::uint128_t*>(p.k_cache) + kv_head * (p.k_head_stride / 8);
    const auto* v = static_cast<const cute::uint128_t*>(p.v_cache) + kv_head * (p.v_head_stride / 8);
    if constexpr (kPaged) {
      page_row = p.page_table + b * p.page_table_stride;
      page_divmod = cutlass::FastDivmod(p.page_size);
      k_base = k;
      v_base = v;
    } else {
      page_row = nullptr;
      const int64_t row = p.cache_batch_idx != nullptr ? p.cache_batch_idx[b] : b;
      k_base = k + row * k_page_stride;
      v_base = v + row * v_page_stride;
    }
  }

  /// Issues the cp.async of key block n_block into the tile pair (k_tile, v_tile).
  __device__ void load(int n_block, cute::uint128_t* k_tile, cute::uint128_t* v_tile) const {
    CUTE_UNROLL
    for (int pass = 0; pass < Geo::kPasses; ++pass) {
      const int row = row0 + pass * Geo::kRowsPerPass;
      const int pos = n_block * kDecodeBlockN + row;
      const bool in = pos < seqlen_k;
      int64_t k_off = 0, v_off = 0;
      if (in) {
        if constexpr (kPaged) {
          int page_idx, slot;
          page_divmod(page_idx, slot, pos);
          const int64_t page = __ldg(page_row + page_idx);
          k_off = page * k_page_stride + slot * k_row_stride;
          v_off = page * v_page_stride + slot * v_row_stride;
        } else {
          k_off = int64_t(pos) * k_row_stride;
          v_off = int64_t(pos) * v_row_stride;
        }
      }
      const int s = Geo::swizzled(row, chunk);
      // Out-of-range rows point at the (valid) base and copy 0 bytes.
      cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(k_base[k_off + chunk], k_tile[s], in);
      cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(v_base[v_off + chunk], v_tile[s], in);
    }
  }
};

}  // namespace flashlane::sm90::decode
