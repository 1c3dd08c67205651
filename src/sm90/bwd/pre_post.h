// pre_post.h: the kernels around the WGMMA backward's main kernel. Grid (query tiles, query
// heads, batch); one CTA per workspace tile (params.h).
//   preprocess:  delta = rowsum(dO * O) (fp32) and LSE in log2 units. Where LSE is -inf (a
//                row that sees no key) lse_log2 is +inf, so every P of the row is
//                exp2(-inf) = 0, and delta is 0 whatever O holds there, so dS = P * (dP - delta)
//                is 0, never NaN; rows of the tile past the sequence get +inf / 0.
//   sink_grad:   dlearnable_sink (problem.h) from the preprocess's LSE and delta, when asked.
//   postprocess: dQ = softmax_scale * accumulator in the output dtype, undoing the
//                accumulator's MMA thread order (kernel_traits.h).
//   zero_tail:   varlen rows after the last sequence of dQ, dK, dV written as zeros.
#pragma once

#include <cute/tensor.hpp>

#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/params.h"
#include "sm90/common/score_math.h"
#include "sm90/common/seqlen.h"
#include "sm90/common/wgmma.h"

namespace flashlane::sm90::bwd {

constexpr int kRowThreads = 256;

/// First row and length of query sequence b (common/seqlen.h).
struct QuerySeq {
  int64_t q_start;
  int len_q;
};

__device__ inline QuerySeq query_seq(const BwdParams& p, int b) {
  const SeqInfo s = SeqInfo::load_q(p, b);
  return {s.offset_q, s.len_q};
}

template <class Element, int kHeadDimV, int kBlockM>
__global__ void __launch_bounds__(kRowThreads) bwd_preprocess_kernel(const BwdParams p) {
  const int m = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const QuerySeq s = query_seq(p, b);
  if (m * kBlockM >= s.len_q) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t ws = int64_t(h) * p.ws_tiles * kBlockM + (q_tile_base(p, b) + m) * kBlockM;
  const int64_t batch_o = p.varlen_q ? 0 : int64_t(b) * p.o_batch_stride;
  const int64_t batch_do = p.varlen_q ? 0 : int64_t(b) * p.do_batch_stride;
  const int64_t batch_lse = p.varlen_q ? 0 : int64_t(b) * p.lse_batch_stride;
  constexpr int kVec = 8;  // 16 bytes of 16-bit elements
  for (int r = warp; r < kBlockM; r += kRowThreads / 32) {
    const int i = m * kBlockM + r;
    float sum = 0.f, lse_log2 = INFINITY;
    if (i < s.len_q) {
      const int64_t row = s.q_start + i;
      const Element* o = static_cast<const Element*>(p.o) + batch_o + row * p.o_row_stride +
                         int64_t(h) * p.o_head_stride;
      const Element* d = static_cast<const Element*>(p.dout) + batch_do +
                         row * p.do_row_stride + int64_t(h) * p.do_head_stride;
      for (int c = lane * kVec; c < kHeadDimV; c += 32 * kVec) {
        const uint4 ov = *reinterpret_cast<const uint4*>(o + c);
        const uint4 dv = *reinterpret_cast<const uint4*>(d + c);
        const Element* oe = reinterpret_cast<const Element*>(&ov);
        const Element* de = reinterpret_cast<const Element*>(&dv);
        CUTE_UNROLL
        for (int e = 0; e < kVec; ++e) sum += float(oe[e]) * float(de[e]);
      }
      CUTE_UNROLL
      for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const float lse = p.lse[batch_lse + int64_t(h) * p.lse_head_stride + row * p.lse_row_stride];
      const bool sees_no_key = lse == -INFINITY;
      lse_log2 = sees_no_key ? INFINITY : lse * kLog2eF;
      if (sees_no_key) sum = 0.f;
    }
    if (lane == 0) {
      p.delta[ws + r] = i < s.len_q ? sum : 0.f;
      p.lse_log2[ws + r] = lse_log2;
    }
  }
}

/// The attention sinks' gradient (problem.h): dsink_h = -sum over batch and query rows of head h
/// of P_sink * delta, with P_sink = exp(sink_h - LSE) = exp2(sink_h * log2(e) - lse_log2). Grid
/// (heads_q); thread t sums rows t, t + kThreads, ... of each sequence in batch order and the
/// CTA adds its threads in a fixed tree, so the result is the same on every run. Runs after the
/// preprocess, on the same stream.
template <int kThreads>
__global__ void __launch_bounds__(kThreads) bwd_sink_grad_kernel(const BwdParams p) {
  const int h = blockIdx.x;
  const float sink_log2 = p.learnable_sink[h] * kLog2eF;
  float acc = 0.f;
  for (int b = 0; b < p.batch; ++b) {
    const QuerySeq s = query_seq(p, b);
    const int64_t ws = (int64_t(h) * p.ws_tiles + q_tile_base(p, b)) * p.block_m;
    for (int i = threadIdx.x; i < s.len_q; i += kThreads) {
      acc = fmaf(score_exp2(sink_log2 - p.lse_log2[ws + i]), p.delta[ws + i], acc);
    }
  }
  CUTE_UNROLL
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  __shared__ float warp_sum[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sum[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    CUTE_UNROLL
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sum[w];
    p.dlearnable_sink[h] = -total;
  }
}

/// Threads of one postprocess CTA: the threads whose MMA order the accumulator tile keeps.
template <class Traits>
constexpr int postprocess_threads() {
  return Traits::kWide ? Traits::kThreadsPerWarpgroup : Traits::kConsumerThreads;
}

/// Writes dQ = softmax_scale * acc for one fragment: acc(i) at tile coordinate tc(i) shifted by
/// col0 columns; rows past the sequence skipped. Columns come in adjacent pairs (4-byte stores).
template <class Element, class Acc, class Coord>
__device__ void store_dq_fragment(const BwdParams& p, Acc& acc, Coord const& tc, Element* dq,
                                  int row0, int col0, int len_q) {
  auto out = convert_fragment<Element>(acc);
  Tensor out_rc = rowcol_view(out);
  Tensor tc_rc = rowcol_view(tc);
  CUTE_UNROLL
  for (int r = 0; r < size<0>(out_rc); ++r) {
    const int row = row0 + get<0>(tc_rc(r, 0));
    if (row >= len_q) continue;
    Element* drow = dq + int64_t(row) * p.dq_row_stride + col0;
    CUTE_UNROLL
    for (int c = 0; c < size<1>(out_rc); c += 2) {
      cutlass::Array<Element, 2> pair;
      pair[0] = out_rc(r, c);
      pair[1] = out_rc(r, c + 1);
      *reinterpret_cast<cutlass::Array<Element, 2>*>(drow + get<1>(tc_rc(r, c))) = pair;
    }
  }
}

template <class Traits>
__global__ void __launch_bounds__(postprocess_threads<Traits>()) bwd_postprocess_kernel(
    const BwdParams p) {
  using Element = typename Traits::Element;
  constexpr int kBlockM = Traits::kBlockM, kHeadDim = Traits::kHeadDim;
  constexpr int kThreads = postprocess_threads<Traits>();
  const int m = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const QuerySeq s = query_seq(p, b);
  if (m * kBlockM >= s.len_q) return;
  const int t = threadIdx.x;
  const float* src = p.dq_accum +
                     (int64_t(h) * p.ws_tiles + q_tile_base(p, b) + m) * Traits::kDqTileFloats;
  const int64_t batch_term = p.varlen_q ? 0 : int64_t(b) * p.dq_batch_stride;
  Element* dq = static_cast<Element*>(p.dq) + batch_term + int64_t(h) * p.dq_head_stride +
                s.q_start * p.dq_row_stride;
  if constexpr (Traits::kWide) {
    // Chunk c: 64 columns from 64c, element i of thread t at [c * kDqChunkFloats + i * 128 + t].
    typename Traits::TiledMmaDqChunk mma;
    auto thr = mma.get_thread_slice(t);
    Tensor tc = thr.partition_C(make_identity_tensor(Shape<_64, Int<Traits::kDqChunkCols>>{}));
    CUTE_UNROLL
    for (int c = 0; c < Traits::kDqChunks; ++c) {
      Tensor acc = partition_fragment_C(mma, Shape<_64, Int<Traits::kDqChunkCols>>{});
      CUTE_UNROLL
      for (int i = 0; i < size(acc); ++i) {
        acc(i) = src[c * Traits::kDqChunkFloats + i * kThreads + t] * p.softmax_scale;
      }
      store_dq_fragment(p, acc, tc, dq, m * kBlockM, c * Traits::kDqChunkCols, s.len_q);
    }
  } else {
    typename Traits::TiledMmaDQ mma;
    auto thr = mma.get_thread_slice(t);
    Tensor tc = thr.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDim>>{}));
    Tensor acc = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    CUTE_UNROLL
    for (int i = 0; i < size(acc); ++i) acc(i) = src[i * kThreads + t] * p.softmax_scale;
    store_dq_fragment(p, acc, tc, dq, m * kBlockM, 0, s.len_q);
  }
}

/// Varlen: rows [first_row, rows) of a packed [rows, heads, dim] tensor set to 0, where
/// first_row = *end_of_sequences (cu_seqlens[batch], read on the device).
template <class Element>
__global__ void __launch_bounds__(kRowThreads) bwd_zero_tail_kernel(
    void* base, const int32_t* end_of_sequences, int64_t rows, int heads, int dim,
    int64_t row_stride, int64_t head_stride) {
  const int64_t first = *end_of_sequences;
  const int64_t total = (rows - first) * heads * dim;
  for (int64_t idx = int64_t(blockIdx.x) * kRowThreads + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * kRowThreads) {
    const int64_t row = first + idx / (int64_t(heads) * dim);
    const int h = int((idx / dim) % heads), c = int(idx % dim);
    static_cast<Element*>(base)[row * row_stride + int64_t(h) * head_stride + c] = Element(0.f);
  }
}

}  // namespace flashlane::sm90::bwd
