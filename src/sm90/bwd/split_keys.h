// split_keys.h: the keys-split design of the backward (kernel-table rows with BwdSplit::kKeys,
// head_dim <= 128): traits, and the steps of the compute loop (mainloop_compute.h) it owns.
//
// One CTA owns kBlockN = 128 keys of one KV head and walks query tiles of kBlockM rows. The two
// consumer warpgroups split the keys (64 each) for every product that has keys as its M:
//   S^T  = K Q^T    (keys x queries)   SS, zero-init         -> P^T in registers
//   dP^T = V dO^T   (keys x queries)   SS, zero-init         -> dS^T in registers
//   dV  += P^T dO   (keys x head_dim)  RS: P^T straight from the S^T accumulator
//   dK  += dS^T Q   (keys x head_dim)  RS: dS^T straight from the dP^T accumulator
//   dQ   = dS K     (queries x head_dim) SS from dS in shared memory, fp32 out
// Computing S and dP transposed (FlashAttention-3's SdP_swapAB) makes P^T and dS^T the
// accumulator layout of the dV/dK A operands, so neither goes through shared memory for those
// two products; dS is stored once, for dQ. dQ splits over the warpgroups along head_dim when
// kBlockM = 64 and along queries when kBlockM = 128. dK and dV of 64 keys stay in each
// consumer's registers, which is what bounds this design to head_dim <= 128.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/params.h"
#include "sm90/common/wgmma.h"

