// combine.h: merges the split-KV partials of the decode kernel (kernel.h) into O and LSE.
//
// Split s of query row (b, h, i) holds O_s, normalized by its own sum, and its natural-log
// LSE_s (-inf when the split saw no key). With LSE = log(sum_s exp(LSE_s)), computed after
// subtracting the maximum,
//   O = sum_s exp(LSE_s - LSE) * O_s.
// A row whose every split is -inf writes O = 0 and LSE = -inf. An attention sink (problem.h)
// joins the LSE sum as one more term exp(sink) without an O: LSE = log(exp(sink) + sum_s
// exp(LSE_s)), so a row whose every split is empty writes O = 0 and LSE = sink.
//
// One CTA of four warps per query row. Every warp reduces the LSEs (lane-strided loads); warp w
// then sums splits w, w + 4, ... (each lane owning head_dim / 32 features, four splits' loads in
// flight), and the four warps' sums are added in warp order through shared memory: the same
// order on every run (deterministic). The kernel is launched as a programmatic dependent of the
// attention kernel (launch.h): it waits for that grid with griddepcontrol.wait before reading
// the partials, so its launch overlaps the attention kernel's tail.
#pragma once

#include "sm90/decode/kernel.h"
#include "sm90/decode/params.h"

namespace flashlane::sm90::decode {

inline constexpr int kCombineWarps = 4;

template <int kHeadDim, bool kBf16>
__global__ void __launch_bounds__(32 * kCombineWarps)
    decode_combine_kernel(const __grid_constant__ DecodeParams p) {
  using T = HalfTraits<kBf16>;
  using Element = typename T::Element;
  constexpr int kCols = kHeadDim / 32;
  asm volatile("griddepcontrol.wait;" ::: "memory");

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t rows = int64_t(p.batch) * p.heads_q * p.seqlen_q;
  const int64_t row = blockIdx.x;
  const int i = int(row % p.seqlen_q);
  const int h = int((row / p.seqlen_q) % p.heads_q);
  const int b = int(row / (int64_t(p.seqlen_q) * p.heads_q));
  const float* lse_s = p.lse_partial + row;  // split s at lse_s[s * rows]

  float lse_max = -INFINITY;
  for (int s = lane; s < p.num_splits; s += 32) lse_max = fmaxf(lse_max, lse_s[s * rows]);
  CUTE_UNROLL
  for (int off = 16; off > 0; off /= 2) lse_max = fmaxf(lse_max, __shfl_xor_sync(0xffffffffu, lse_max, off));
  const float sink = p.learnable_sink != nullptr ? p.learnable_sink[h] : -INFINITY;
  lse_max = fmaxf(lse_max, sink);
  float lse = -INFINITY;
  if (lse_max != -INFINITY) {
    float sum = 0.f;
    for (int s = lane; s < p.num_splits; s += 32) sum += __expf(lse_s[s * rows] - lse_max);
    CUTE_UNROLL
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (sink != -INFINITY) sum += __expf(sink - lse_max);
    lse = lse_max + __logf(sum);
  }

  float acc[kCols];
  CUTE_UNROLL
  for (int j = 0; j < kCols; ++j) acc[j] = 0.f;
  if (lse != -INFINITY) {
#pragma unroll 4
    for (int s = warp; s < p.num_splits; s += kCombineWarps) {
      const float w = __expf(lse_s[s * rows] - lse);
      const float* src = p.o_partial + (s * rows + row) * kHeadDim + lane * kCols;
      CUTE_UNROLL
      for (int j = 0; j < kCols; j += 2) {
        const float2 v = *reinterpret_cast<const float2*>(src + j);
        acc[j] += w * v.x;
        acc[j + 1] += w * v.y;
      }
    }
  }
  __shared__ float warp_acc[kCombineWarps][kHeadDim];
  CUTE_UNROLL
  for (int j = 0; j < kCols; ++j) warp_acc[warp][lane * kCols + j] = acc[j];
  __syncthreads();

  auto* o = static_cast<Element*>(p.o) + b * p.o_batch_stride + int64_t(i) * p.o_row_stride +
            int64_t(h) * p.o_head_stride;
  for (int f = 2 * threadIdx.x; f < kHeadDim; f += 2 * 32 * kCombineWarps) {
    float x0 = 0.f, x1 = 0.f;
    CUTE_UNROLL
    for (int w = 0; w < kCombineWarps; ++w) {
      x0 += warp_acc[w][f];
      x1 += warp_acc[w][f + 1];
    }
    *reinterpret_cast<uint32_t*>(o + f) = T::pack(x0, x1);
  }
  if (p.lse != nullptr && threadIdx.x == 0) {
    p.lse[b * p.lse_batch_stride + int64_t(h) * p.lse_head_stride + int64_t(i) * p.lse_row_stride] = lse;
  }
}

}  // namespace flashlane::sm90::decode
