// params.h: the backward's view of its launch parameters (BwdParams, common/params.h) and the
// workspace tiling shared by its kernels.
#pragma once

#include <cstdint>

#include "sm90/common/params.h"

namespace flashlane::sm90 {

/// First workspace tile of sequence b. Varlen: sequences start at packed row
/// cu_seqlens_q[b]; adding b tiles of slack keeps tiles of different sequences apart, so
/// (cu_seqlens_q[b] + b * block_m) / block_m never overlaps the previous sequence's tiles.
__device__ inline int64_t q_tile_base(const BwdParams& p, int b) {
  if (p.varlen_q) return (int64_t(p.cu_seqlens_q[b]) + int64_t(b) * p.block_m) / p.block_m;
  return int64_t(b) * ((p.seqlen_q + p.block_m - 1) / p.block_m);
}

}  // namespace flashlane::sm90
