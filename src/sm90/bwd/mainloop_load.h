// mainloop_load.h: the producer warp of the WGMMA backward. Per CTA: K and V of the key tile once
// (one transaction barrier), then for every visited (query head, query tile) Q with its LSE
// (log2 units) and dO with its delta, through two PipelineTmaAsync rings so the consumers'
// S^T GEMM can start while dO is still in flight. The row statistics ride the same barriers
// as 1-D bulk copies of one aligned workspace block each.
#pragma once

#include <cute/tensor.hpp>
#include <cute/arch/copy_sm90_tma.hpp>

#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd/work.h"

namespace flashlane::sm90::bwd {

template <class Traits>
struct BwdLoad {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kHeadDimV = Traits::kHeadDimV;

  struct TmaArgs {
    typename Traits::TmaQ tma_q;
    typename Traits::TmaDo tma_do;
    typename Traits::TmaK tma_k;
    typename Traits::TmaV tma_v;
  };

  /// Called by the 32 lanes of the producer warp; lane 0 issues.
  __device__ static void run(const TmaArgs& tma, const BwdParams& p, SharedStorage& ss,
                             Pipeline& pipe_q, Pipeline& pipe_do, const KeyTileWork& w,
                             bool issue) {
    using BarrierType = cutlass::arch::ClusterTransactionBarrier::ValueType;
    // Packed (varlen) tensors are one batch entry; sequences start at a row offset.
    const bool packed_kv = p.kv_layout == KvLayout::kVarlenPacked;
    const int q_batch = p.varlen_q ? 0 : w.b;
    const int kv_batch = packed_kv ? 0 : w.b;
    const int q_batches = p.varlen_q ? 1 : p.batch;
    const int kv_batches = packed_kv ? 1 : p.batch;
    Tensor mQ = tma.tma_q.get_tma_tensor(make_shape(int(p.rows_q), int(kHeadDim), p.heads_q, q_batches));
    Tensor mdO = tma.tma_do.get_tma_tensor(make_shape(int(p.rows_q), int(kHeadDimV), p.heads_q, q_batches));
    Tensor mK = tma.tma_k.get_tma_tensor(make_shape(int(p.rows_k), int(kHeadDim), p.heads_kv, kv_batches));
    Tensor mV = tma.tma_v.get_tma_tensor(make_shape(int(p.rows_k), int(kHeadDimV), p.heads_kv, kv_batches));

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDo{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});

    // Key tile: rows past the tensor are zero-filled by TMA; rows of the next sequence or past
    // seqused_k are zeroed by the consumers before use.
    Tensor gK = local_tile(domain_offset(make_coord(w.k_start, _0{}), mK(_, _, w.h_kv, kv_batch)),
                           Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(w.n_block, _0{}));
    Tensor gV = local_tile(domain_offset(make_coord(w.k_start, _0{}), mV(_, _, w.h_kv, kv_batch)),
                           Shape<Int<kBlockN>, Int<kHeadDimV>>{}, make_coord(w.n_block, _0{}));
    auto [tKgK, tKsK] = tma_partition(tma.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                      group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(tma.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                      group_modes<0, 2>(gV));
    if (issue) {
      ss.kv_full.arrive_and_expect_tx(Traits::kTmaBytesK + Traits::kTmaBytesV);
      copy(tma.tma_k.with(reinterpret_cast<BarrierType&>(ss.kv_full)), tKgK, tKsK);
      copy(tma.tma_v.with(reinterpret_cast<BarrierType&>(ss.kv_full)), tVgV, tVsV);
    }

    PipelineState state = cutlass::make_producer_start_state<Pipeline>();
    for (int t = 0; t < w.count; ++t) {
      const int hq = w.head_q(t), m = w.m_block(t);
      Tensor gQ = local_tile(domain_offset(make_coord(w.q_start, _0{}), mQ(_, _, hq, q_batch)),
                             Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(m, _0{}));
      Tensor gdO = local_tile(domain_offset(make_coord(w.q_start, _0{}), mdO(_, _, hq, q_batch)),
                              Shape<Int<kBlockM>, Int<kHeadDimV>>{}, make_coord(m, _0{}));
      auto [tQgQ, tQsQ] = tma_partition(tma.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                        group_modes<0, 2>(gQ));
      auto [tdOgdO, tdOsdO] = tma_partition(tma.tma_do, _0{}, Layout<_1>{},
                                            group_modes<0, 2>(sdO), group_modes<0, 2>(gdO));
      const int64_t stat_row = int64_t(hq) * p.ws_tiles * kBlockM + (w.tile_base + m) * kBlockM;
      const int stage = state.index();
      if (issue) {
        pipe_q.producer_acquire(state);
        copy(tma.tma_q.with(*pipe_q.producer_get_barrier(state)), tQgQ, tQsQ(_, stage));
        SM90_BULK_COPY_G2S::copy(p.lse_log2 + stat_row, pipe_q.producer_get_barrier(state),
                                 ss.lse_log2.data() + stage * kBlockM, Traits::kRowStatBytes);
        pipe_do.producer_acquire(state);
        copy(tma.tma_do.with(*pipe_do.producer_get_barrier(state)), tdOgdO, tdOsdO(_, stage));
        SM90_BULK_COPY_G2S::copy(p.delta + stat_row, pipe_do.producer_get_barrier(state),
                                 ss.delta.data() + stage * kBlockM, Traits::kRowStatBytes);
      }
      ++state;
    }
  }
};

}  // namespace flashlane::sm90::bwd
