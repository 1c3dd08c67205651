// mainloop_tma_wgmma.h: the two halves of the forward mainloop for one tile.
//
//   load():    the producer warp. Q once per tile (its own transaction barrier), then K and V
//              blocks from the last visible one down to the first through two PipelineTmaAsync
//              rings (K and V separately, so S = Q K^T starts while V is still in flight).
//   compute(): the consumer warpgroups (64 query rows each). Per K/V block:
//              S = Q K^T (WGMMA SS) -> softcap -> mask (boundary blocks only) -> online softmax
//              -> P (fp32 -> 16-bit in registers) -> O = O * correction + P V (WGMMA RS).
//
// Blocks run from high to low key index so that, under causal/window masks, the block that
// needs the per-element mask and the ragged last block come first.
//
// NaN safety: keys at or past the sequence's used length are masked by select (mask.h). Their
// V rows would still reach P V (0 * NaN = NaN), so in the one block that straddles the end of
// the keys the consumers overwrite those V rows with zeros in shared memory before the GEMM.
//
// Overlap (FlashAttention-3): the softmax of block n runs while P(n+1) V(n+1) is on the tensor
// cores (intra-warpgroup), and optionally the two consumer warpgroups take turns issuing GEMMs
// (pingpong), so one's softmax overlaps the other's GEMMs.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "sm90/fwd/kernel_traits.h"
#include "sm90/common/mask.h"
#include "sm90/common/params.h"
#include "sm90/fwd/softmax.h"
#include "sm90/fwd/tile_scheduler.h"
#include "sm90/common/wgmma.h"

namespace flashlane::sm90 {

template <class Traits>
struct FwdMainloop {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using PipelineKV = typename Traits::PipelineKV;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kHeadDimV = Traits::kHeadDimV;

  struct TmaArgs {
    typename Traits::TmaQ tma_q;
    typename Traits::TmaK tma_k;
    typename Traits::TmaV tma_v;
  };

  /// Producer: called by all 32 lanes of the producer warp; `issue` is true on one lane.
  __device__ static void load(const TmaArgs& tma, const FwdParams& p, SharedStorage& ss,
                              PipelineKV& pipe_k, PipelineKV& pipe_v, PipelineState& state,
                              const TileCoord& tile, const SeqInfo& seq,
                              const KeyBlockRange& range, bool issue) {
    // Packed (varlen) tensors are one batch entry; the sequence starts at a row offset and TMA
    // coordinates are shifted there.
    const bool packed_kv = p.kv_layout == KvLayout::kVarlenPacked;
    const int q_batch = p.varlen_q ? 0 : tile.batch;
    const int kv_batch = packed_kv ? 0 : tile.batch;
    const int q_batches = p.varlen_q ? 1 : p.batch;
    const int kv_batches = packed_kv ? 1 : p.batch;
    const int head_kv = tile.head / (p.heads_q / p.heads_kv);

    Tensor mQ = tma.tma_q.get_tma_tensor(
        make_shape(int(p.rows_q), int(kHeadDim), p.heads_q, q_batches));
    Tensor mK = tma.tma_k.get_tma_tensor(
        make_shape(int(p.rows_k), int(kHeadDim), p.heads_kv, kv_batches));
    Tensor mV = tma.tma_v.get_tma_tensor(
        make_shape(int(p.rows_k), int(kHeadDimV), p.heads_kv, kv_batches));
    Tensor gQ = local_tile(domain_offset(make_coord(seq.offset_q, _0{}),
                                         mQ(_, _, tile.head, q_batch)),
                           Shape<Int<kBlockM>, Int<kHeadDim>>{}, make_coord(tile.m_block, _0{}));
    Tensor gK = local_tile(domain_offset(make_coord(seq.offset_k, _0{}),
                                         mK(_, _, head_kv, kv_batch)),
                           Shape<Int<kBlockN>, Int<kHeadDim>>{}, make_coord(_, _0{}));
    Tensor gV = local_tile(domain_offset(make_coord(seq.offset_k, _0{}),
                                         mV(_, _, head_kv, kv_batch)),
                           Shape<Int<kBlockN>, Int<kHeadDimV>>{}, make_coord(_, _0{}));

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});

    auto [tQgQ, tQsQ] = tma_partition(tma.tma_q, _0{}, Layout<_1>{}, group_modes<0, 2>(sQ),
                                      group_modes<0, 2>(gQ));
    auto [tKgK, tKsK] = tma_partition(tma.tma_k, _0{}, Layout<_1>{}, group_modes<0, 2>(sK),
                                      group_modes<0, 2>(gK));
    auto [tVgV, tVsV] = tma_partition(tma.tma_v, _0{}, Layout<_1>{}, group_modes<0, 2>(sV),
                                      group_modes<0, 2>(gV));