namespace flashlane::sm90::bwd {

template <int D, int DV, class Element_>
struct KeysSplitTraits
    : BwdTraitsBase<D, DV, BwdConfig<D, DV>::kBlockM, BwdConfig<D, DV>::kBlockN,
                    BwdConfig<D, DV>::kStages, Element_> {
  using Base = BwdTraitsBase<D, DV, BwdConfig<D, DV>::kBlockM, BwdConfig<D, DV>::kBlockN,
                             BwdConfig<D, DV>::kStages, Element_>;
  using Element = Element_;
  using Accum = float;
  static constexpr bool kWide = false;
  using Steps = KeysSplitSteps<KeysSplitTraits>;  // the compute loop's split-specific steps
  static constexpr int kBlockM = Base::kBlockM, kBlockN = Base::kBlockN, kStages = Base::kStages;
  static constexpr int kDsStages = Base::kDsStages;
  static constexpr int kConsumerWarpgroups = Base::kConsumerWarpgroups;
  static_assert(D == DV, "the keys split has head_dim_v == head_dim");
  static_assert(kBlockN == 128, "two warpgroups of 64 keys");
  static_assert(kBlockM == 64 || kBlockM == 128, "kBlockM is 64 or 128");

  // Keys split over the consumers along M of the keys-major products.
  using KeysSplit = Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>;
  // dQ: along head_dim (kBlockM = 64, one 64-row WGMMA) or along queries (kBlockM = 128).
  using DqSplit = std::conditional_t<kBlockM == 64, Layout<Shape<_1, Int<kConsumerWarpgroups>, _1>>,
                                     Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>>;
  static constexpr int kDqAtomN = kBlockM == 64 ? D / 2 : D;

  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum, Shape<_64, Int<kBlockM>, Int<D>>>(),
      KeysSplit{}));
  using TiledMmaKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, Accum, Shape<_64, Int<D>, Int<kBlockM>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      KeysSplit{}));
  using TiledMmaDK = TiledMmaKV;
  using TiledMmaDV = TiledMmaKV;
  using TiledMmaDQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum,
                           Shape<_64, Int<kDqAtomN>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      DqSplit{}));

  // Query-side tiles (Q, dO): (kBlockM, head_dim, stage), head_dim contiguous.
  using SmemAtomQ = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                             GMMA::Major::K, Element, Int<kBlockM>, Int<D>>());
  using SmemLayoutQ = decltype(tile_to_shape(
      SmemAtomQ{}, Shape<Int<kBlockM>, Int<D>, Int<kStages>>{}));
  // The same bytes as (head_dim, kBlockM, stage): the MN-major B operand of dV and dK.
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<D>, Int<kBlockM>, Int<kStages>>{},
                                         Step<_2, _1, _3>{})));
  // Key-side tiles (K, V): (kBlockN, head_dim), loaded once per CTA. dQ splits K^T's head_dim
  // in halves over the warpgroups; each half must start on a swizzle atom, so head_dim 96
  // (halves of 48) takes the 32-byte swizzle (16-element atoms) instead of the 64-byte one.
  using SmemAtomK = std::conditional_t<
      (D / 2) % 64 == 0 || kBlockM == 128,
      decltype(cutlass::gemm::collective::detail::ss_smem_selector<
               GMMA::Major::K, Element, Int<kBlockN>, Int<D>>()),
      GMMA::Layout_K_SW32_Atom<Element>>;
  using SmemLayoutK = decltype(tile_to_shape(SmemAtomK{}, Shape<Int<kBlockN>, Int<D>>{}));
  // K as (head_dim, kBlockN): the MN-major B operand of dQ = dS K.
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_ordered_layout(Shape<Int<D>, Int<kBlockN>>{}, Step<_2, _1>{})));
  // dS: (kBlockM, kBlockN, 2), keys contiguous: the K-major A operand of dQ.
  using SmemAtomDs = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                              GMMA::Major::K, Element, Int<kBlockM>, Int<kBlockN>>());
  using SmemLayoutDs = decltype(tile_to_shape(
      SmemAtomDs{}, Shape<Int<kBlockM>, Int<kBlockN>, Int<kDsStages>>{}));
  // dS seen as (kBlockN, kBlockM, 2): where the dS^T accumulators are stored from.
  using SmemLayoutDsT = decltype(composition(
      SmemLayoutDs{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>, Int<kDsStages>>{},
                                          Step<_2, _1, _3>{})));
  // head_dim_v = head_dim: dO and V reuse Q's and K's layouts and copy types.
  using SmemLayoutDo = SmemLayoutQ;
  using SmemLayoutV = SmemLayoutK;

  using GmemTensor = typename Base::GmemTensor;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{},
                                      take<0, 2>(SmemLayoutQ{}),
                                      Shape<Int<kBlockM>, Int<D>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutK{},
                                      Shape<Int<kBlockN>, Int<D>>{}, _1{}));
  using TmaDo = TmaQ;
  using TmaV = TmaK;

  // dQ of one query tile in fp32, in the thread order of TiledMmaDQ's accumulators:
  // element i of thread t at [i * kConsumerThreads + t] (conflict-free stores; the gmem
  // accumulator keeps this order and the postprocess undoes it). The writer adds the tile in
  // one round.
  static constexpr int kDqTileFloats = kBlockM * D;
  static constexpr int kDqRounds = 1;
  static constexpr int kDqRoundFloats = kDqTileFloats;
  __host__ __device__ static constexpr int dq_round_floats(int) { return kDqTileFloats; }

  using Pipeline = typename Base::Pipeline;
  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> v;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> dout;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutDs>, 1024> ds;
    cute::array_aligned<float, kDqTileFloats, 128> dq;
    cute::array_aligned<float, kBlockM * kStages, 128> lse_log2;
    cute::array_aligned<float, kBlockM * kStages, 128> delta;
    alignas(16) cutlass::arch::ClusterTransactionBarrier kv_full;
    alignas(16) typename Pipeline::SharedStorage pipeline_q;
    alignas(16) typename Pipeline::SharedStorage pipeline_do;
    int tile_ticket;  // deterministic mode: the CTA's ticket (work.h)
  };
  static constexpr int kSharedBytes = int(sizeof(SharedStorage));
  static_assert(kSharedBytes <= 227 * 1024, "shared memory over the sm_90 per-block limit");
};

/// The steps of the compute loop that the keys split owns (mainloop_compute.h calls them).
template <class Traits>
struct KeysSplitSteps {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kConsumerThreads = Traits::kConsumerThreads;
  static constexpr uint32_t kDqSyncThreads = kConsumerThreads + cutlass::NumThreadsPerWarp;
  /// The score accumulators are S^T: rows are this thread's keys, columns its queries.
  static constexpr bool kQueriesAreRows = false;

  __device__ static auto score_fragment() {
    return partition_fragment_C(typename Traits::TiledMmaSdP{},
                                Shape<Int<kBlockN>, Int<kBlockM>>{});
  }

