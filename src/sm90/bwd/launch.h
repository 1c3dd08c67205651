// launch.h: host side of one WGMMA backward instantiation (included only by the generated
// instantiation files of the kernel table). One workspace allocation on the stream
// (cudaMallocAsync, graph-capturable): LSE (log2) and delta per query row, the fp32 dQ
// accumulator and, in deterministic mode, one counter per accumulator tile and the CTAs' ticket
// counter. Launch sequence,
// all on `stream`, every launch checked:
//   memset(dQ accumulator, counters) -> preprocess [-> sink_grad] -> bwd_kernel -> postprocess [-> zero tails]
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "flashlane/status.h"
#include "sm90/bwd/kernel.h"
#include "sm90/bwd/launch_decl.h"
#include "sm90/bwd/pre_post.h"

namespace flashlane::sm90 {

namespace bwd {

inline Status launch_error(cudaError_t err, const char* what) {
  return Status(ErrorCode::kCudaError,
                std::string("sm90 backward: ") + what + ": " + cudaGetErrorString(err),
                "sm90.launch_failed");
}

}  // namespace bwd

namespace bwd {

/// Packed (varlen) gradients: rows after the last sequence written as zeros (a small launch per
/// packed tensor: dQ when q is packed, dK and dV when the KV layout is).
template <class Element, int D, int DV>
void zero_varlen_tails(const BwdParams& p, cudaStream_t stream) {
  const dim3 tail_grid(64);
  if (p.varlen_q) {
    bwd_zero_tail_kernel<Element><<<tail_grid, kRowThreads, 0, stream>>>(
        p.dq, p.cu_seqlens_q + p.batch, p.rows_q, p.heads_q, D, p.dq_row_stride,
        p.dq_head_stride);
  }
  if (p.kv_layout == KvLayout::kVarlenPacked) {
    bwd_zero_tail_kernel<Element><<<tail_grid, kRowThreads, 0, stream>>>(
        p.dk, p.cu_seqlens_k + p.batch, p.rows_k, p.heads_kv, D, p.dk_row_stride,
        p.dk_head_stride);
    bwd_zero_tail_kernel<Element><<<tail_grid, kRowThreads, 0, stream>>>(
        p.dv, p.cu_seqlens_k + p.batch, p.rows_k, p.heads_kv, DV, p.dv_row_stride,
        p.dv_head_stride);
  }
}

/// Deterministic mode: key tiles per chunk of the ticket order (work.h, deterministic_tile): 16,
/// or all the key tiles when there are fewer. Within a chunk, the resident key tiles of one
/// (KV head, batch entry) add into each query tile one after another, so the last of a chunk
/// starts its adds about `chunk` add latencies (each a bulk reduce landing in L2, a fence and a
/// counter read by the next tile) after the first: a longer chunk waits longer. A shorter one
/// shares each Q/dO tile and dQ accumulator tile among fewer resident CTAs: on an H200, chunks
/// of 2 tiles at 1k-2k tokens (head_dim 128, non-causal) ran 14-15% slower than the earlier
/// order, all of a pair's key tiles at once (docs/sm90_backward.md, "Deterministic mode").
inline int deterministic_key_chunk(const BwdParams& p, int block_n) {
  const int64_t key_tiles = std::max<int64_t>(1, (p.seqlen_k + block_n - 1) / block_n);
  return int(std::min<int64_t>(key_tiles, 16));
}

/// True when some gradient is packed and has tail rows to zero.
inline bool has_packed_gradients(const BwdParams& p) {
  return p.varlen_q || p.kv_layout == KvLayout::kVarlenPacked;
}

}  // namespace bwd

template <int D, int DV, bool kBf16>
Status launch_bwd_wgmma(BwdParams p, cudaStream_t stream) {
  using namespace cute;
  using namespace bwd;
  using Element = std::conditional_t<kBf16, cutlass::bfloat16_t, cutlass::half_t>;
  using Traits = BwdTraits<D, DV, Element>;  // kernel_traits.h: by the row's split
  constexpr int BM = Traits::kBlockM, BN = Traits::kBlockN;
  static_assert(BM == BwdConfig<D, DV>::kBlockM && BN == BwdConfig<D, DV>::kBlockN &&
                    Traits::kStages == BwdConfig<D, DV>::kStages,
                "the traits must run the kernel table's tiles (the variant name reads them)");

  // An empty problem (batch 0 or no query heads, which validation accepts) has nothing to
  // compute; only varlen padding rows, if any, are written (as zeros). The forward returns Ok
  // the same way.
  if (p.batch == 0 || p.heads_q == 0) {
    if (!has_packed_gradients(p)) return Status::Ok();
    zero_varlen_tails<Element, D, DV>(p, stream);
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? Status::Ok() : launch_error(e, "tail zero launch");
  }
  p.block_m = BM;
  p.ws_tiles = p.varlen_q ? (p.rows_q + int64_t(p.batch) * BM) / BM + 1
                        : int64_t(p.batch) * ((p.seqlen_q + BM - 1) / BM);
  const int64_t stat_floats = int64_t(p.heads_q) * p.ws_tiles * BM;
  const int64_t accum_floats = stat_floats * D;
  // Deterministic mode: a counter per accumulator tile, then the CTAs' ticket counter.
  const int64_t counters = p.deterministic ? int64_t(p.heads_q) * p.ws_tiles + 1 : 0;
  const size_t bytes = size_t(2 * stat_floats + accum_floats + counters) * sizeof(float) + 16;
  char* ws = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&ws), bytes, stream);
  if (err != cudaSuccess) return launch_error(err, "workspace allocation");
  p.lse_log2 = reinterpret_cast<float*>(ws);
  p.delta = p.lse_log2 + stat_floats;
  p.dq_accum = p.delta + stat_floats;
  p.dq_semaphore = reinterpret_cast<int*>(p.dq_accum + accum_floats);
  p.tile_ticket = p.deterministic ? p.dq_semaphore + (counters - 1) : nullptr;
  p.det_key_chunk = deterministic_key_chunk(p, BN);

  Status st = Status::Ok();
  auto check = [&](const char* what) {
    if (!st.ok()) return;
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) st = launch_error(e, what);
  };
  err = cudaMemsetAsync(p.dq_accum, 0, size_t(accum_floats + counters) * sizeof(float), stream);
  if (err != cudaSuccess) st = launch_error(err, "workspace clear");

  const dim3 q_grid(unsigned((p.seqlen_q + BM - 1) / BM), unsigned(p.heads_q), unsigned(p.batch));
  if (st.ok() && p.seqlen_q > 0) {
    bwd_preprocess_kernel<Element, DV, BM><<<q_grid, kRowThreads, 0, stream>>>(p);
    check("preprocess launch");
  }
  if (st.ok() && p.dlearnable_sink != nullptr) {
    bwd_sink_grad_kernel<kRowThreads><<<unsigned(p.heads_q), kRowThreads, 0, stream>>>(p);
    check("sink gradient launch");
  }

  if (st.ok() && p.seqlen_k > 0 && p.rows_k > 0) {
    // TMA views (common/tma_views.h): q and dO by varlen_q, k and v by the KV layout.
    const int qb = view_batches(p.varlen_q, p.batch);
    const int kvb = view_batches(p.kv_layout == KvLayout::kVarlenPacked, p.batch);
    // Without queries no tile is ever loaded, but the kernel still takes Q descriptors (and
    // writes dK = dV = 0): describe K instead of a possibly empty Q.
    const bool no_q = p.rows_q == 0;
    auto mQ = no_q ? gmem_view<Element>(p.k, p.rows_k, D, p.heads_kv, kvb, p.k_row_stride,
                                        p.k_head_stride, p.k_batch_stride)
                   : gmem_view<Element>(p.q, p.rows_q, D, p.heads_q, qb, p.q_row_stride,
                                        p.q_head_stride, p.q_batch_stride);
    auto mdO = no_q ? gmem_view<Element>(p.v, p.rows_k, DV, p.heads_kv, kvb, p.v_row_stride,
                                         p.v_head_stride, p.v_batch_stride)
                    : gmem_view<Element>(p.dout, p.rows_q, DV, p.heads_q, qb, p.do_row_stride,
                                         p.do_head_stride, p.do_batch_stride);
    auto mK = gmem_view<Element>(p.k, p.rows_k, D, p.heads_kv, kvb, p.k_row_stride,
                                 p.k_head_stride, p.k_batch_stride);
    auto mV = gmem_view<Element>(p.v, p.rows_k, DV, p.heads_kv, kvb, p.v_row_stride,
                                 p.v_head_stride, p.v_batch_stride);
    BwdKernelArgs<Traits> args{
        p,
        {make_tma_copy(SM90_TMA_LOAD{}, mQ, take<0, 2>(typename Traits::SmemLayoutQ{}),
                       Shape<Int<BM>, Int<D>>{}, _1{}),
         make_tma_copy(SM90_TMA_LOAD{}, mdO, take<0, 2>(typename Traits::SmemLayoutDo{}),
                       Shape<Int<BM>, Int<DV>>{}, _1{}),
         make_tma_copy(SM90_TMA_LOAD{}, mK, typename Traits::SmemLayoutK{},
                       Shape<Int<BN>, Int<D>>{}, _1{}),
         make_tma_copy(SM90_TMA_LOAD{}, mV, typename Traits::SmemLayoutV{},
                       Shape<Int<BN>, Int<DV>>{}, _1{})}};
    auto kernel = bwd_kernel<Traits>;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               Traits::kSharedBytes);
    if (err != cudaSuccess) {
      st = launch_error(err, "shared memory attribute");
    } else {
      const dim3 grid(unsigned((p.seqlen_k + BN - 1) / BN), unsigned(p.heads_kv),
                      unsigned(p.batch));
      kernel<<<grid, Traits::kThreads, Traits::kSharedBytes, stream>>>(args);
      check("main kernel launch");
    }
  }

  if (st.ok() && p.seqlen_q > 0) {
    bwd_postprocess_kernel<Traits><<<q_grid, postprocess_threads<Traits>(), 0, stream>>>(p);
    check("postprocess launch");
  }
  if (st.ok() && has_packed_gradients(p)) {
    zero_varlen_tails<Element, D, DV>(p, stream);
    check("tail zero launch");
  }
  err = cudaFreeAsync(ws, stream);
  if (st.ok() && err != cudaSuccess) st = launch_error(err, "workspace release");
  return st;
}

}  // namespace flashlane::sm90

// One instantiation of the kernel table (generated files, cmake/sm90_kernels.cmake).
#define FLASHLANE_SM90_BWD_INSTANTIATE(D, DV, BF16)                             \
  template flashlane::Status flashlane::sm90::launch_bwd_wgmma<D, DV, BF16>(          \
      flashlane::sm90::BwdParams, cudaStream_t);
