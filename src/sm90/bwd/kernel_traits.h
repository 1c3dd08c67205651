// kernel_traits.h: compile-time shape of one sm90 WGMMA backward instantiation: tile sizes, the
// warp-specialized thread layout, shared-memory layouts, the four WGMMA tiled MMAs and the TMA
// copy types. Everything derives from (head_dim, kBlockM, dtype).
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
// kBlockM = 64 and along queries when kBlockM = 128.
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/pipeline.hpp>
#include <cutlass/gemm/collective/builders/sm90_common.inl>

#include "sm90/bwd/launch_decl.h"

namespace flashlane::sm90::bwd {

using namespace cute;

/// Tile configuration per head dim (registers decide it: dV and dK of 64 keys stay in each
/// consumer's registers, plus S^T and dP^T of 64 keys x kBlockM queries). The edges come from
/// launch_decl.h, which also names them in the receipt's variant.
template <int kHeadDim>
struct BwdConfig {
  static_assert(kHeadDim == 64 || kHeadDim == 96 || kHeadDim == 128,
                "WGMMA backward head dims: 64, 96, 128");
  static constexpr int kBlockM = bwd_wgmma_block_m(kHeadDim);
  static constexpr int kStages = 2;  // Q/LSE and dO/delta ring depth
};

template <int kHeadDim_, int kBlockM_, int kStages_, class Element_>
struct BwdTraits {
  using Element = Element_;
  using Accum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = 128;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kThreadsPerWarpgroup = cutlass::NumThreadsPerWarpGroup;
  static constexpr int kConsumerThreads = kConsumerWarpgroups * kThreadsPerWarpgroup;
  static constexpr int kThreads = kConsumerThreads + kThreadsPerWarpgroup;  // + producer WG
  // Producer warpgroup: warp 0 issues TMA loads, warp 1 writes dQ; both need few registers.
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  static_assert(kProducerRegisters * kThreadsPerWarpgroup +
                    kConsumerRegisters * kConsumerThreads <= 65536,
                "register budget over the SM's register file");
  static_assert(kBlockM == 64 || kBlockM == 128, "kBlockM is 64 or 128");