  /// (key, query) tile coordinates of this thread's score accumulators, as (row, col).
  __device__ static auto score_coords(int thread_idx) {
    typename Traits::TiledMmaSdP mma;
    return rowcol_view(mma.get_thread_slice(thread_idx).partition_C(
        make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{})));
  }

  /// S^T = K Q^T and dP^T = V dO^T for Q/dO stage `stage`, issued back to back, not waited.
  template <class FragS>
  __device__ static void issue_scores(SharedStorage& ss, int thread_idx, int stage, FragS& tSrS,
                                      FragS& tdPrdP) {
    typename Traits::TiledMmaSdP mma_sdp;
    auto thr_sdp = mma_sdp.get_thread_slice(thread_idx);
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutK{});
    Tensor tSrK = thr_sdp.partition_fragment_A(sK);
    Tensor tSrQ = thr_sdp.partition_fragment_B(sQ);
    Tensor tdPrV = thr_sdp.partition_fragment_A(sV);
    Tensor tdPrdO = thr_sdp.partition_fragment_B(sdO);
    warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tSrK,
                                                               tSrQ(_, _, _, stage), tSrS);
    warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tdPrV,
                                                               tdPrdO(_, _, _, stage), tdPrdP);
  }

  /// From P^T and dS^T (fp32 accumulators): dV += P^T dO and dK += dS^T Q from registers; dS to
  /// shared memory, dQ = dS K over all 128 keys; Q/dO stage released; dQ handed to the writer.
  template <class FragS, class FragDK, class FragDV>
  __device__ static void gradients(SharedStorage& ss, Pipeline& pipe_q, Pipeline& pipe_do,
                                   const PipelineState& state, int ds_stage, int thread_idx,
                                   FragS& tSrS, FragS& tdPrdP, FragDK& tdKrdK, FragDV& tdVrdV) {
    const int stage = state.index();
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmaKV mma_kv;
    typename Traits::TiledMmaDQ mma_dq;
    auto thr_kv = mma_kv.get_thread_slice(thread_idx);
    auto thr_dq = mma_dq.get_thread_slice(thread_idx);
    Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQt{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
    Tensor sDs = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutDs{});
    Tensor sDsT = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutDsT{});
    Tensor tdVrdO = thr_kv.partition_fragment_B(sdOt);
    Tensor tdKrQ = thr_kv.partition_fragment_B(sQt);
    Tensor tdQrdS = thr_dq.partition_fragment_A(sDs);
    Tensor tdQrK = thr_dq.partition_fragment_B(sKt);
    // dS^T registers -> dS in shared memory with stmatrix (transposing 8x8 16-bit tiles), as
    // FlashAttention-3 does for its swapped products.
    auto r2s_ds = make_tiled_copy_C(Copy_Atom<SM90_U16x8_STSM_T, Element>{}, mma_sdp);
    auto thr_r2s_ds = r2s_ds.get_thread_slice(thread_idx);
    Tensor tdSsdS = thr_r2s_ds.partition_D(sDsT);

    auto tPrP = convert_fragment<Element>(tSrS);
    Tensor tdVrP = make_tensor(tPrP.data(), acc_as_operand_a_layout(tSrS.layout()));
    warpgroup_gemm</*kZeroInit=*/false, /*kARegisters=*/true>(mma_kv, tdVrP,
                                                               tdVrdO(_, _, _, stage), tdVrdV);
    auto tdSrdS = convert_fragment<Element>(tdPrdP);
    Tensor tdKrdS = make_tensor(tdSrdS.data(), acc_as_operand_a_layout(tdPrdP.layout()));
    warpgroup_gemm</*kZeroInit=*/false, /*kARegisters=*/true>(mma_kv, tdKrdS,
                                                               tdKrQ(_, _, _, stage), tdKrdK);

    // dS to shared memory (transposed by the layout), then dQ = dS K over all 128 keys.
    cute::copy(r2s_ds, thr_r2s_ds.retile_S(tdSrdS), tdSsdS(_, _, _, ds_stage));
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, uint32_t(BwdBarrier::kDsReady));
    Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<Int<kBlockM>, Int<kHeadDim>>{});
    warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_dq, tdQrdS(_, _, _, ds_stage),
                                                               tdQrK, tdQrdQ);
    warpgroup_wait<0>();
    pipe_q.consumer_release(state);
    pipe_do.consumer_release(state);

    // dQ of the tile to shared memory in thread order; the writer warp reduces it into gmem.
    cutlass::arch::NamedBarrier::sync(kDqSyncThreads, uint32_t(BwdBarrier::kDqEmpty));
    float* sdq = ss.dq.data();
    CUTE_UNROLL
    for (int i = 0; i < size(tdQrdQ); ++i) sdq[i * kConsumerThreads + thread_idx] = tdQrdQ(i);
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::arrive(kDqSyncThreads, uint32_t(BwdBarrier::kDqFull));
  }
};

}  // namespace flashlane::sm90::bwd