    if (issue) {
      using BarrierType = cutlass::arch::ClusterTransactionBarrier::ValueType;
      ss.q_full.arrive_and_expect_tx(Traits::kTmaBytesQ);
      copy(tma.tma_q.with(reinterpret_cast<BarrierType&>(ss.q_full)), tQgQ, tQsQ);
    }
    for (int n = range.n_max - 1; n >= range.n_min; --n) {
      if (issue) {
        pipe_k.producer_acquire(state);
        copy(tma.tma_k.with(*pipe_k.producer_get_barrier(state)), tKgK(_, n),
             tKsK(_, state.index()));
        pipe_v.producer_acquire(state);
        copy(tma.tma_v.with(*pipe_v.producer_get_barrier(state)), tVgV(_, n),
             tVsV(_, state.index()));
      }
      ++state;
    }
  }

  /// Zeroes V rows [valid_rows, kBlockN) of one stage: those keys are past the sequence's used
  /// length and may hold NaN. 16-byte stores: every swizzle mode keeps 8 consecutive 16-bit
  /// elements of a row contiguous.
  __device__ static void zero_invalid_v_rows(SharedStorage& ss, int stage, int valid_rows,
                                             int thread_idx) {
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
    constexpr int kChunk = 16 / sizeof(Element);
    constexpr int kChunksPerRow = kHeadDimV / kChunk;
    const int count = (kBlockN - valid_rows) * kChunksPerRow;
    for (int i = thread_idx; i < count; i += Traits::kConsumerThreads) {
      const int row = valid_rows + i / kChunksPerRow;
      const int col = (i % kChunksPerRow) * kChunk;
      *reinterpret_cast<uint4*>(&sV(row, col, stage)) = make_uint4(0, 0, 0, 0);
    }
    // The zeros are generic-proxy stores; WGMMA reads through the async proxy.
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads,
                                      uint32_t(FwdBarrier::kValueZeroed));
  }

  /// Pingpong between the two consumer warpgroups (FlashAttention-3 sec. 3.1): warpgroup w
  /// issues its GEMMs only after the other one has issued its own, so one warpgroup's softmax
  /// runs while the other's GEMMs occupy the tensor cores. Barrier kPingpongWG0 + w is "w may
  /// issue"; it completes with w's 128 threads syncing and the other's 128 arriving.
  __device__ static void pingpong_wait(bool enabled, int warpgroup) {
    if (enabled) {
      cutlass::arch::NamedBarrier::sync(Traits::kConsumerThreads,
                                        uint32_t(FwdBarrier::kPingpongWG0) + warpgroup);
    }
  }
  __device__ static void pingpong_pass(bool enabled, int warpgroup) {
    if (enabled) {
      cutlass::arch::NamedBarrier::arrive(Traits::kConsumerThreads,
                                          uint32_t(FwdBarrier::kPingpongWG0) + (1 - warpgroup));
    }
  }

  /// Scores of block n -> unnormalized probabilities in place: softcap, the per-element mask on
  /// boundary blocks only, online softmax.
  template <bool kFirst, class FragS, class CoordRC, class Softmax, int kRows>
  __device__ static void scores_to_probs(const FwdParams& p, FragS& tSrS, CoordRC const& tScS_rc,
                                         const KeyBlockRange& range, const SeqInfo& seq, int m0,
                                         int n, Softmax& softmax, float (&correction)[kRows]) {
    if (p.has_softcap) apply_softcap(tSrS, p.softcap_prescale);
    Tensor tS_rc = rowcol_view(tSrS);
    if (range.template needs_mask<kBlockN>(n)) {
      apply_mask(tS_rc, tScS_rc, p.mask, m0, n * kBlockN, seq.len_q, seq.used_k);
    }
    softmax.template step<kFirst>(tS_rc, correction);
  }

  /// Consumers: accumulates the tile's unnormalized output in tOrO and the softmax statistics.
  ///
  /// Software pipeline inside each warpgroup (FlashAttention-3 sec. 3.2): iteration n issues
  /// S(n) = Q K(n)^T and O += P(n+1) V(n+1) back to back, waits for S(n) only, runs the softmax
  /// of block n while P(n+1) V(n+1) is still on the tensor cores, then waits for it and rescales
  /// O. O therefore always lags one block: O_{n} = (O_{n+1} + P(n+1) V(n+1)) * correction(n).
  template <class FragO, class Softmax>
  __device__ static void compute(const FwdParams& p, SharedStorage& ss, PipelineKV& pipe_k,
                                 PipelineKV& pipe_v, PipelineState& state, const TileCoord& tile,
                                 const SeqInfo& seq, const KeyBlockRange& range, int q_phase,
                                 int thread_idx, FragO& tOrO, Softmax& softmax) {
    typename Traits::TiledMmaQK mma_qk;
    typename Traits::TiledMmaPV mma_pv;
    auto thr_qk = mma_qk.get_thread_slice(thread_idx);
    auto thr_pv = mma_pv.get_thread_slice(thread_idx);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sVt = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutVt{});
    Tensor tSrQ = thr_qk.partition_fragment_A(sQ);
    Tensor tSrK = thr_qk.partition_fragment_B(sK);
    Tensor tOrV = thr_pv.partition_fragment_B(sVt);

    Tensor cS = make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor tScS_rc = rowcol_view(thr_qk.partition_C(cS));
    Tensor tOrO_rc = rowcol_view(tOrO);
    constexpr int kRows = decltype(size<0>(tOrO_rc))::value;

    const int m0 = tile.m_block * kBlockM;
    const int warpgroup = thread_idx / Traits::kThreadsPerWarpgroup;
    const bool pingpong = p.pingpong;

    // V rows past the used keys are zeroed before the GEMM that reads them; both warpgroups
    // meet on a barrier inside, so this runs outside the pingpong-ordered section.
    auto prepare_v = [&](int n, const PipelineState& v_state) {
      const int valid_rows = seq.used_k - n * kBlockN;
      if (valid_rows < kBlockN) {
        pipe_v.consumer_wait(v_state);
        zero_invalid_v_rows(ss, v_state.index(), valid_rows, thread_idx);
      }
    };

    clear(tOrO);
    ss.q_full.wait(q_phase);

    int n = range.n_max - 1;
    float correction[kRows];
    Tensor tSrS = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    pingpong_wait(pingpong, warpgroup);
    pipe_k.consumer_wait(state);
    warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(
        mma_qk, tSrQ, tSrK(_, _, _, state.index()), tSrS);
    pingpong_pass(pingpong, warpgroup);
    warpgroup_wait<0>();
    pipe_k.consumer_release(state);
    scores_to_probs<true>(p, tSrS, tScS_rc, range, seq, m0, n, softmax, correction);
    auto tOrP_frag = convert_fragment<Element>(tSrS);
    Tensor tOrP = make_tensor(tOrP_frag.data(), acc_as_operand_a_layout(tSrS.layout()));
    PipelineState v_state = state;  // stage holding V(n) for the deferred P V
    ++state;

    for (--n; n >= range.n_min; --n) {
      prepare_v(n + 1, v_state);
      pingpong_wait(pingpong, warpgroup);
      pipe_k.consumer_wait(state);
      warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(
          mma_qk, tSrQ, tSrK(_, _, _, state.index()), tSrS);
      pipe_v.consumer_wait(v_state);
      warpgroup_gemm</*kZeroInit=*/false, /*kARegisters=*/true>(
          mma_pv, tOrP, tOrV(_, _, _, v_state.index()), tOrO);
      pingpong_pass(pingpong, warpgroup);
      warpgroup_wait<1>();  // S(n) ready; P(n+1) V(n+1) may still run
      pipe_k.consumer_release(state);
      scores_to_probs<false>(p, tSrS, tScS_rc, range, seq, m0, n, softmax, correction);
      warpgroup_wait<0>();
      pipe_v.consumer_release(v_state);
      if (!Softmax::kConditionalRescale || softmax.rescaled) {
        Softmax::scale_rows(tOrO_rc, correction);
      }
      tOrP_frag = convert_fragment<Element>(tSrS);
      v_state = state;
      ++state;
    }

    prepare_v(n + 1, v_state);
    pingpong_wait(pingpong, warpgroup);
    pipe_v.consumer_wait(v_state);
    warpgroup_gemm</*kZeroInit=*/false, /*kARegisters=*/true>(
        mma_pv, tOrP, tOrV(_, _, _, v_state.index()), tOrO);
    pingpong_pass(pingpong, warpgroup);
    warpgroup_wait<0>();
    pipe_v.consumer_release(v_state);
  }
};

}  // namespace flashlane::sm90