  // Keys split over the consumers along M of the keys-major products.
  using KeysSplit = Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>;
  // dQ: along head_dim (kBlockM = 64, one 64-row WGMMA) or along queries (kBlockM = 128).
  using DqSplit = std::conditional_t<kBlockM == 64, Layout<Shape<_1, Int<kConsumerWarpgroups>, _1>>,
                                     Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>>;
  static constexpr int kDqAtomN = kBlockM == 64 ? kHeadDim / 2 : kHeadDim;

  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum, Shape<_64, Int<kBlockM>, Int<kHeadDim>>>(),
      KeysSplit{}));
  using TiledMmaKV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, Accum, Shape<_64, Int<kHeadDim>, Int<kBlockM>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      KeysSplit{}));
  using TiledMmaDQ = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum,
                           Shape<_64, Int<kDqAtomN>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(),
      DqSplit{}));

  // Query-side tiles (Q, dO): (kBlockM, head_dim, stage), head_dim contiguous.
  using SmemAtomQ = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                             GMMA::Major::K, Element, Int<kBlockM>, Int<kHeadDim>>());
  using SmemLayoutQ = decltype(tile_to_shape(
      SmemAtomQ{}, Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  // The same bytes as (head_dim, kBlockM, stage): the MN-major B operand of dV and dK.
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{},
                                         Step<_2, _1, _3>{})));
  // Key-side tiles (K, V): (kBlockN, head_dim), loaded once per CTA. dQ splits K^T's head_dim
  // in halves over the warpgroups; each half must start on a swizzle atom, so head_dim 96
  // (halves of 48) takes the 32-byte swizzle (16-element atoms) instead of the 64-byte one.
  using SmemAtomK = std::conditional_t<
      (kHeadDim / 2) % 64 == 0 || kBlockM == 128,
      decltype(cutlass::gemm::collective::detail::ss_smem_selector<
               GMMA::Major::K, Element, Int<kBlockN>, Int<kHeadDim>>()),
      GMMA::Layout_K_SW32_Atom<Element>>;
  using SmemLayoutK = decltype(tile_to_shape(SmemAtomK{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // K as (head_dim, kBlockN): the MN-major B operand of dQ = dS K.
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Step<_2, _1>{})));
  // dS: (kBlockM, kBlockN, 2), keys contiguous: the K-major A operand of dQ. Double-buffered so
  // one warpgroup can store the next tile's dS while the other still reads this one.
  static constexpr int kDsStages = 2;
  using SmemAtomDs = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                              GMMA::Major::K, Element, Int<kBlockM>, Int<kBlockN>>());
  using SmemLayoutDs = decltype(tile_to_shape(
      SmemAtomDs{}, Shape<Int<kBlockM>, Int<kBlockN>, Int<kDsStages>>{}));
  // dS seen as (kBlockN, kBlockM, 2): where the dS^T accumulators are stored from.
  using SmemLayoutDsT = decltype(composition(
      SmemLayoutDs{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>, Int<kDsStages>>{},
                                          Step<_2, _1, _3>{})));

  // Global views for TMA: (row, dim, head, batch), dim contiguous, 64-bit strides.
  using GmemLayout = Layout<Shape<int32_t, int32_t, int32_t, int32_t>,
                            Stride<int64_t, _1, int64_t, int64_t>>;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                          GmemLayout{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{},
                                      take<0, 2>(SmemLayoutQ{}),
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutK{},
                                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));

  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesK = kBlockN * kHeadDim * sizeof(Element);
  // Names shared with the wide-head traits (kernel_traits_wide.h): here head_dim_v = head_dim,
  // so dO and V reuse Q's and K's layouts and copy types.
  static constexpr bool kWide = false;
  static constexpr int kHeadDimV = kHeadDim;
  using SmemLayoutDo = SmemLayoutQ;
  using SmemLayoutV = SmemLayoutK;
  using TmaDo = TmaQ;
  using TmaV = TmaK;
  static constexpr uint32_t kTmaBytesDo = kTmaBytesQ;
  static constexpr uint32_t kTmaBytesV = kTmaBytesK;
  using TiledMmaDK = TiledMmaKV;
  using TiledMmaDV = TiledMmaKV;
  static constexpr uint32_t kRowStatBytes = kBlockM * sizeof(float);  // LSE or delta of a tile

  // dQ of one query tile in fp32, in the thread order of TiledMmaDQ's accumulators:
  // element i of thread t at [i * kConsumerThreads + t] (conflict-free stores; the gmem
  // accumulator keeps this order and the postprocess undoes it).
  static constexpr int kDqTileFloats = kBlockM * kHeadDim;
  // The writer adds the tile in one round (the wide-head kernel needs several).
  static constexpr int kDqRounds = 1;
  static constexpr int kDqRoundFloats = kDqTileFloats;
  __host__ __device__ static constexpr int dq_round_floats(int) { return kDqTileFloats; }

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

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
  };
  static constexpr int kSharedBytes = int(sizeof(SharedStorage));
  static_assert(kSharedBytes <= 227 * 1024, "shared memory over the sm_90 per-block limit");
};

// Named barriers of the kernel (ids above CUTLASS's reserved ones).
enum class BwdBarrier : uint32_t {
  kDsReady = 0,     // both consumers stored dS of the tile -> dQ = dS K may start
  kDqEmpty = 1,     // dQ writer finished reading sdQ -> consumers may store the next dQ
  kDqFull = 2,      // consumers stored dQ of the tile -> the writer may reduce it into gmem
  kRowsZeroed = 3,  // consumers zeroed the rows past the sequence of a ragged tile
};

}  // namespace flashlane::sm90::bwd
