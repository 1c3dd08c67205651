// tile_order.h: the forward's linear tile index -> (m_block, head, batch), host and device code
// (fwd/tile_scheduler.h uses it; tests/cpu/test_sm90_kernel_table.cpp checks it is a bijection).
//
// The (batch, head) pairs are taken in groups of `group`; within a group the M-blocks run from
// the last to the first, each M-block of every pair of the group before the next. Under causal
// masks the last M-blocks see the most keys, so the longest tiles start first; the tiles that run
// at the same time share the K/V of the group's few heads in L2. group = 1 is one pair's M-blocks
// in a row; the last group may hold fewer pairs.
#pragma once

#include "sm90/common/host_device.h"

namespace flashlane::sm90 {

struct TileCoord {
  int m_block;
  int head;
  int batch;
};

/// num_tiles = num_m_blocks * heads * batch; 1 <= group <= heads * batch.
FLASHLANE_HOST_DEVICE inline TileCoord decode_tile(int tile, int num_m_blocks, int heads,
                                                   int num_tiles, int group) {
  const int group_tiles = group * num_m_blocks;
  const int g = tile / group_tiles;
  const int r = tile - g * group_tiles;
  const int pairs = num_tiles / num_m_blocks;
  const int rest = pairs - g * group;
  const int in_group = group < rest ? group : rest;
  const int m_rev = r / in_group;
  const int bh = g * group + (r - m_rev * in_group);
  return TileCoord{num_m_blocks - 1 - m_rev, bh % heads, bh / heads};
}

}  // namespace flashlane::sm90
