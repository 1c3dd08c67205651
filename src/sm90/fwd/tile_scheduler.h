// tile_scheduler.h: which (m_block, head, batch) tile each CTA of the forward works on (the
// sequence's lengths and offsets come from common/seqlen.h).
//
// One linear index space over all tiles (a 1D grid, so batch * heads is never bounded by a
// grid dimension), in the order of common/tile_order.h: M-blocks longest first across groups of
// p.tile_group (batch, head) pairs.
//
// Non-persistent: one tile per CTA (grid = num_tiles). Persistent: grid = #SMs and each CTA
// strides through the tiles; the producer and the consumers walk the same sequence, and their
// pipeline states carry across tiles, so a dynamic (atomic-counter) scheduler or an LPT order
// can replace next() without touching the mainloop.
#pragma once

#include <cstdint>

#include "sm90/common/params.h"
#include "sm90/common/seqlen.h"
#include "sm90/common/tile_order.h"

namespace flashlane::sm90 {

struct FwdTileScheduler {
  int num_m_blocks;
  int heads;
  int num_tiles;
  int group;  // (batch, head) pairs per group
  bool persistent;

  __device__ explicit FwdTileScheduler(const FwdParams& p)
      : num_m_blocks(p.num_m_blocks), heads(p.heads_q), num_tiles(p.num_tiles),
        group(p.tile_group > 0 ? p.tile_group : 1), persistent(p.persistent) {}

  __device__ int first() const { return int(blockIdx.x); }
  __device__ int next(int tile) const { return persistent ? tile + int(gridDim.x) : num_tiles; }
  __device__ bool valid(int tile) const { return tile < num_tiles; }

  __device__ TileCoord decode(int tile) const {
    return decode_tile(tile, num_m_blocks, heads, num_tiles, group);
  }
};

}  // namespace flashlane::sm90
