// split_head_dim.h: the head_dim-split design of the backward (kernel-table rows with
// BwdSplit::kHeadDim: head_dim 192, 256, and 192 with head_dim_v 128): traits, and the steps of
// the compute loop (mainloop_compute.h) it owns.
//
// The keys split (split_keys.h) would keep dK and dV of 64 keys x head_dim in each consumer's
// registers (up to 256 registers at head_dim 256), so here the consumers split head_dim instead,
// and P and dS go through shared memory for every product (FlashAttention-3 takes the same route
// for its wide heads):
//   S  = Q K^T     (queries x keys)     SS, keys split over the warpgroups (32 each)
//   dP = dO V^T    (queries x keys)     SS, same split; P, dS -> shared memory
//   dV += P^T dO   (keys x head_dim_v)  SS, head_dim_v split over the warpgroups
//   dK += dS^T Q   (keys x head_dim)    SS, head_dim split over the warpgroups
//   dQ  = dS K     (queries x head_dim) SS, in chunks of 64 columns, one warpgroup per chunk,
//                                       each chunk handed to the dQ writer as it completes
// kBlockM = kBlockN = 64. Registers per consumer thread at head_dim 256: dK 64 + dV 64, S and dP
// 16 each, one dQ chunk 32.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/params.h"
#include "sm90/common/wgmma.h"

namespace flashlane::sm90::bwd {

/// The widest K-major swizzle atom whose width (elements) divides `kSplit` (so a warpgroup's
/// slice of the row starts on an atom).
template <class Element, int kSplit>
using KMajorAtomDividing = std::conditional_t<
    kSplit % 64 == 0, GMMA::Layout_K_SW128_Atom<Element>,
    std::conditional_t<kSplit % 32 == 0, GMMA::Layout_K_SW64_Atom<Element>,
                       GMMA::Layout_K_SW32_Atom<Element>>>;

template <int D, int DV, class Element_>
struct HeadDimSplitTraits
    : BwdTraitsBase<D, DV, BwdConfig<D, DV>::kBlockM, BwdConfig<D, DV>::kBlockN,
                    BwdConfig<D, DV>::kStages, Element_> {
  using Base = BwdTraitsBase<D, DV, BwdConfig<D, DV>::kBlockM, BwdConfig<D, DV>::kBlockN,
                             BwdConfig<D, DV>::kStages, Element_>;
  using Element = Element_;
  using Accum = float;
  static constexpr bool kWide = true;
  using Steps = HeadDimSplitSteps<HeadDimSplitTraits>;  // the compute loop's split-specific steps
  static constexpr int kBlockM = Base::kBlockM, kBlockN = Base::kBlockN, kStages = Base::kStages;
  static constexpr int kDsStages = Base::kDsStages;
  static constexpr int kConsumerWarpgroups = Base::kConsumerWarpgroups;
  static_assert(kBlockM == 64 && kBlockN == 64, "the head_dim split is written for 64 x 64 tiles");
  static_assert(D % 64 == 0 && DV % 64 == 0, "head_dim split: multiples of 64");

  using SplitN = Layout<Shape<_1, Int<kConsumerWarpgroups>, _1>>;
  // S and dP: 64 queries x 32 keys per warpgroup.
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum, Shape<_64, Int<kBlockN / 2>, Int<D>>>(),
      SplitN{}));
  // dK (dV): 64 keys x head_dim / 2 (head_dim_v / 2) per warpgroup; A = dS^T (P^T) from
  // shared memory, keys contiguous (MN-major); B = Q^T (dO^T), head_dim contiguous (MN-major).
  using TiledMmaDK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum,
                           Shape<_64, Int<D / 2>, Int<kBlockM>>, GMMA::Major::MN,
                           GMMA::Major::MN>(),
      SplitN{}));
  using TiledMmaDV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum,
                           Shape<_64, Int<DV / 2>, Int<kBlockM>>, GMMA::Major::MN,
                           GMMA::Major::MN>(),
      SplitN{}));
  // One dQ chunk: 64 queries x 64 columns of head_dim, one warpgroup.
  static constexpr int kDqChunkCols = 64;
  static constexpr int kDqChunks = D / kDqChunkCols;
  using TiledMmaDqChunk = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum, Shape<_64, Int<kDqChunkCols>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      Layout<Shape<_1, _1, _1>>{}));

  // Q (dO): K-major, atom width dividing head_dim / 2 (the dK / dV split of Q^T / dO^T).
  using SmemLayoutQ = decltype(tile_to_shape(
      KMajorAtomDividing<Element, D / 2>{}, Shape<Int<kBlockM>, Int<D>, Int<kStages>>{}));
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<D>, Int<kBlockM>, Int<kStages>>{},
                                         Step<_2, _1, _3>{})));
  using SmemLayoutDo = decltype(tile_to_shape(
      KMajorAtomDividing<Element, DV / 2>{}, Shape<Int<kBlockM>, Int<DV>, Int<kStages>>{}));
  using SmemLayoutDot = decltype(composition(
      SmemLayoutDo{}, make_ordered_layout(Shape<Int<DV>, Int<kBlockM>, Int<kStages>>{},
                                          Step<_2, _1, _3>{})));
  // K: atom width dividing the dQ chunk (K^T's columns per chunk); V: any.
  using SmemLayoutK = decltype(tile_to_shape(KMajorAtomDividing<Element, kDqChunkCols>{},
                                             Shape<Int<kBlockN>, Int<D>>{}));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_ordered_layout(Shape<Int<D>, Int<kBlockN>>{}, Step<_2, _1>{})));
  using SmemLayoutV = decltype(tile_to_shape(KMajorAtomDividing<Element, DV>{},
                                             Shape<Int<kBlockN>, Int<DV>>{}));
  // P and dS: (queries, keys, 2), keys contiguous: K-major A of dQ; seen as (keys, queries, 2)
  // they are the MN-major A of dV and dK.
  using SmemLayoutPds = decltype(tile_to_shape(
      KMajorAtomDividing<Element, kBlockN / 2>{},
      Shape<Int<kBlockM>, Int<kBlockN>, Int<kDsStages>>{}));
  using SmemLayoutPdsT = decltype(composition(
      SmemLayoutPds{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>, Int<kDsStages>>{},
                                           Step<_2, _1, _3>{})));

  using GmemTensor = typename Base::GmemTensor;
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(SmemLayoutQ{}),
                                      Shape<Int<kBlockM>, Int<D>>{}, _1{}));
  using TmaDo = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(SmemLayoutDo{}),
                                       Shape<Int<kBlockM>, Int<DV>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutK{},
                                      Shape<Int<kBlockN>, Int<D>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutV{},
                                      Shape<Int<kBlockN>, Int<DV>>{}, _1{}));

  // dQ tile in global memory: chunk c (columns 64c..) at [c * kDqChunkFloats], inside it element
  // i of thread t (of the chunk's warpgroup) at [i * 128 + t]. The consumers hand over two
  // chunks per round (one per warpgroup): round r holds chunks 2r and 2r + 1.
  static constexpr int kDqChunkFloats = kBlockM * kDqChunkCols;
  static constexpr int kDqTileFloats = kBlockM * D;
  static constexpr int kDqRounds = (kDqChunks + 1) / 2;
  static constexpr int kDqRoundFloats = 2 * kDqChunkFloats;
  __host__ __device__ static constexpr int dq_round_floats(int r) {
    return (kDqChunks - 2 * r >= 2 ? 2 : 1) * kDqChunkFloats;
  }

  using Pipeline = typename Base::Pipeline;
  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>, 1024> v;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutDo>, 1024> dout;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutPds>, 1024> p;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutPds>, 1024> ds;
    cute::array_aligned<float, kDqRoundFloats, 128> dq;
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

