// pre_post.h: the two row-wise kernels around the main backward kernel.
//   preprocess:  delta = rowsum(dO * O) (fp32), LSE in log2 units (+inf for rows that see no
//                key, -inf LSE), and the fp32 dQ accumulator zeroed (atomic mode).
//   postprocess: dQ = softmax_scale * accumulator, converted to the output dtype.
// One warp per (query row, head); rows are the workspace rows (params.h).
#pragma once

#include <cmath>

#include "sm90/bwd/params.h"
#include "sm90/bwd_mma/tiles.h"

namespace flashlane::sm90::bwd {

constexpr int kRowsPerCta = kWarps;
constexpr float kLog2e = 1.4426950408889634f;

struct RowIndex {
  int b;
  int64_t row;  // row in the tensor's row numbering (token in sequence, or packed token)
};

__device__ inline RowIndex row_index(const BwdParams& p, int64_t ws_row) {
  if (p.varlen) return {0, ws_row};
  return {int(ws_row / p.seqlen_q), ws_row % p.seqlen_q};
}

template <class T>
__global__ void __launch_bounds__(kThreads) preprocess_kernel(const BwdParams p, int head_dim,
                                                              int head_dim_v) {
  const int64_t ws_row = int64_t(blockIdx.x) * kRowsPerCta + threadIdx.x / 32;
  const int h = blockIdx.y, lane = threadIdx.x % 32;
  if (ws_row >= p.ws_rows) return;
  const RowIndex ri = row_index(p, ws_row);
  const T* o = static_cast<const T*>(p.o) + ri.b * p.o_batch_stride + ri.row * p.o_row_stride +
               h * p.o_head_stride;
  const T* d = static_cast<const T*>(p.dout) + ri.b * p.do_batch_stride +
               ri.row * p.do_row_stride + h * p.do_head_stride;
  constexpr int kVec = 8;
  float sum = 0.f;
  for (int c = lane * kVec; c < head_dim_v; c += 32 * kVec) {
    const uint4 ov = *reinterpret_cast<const uint4*>(o + c);
    const uint4 dv = *reinterpret_cast<const uint4*>(d + c);
    const T* oe = reinterpret_cast<const T*>(&ov);
    const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
    for (int e = 0; e < kVec; ++e) sum += to_float(oe[e]) * to_float(de[e]);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  const int64_t at = int64_t(h) * p.ws_rows + ws_row;
  if (lane == 0) {
    const float lse = p.lse[ri.b * p.lse_batch_stride + h * p.lse_head_stride +
                            ri.row * p.lse_row_stride];
    p.delta[at] = sum;
    p.lse_log2[at] = lse == -INFINITY ? INFINITY : lse * kLog2e;
  }
  if (p.dq_accum != nullptr) {
    float* acc = p.dq_accum + at * head_dim;
    for (int c = lane * 4; c < head_dim; c += 32 * 4) {
      *reinterpret_cast<float4*>(acc + c) = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) postprocess_kernel(const BwdParams p, int head_dim) {
  const int64_t ws_row = int64_t(blockIdx.x) * kRowsPerCta + threadIdx.x / 32;
  const int h = blockIdx.y, lane = threadIdx.x % 32;
  if (ws_row >= p.ws_rows) return;
  const RowIndex ri = row_index(p, ws_row);
  T* dq = static_cast<T*>(p.dq) + ri.b * p.dq_batch_stride + ri.row * p.dq_row_stride +
          h * p.dq_head_stride;
  const float* acc = p.dq_accum + (int64_t(h) * p.ws_rows + ws_row) * head_dim;
  for (int c = lane * 4; c < head_dim; c += 32 * 4) {
    const float4 a = *reinterpret_cast<const float4*>(acc + c);
    dq[c + 0] = to_elem<T>(a.x * p.softmax_scale);
    dq[c + 1] = to_elem<T>(a.y * p.softmax_scale);
    dq[c + 2] = to_elem<T>(a.z * p.softmax_scale);
    dq[c + 3] = to_elem<T>(a.w * p.softmax_scale);
  }
}

}  // namespace flashlane::sm90::bwd
