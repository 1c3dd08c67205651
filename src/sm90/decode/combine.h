// combine.h: merges the split-KV partials of the decode kernel (kernel.h) into O and LSE.
//
// Split s of query row (b, h, i) holds O_s, normalized by its own sum, and its natural-log
// LSE_s (-inf when the split saw no key). With LSE = log(sum_s exp(LSE_s)), computed after
// subtracting the maximum,
//   O = sum_s exp(LSE_s - LSE) * O_s,
// summed in split order (deterministic). A row whose every split is -inf writes O = 0 and
// LSE = -inf. One warp per query row; each lane owns head_dim / 32 contiguous features.
#pragma once

#include <cute/arch/util.hpp>

#include "sm90/decode/kernel.h"
#include "sm90/decode/params.h"

namespace flashlane::sm90::decode {

inline constexpr int kCombineRowsPerCta = 4;

template <int kHeadDim, bool kBf16>
__global__ void __launch_bounds__(32 * kCombineRowsPerCta)
    decode_combine_kernel(const __grid_constant__ DecodeParams p) {
  using T = HalfTraits<kBf16>;
  using Element = typename T::Element;
  constexpr int kCols = kHeadDim / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  const int64_t row = int64_t(blockIdx.x) * kCombineRowsPerCta + threadIdx.x / 32;
  if (row >= rows) return;
  const int i = int(row % p.seqlen_q);
  const int h = int((row / p.seqlen_q) % p.heads_q);
  const int b = int(row / (int64_t(p.seqlen_q) * p.heads_q));

  float lse_max = -INFINITY;
  for (int s = lane; s < p.num_splits; s += 32) lse_max = fmaxf(lse_max, p.lse_partial[s * rows + row]);
  CUTE_UNROLL
  for (int off = 16; off > 0; off /= 2) lse_max = fmaxf(lse_max, __shfl_xor_sync(0xffffffffu, lse_max, off));

  float acc[kCols];
  CUTE_UNROLL
  for (int j = 0; j < kCols; ++j) acc[j] = 0.f;
  float lse = -INFINITY;
  if (lse_max != -INFINITY) {
    float sum = 0.f;
    for (int s = 0; s < p.num_splits; ++s) sum += __expf(p.lse_partial[s * rows + row] - lse_max);
    lse = lse_max + __logf(sum);
    for (int s = 0; s < p.num_splits; ++s) {
      const float w = __expf(p.lse_partial[s * rows + row] - lse);
      const float* src = p.o_partial + (s * rows + row) * kHeadDim + lane * kCols;
      CUTE_UNROLL
      for (int j = 0; j < kCols; j += 2) {
        const float2 v = *reinterpret_cast<const float2*>(src + j);
        acc[j] += w * v.x;
        acc[j + 1] += w * v.y;
      }
    }
  }
  auto* o = static_cast<Element*>(p.o) + b * p.o_batch_stride + int64_t(i) * p.o_row_stride +
            int64_t(h) * p.o_head_stride + lane * kCols;
  CUTE_UNROLL
  for (int j = 0; j < kCols; j += 2) *reinterpret_cast<uint32_t*>(o + j) = T::pack(acc[j], acc[j + 1]);
  if (p.lse != nullptr && lane == 0) {
    p.lse[b * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + int64_t(i) * p.lse_row_stride] = lse;
  }
}

}  // namespace flashlane::sm90::decode