/// The steps of the compute loop that the head_dim split owns (mainloop_compute.h calls them).
template <class Traits>
struct HeadDimSplitSteps {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kConsumerThreads = Traits::kConsumerThreads;
  static constexpr int kWgThreads = Traits::kThreadsPerWarpgroup;
  static constexpr uint32_t kDqSyncThreads = kConsumerThreads + cutlass::NumThreadsPerWarp;
  /// The score accumulators are S: rows are this thread's queries, columns its keys.
  static constexpr bool kQueriesAreRows = true;

  __device__ static auto score_fragment() {
    return partition_fragment_C(typename Traits::TiledMmaSdP{},
                                Shape<Int<kBlockM>, Int<kBlockN>>{});
  }

  /// (query, key) tile coordinates of this thread's score accumulators, as (row, col).
  __device__ static auto score_coords(int thread_idx) {
    typename Traits::TiledMmaSdP mma;
    return rowcol_view(mma.get_thread_slice(thread_idx).partition_C(
        make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));
  }

  /// S = Q K^T and dP = dO V^T (this warpgroup's 32 keys) for Q/dO stage `stage`, not waited.
  template <class FragS>
  __device__ static void issue_scores(SharedStorage& ss, int thread_idx, int stage, FragS& tSrS,
                                      FragS& tdPrdP) {
    typename Traits::TiledMmaSdP mma_sdp;
    auto thr_sdp = mma_sdp.get_thread_slice(thread_idx);
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDo{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
    Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);
    Tensor tSrK = thr_sdp.partition_fragment_B(sK);
    Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);
    Tensor tdPrV = thr_sdp.partition_fragment_B(sV);
    warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tSrQ(_, _, _, stage),
                                                               tSrK, tSrS);
    warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tdPrdO(_, _, _, stage),
                                                               tdPrV, tdPrdP);
  }

  /// From P and dS (fp32 accumulators): both to shared memory; dV += P^T dO, dK += dS^T Q on
  /// this warpgroup's half of head_dim; dQ = dS K in rounds of two 64-column chunks handed to
  /// the writer; the Q/dO stage released once dV and dK have read it.
  template <class FragS, class FragDK, class FragDV>
  __device__ static void gradients(SharedStorage& ss, Pipeline& pipe_q, Pipeline& pipe_do,
                                   const PipelineState& state, int ds_stage, int thread_idx,
                                   FragS& tSrS, FragS& tdPrdP, FragDK& tdKrdK, FragDV& tdVrdV) {
    const int stage = state.index();
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmaDK mma_dk;
    typename Traits::TiledMmaDV mma_dv;
    typename Traits::TiledMmaDqChunk mma_dq;
    const int warpgroup = thread_idx / kWgThreads;
    const int wg_thread = thread_idx % kWgThreads;
    auto thr_dk = mma_dk.get_thread_slice(thread_idx);
    auto thr_dv = mma_dv.get_thread_slice(thread_idx);
    auto thr_dq = mma_dq.get_thread_slice(wg_thread);
    Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDot{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
    Tensor sP = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutPds{});
    Tensor sPt = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutPdsT{});
    Tensor sdS = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutPds{});
    Tensor sdSt = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutPdsT{});
    Tensor tdVrPt = thr_dv.partition_fragment_A(sPt);
    Tensor tdVrdOt = thr_dv.partition_fragment_B(sdOt);
    Tensor tdKrdSt = thr_dk.partition_fragment_A(sdSt);
    Tensor tdKrQt = thr_dk.partition_fragment_B(sQt);
    Tensor tdQrdS = thr_dq.partition_fragment_A(sdS);
    // P and dS registers -> shared memory with stmatrix (8x8 16-bit tiles, keys contiguous).
    auto r2s = make_tiled_copy_C(Copy_Atom<SM90_U32x4_STSM_N, Element>{}, mma_sdp);
    auto thr_r2s = r2s.get_thread_slice(thread_idx);
    Tensor tPsP = thr_r2s.partition_D(sP);
    Tensor tdSsdS = thr_r2s.partition_D(sdS);

    // P and dS of this warpgroup's keys to shared memory; both halves are needed below.
    {
      auto tPrP = convert_fragment<Element>(tSrS);
      auto tdSrdS = convert_fragment<Element>(tdPrdP);
      cute::copy(r2s, thr_r2s.retile_S(tPrP), tPsP(_, _, _, ds_stage));
      cute::copy(r2s, thr_r2s.retile_S(tdSrdS), tdSsdS(_, _, _, ds_stage));
    }
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, uint32_t(BwdBarrier::kDsReady));

    warpgroup_gemm</*kZeroInit=*/false, /*kARegisters=*/false>(
        mma_dv, tdVrPt(_, _, _, ds_stage), tdVrdOt(_, _, _, stage), tdVrdV);
    warpgroup_gemm</*kZeroInit=*/false, /*kARegisters=*/false>(
        mma_dk, tdKrdSt(_, _, _, ds_stage), tdKrQt(_, _, _, stage), tdKrdK);

    // dQ in rounds of two 64-column chunks: chunk 2r + warpgroup.
    float* sdq = ss.dq.data() + warpgroup * Traits::kDqChunkFloats;
    CUTE_UNROLL
    for (int r = 0; r < Traits::kDqRounds; ++r) {
      const int chunk = 2 * r + warpgroup;
      Tensor tdQrdQ = partition_fragment_C(mma_dq, Shape<_64, Int<Traits::kDqChunkCols>>{});
      if (chunk < Traits::kDqChunks) {
        Tensor sKt_chunk = local_tile(sKt, Shape<Int<Traits::kDqChunkCols>, Int<kBlockN>>{},
                                      make_coord(chunk, _0{}));
        Tensor tdQrK = thr_dq.partition_fragment_B(sKt_chunk);
        warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(
            mma_dq, tdQrdS(_, _, _, ds_stage), tdQrK, tdQrdQ);
      }
      warpgroup_wait<0>();
      if (r == 0) {
        // dV and dK (issued before the first chunk) have completed: Q and dO are free.
        pipe_q.consumer_release(state);
        pipe_do.consumer_release(state);
      }
      cutlass::arch::NamedBarrier::sync(kDqSyncThreads, uint32_t(BwdBarrier::kDqEmpty));
      if (chunk < Traits::kDqChunks) {
        CUTE_UNROLL
        for (int i = 0; i < size(tdQrdQ); ++i) sdq[i * kWgThreads + wg_thread] = tdQrdQ(i);
      }
      cutlass::arch::fence_view_async_shared();
      cutlass::arch::NamedBarrier::arrive(kDqSyncThreads, uint32_t(BwdBarrier::kDqFull));
    }
  }
};

}  // namespace flashlane::sm90::bwd
