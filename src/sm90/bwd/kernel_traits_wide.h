// kernel_traits_wide.h: compile-time shape of the WGMMA backward for wide heads (head_dim 192,
// 256, and 192 with head_dim_v 128). The keys-split design of kernel_traits.h would keep dK and
// dV of 64 keys x head_dim in each consumer's registers (up to 256 registers at head_dim 256),
// so here the consumers split head_dim instead, and P and dS go through shared memory for every
// product (FlashAttention-3 takes the same route for its wide heads):
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
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "sm90/bwd/kernel_traits.h"

namespace flashlane::sm90::bwd {

/// The widest K-major swizzle atom whose width (elements) divides `kSplit` (so a warpgroup's
/// slice of the row starts on an atom).
template <class Element, int kSplit>
using KMajorAtomDividing = std::conditional_t<
    kSplit % 64 == 0, GMMA::Layout_K_SW128_Atom<Element>,
    std::conditional_t<kSplit % 32 == 0, GMMA::Layout_K_SW64_Atom<Element>,
                       GMMA::Layout_K_SW32_Atom<Element>>>;

template <int kHeadDim_, int kHeadDimV_, class Element_>
struct BwdTraitsWide {
  using Element = Element_;
  using Accum = float;
  static constexpr bool kWide = true;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = 64;
  static constexpr int kBlockN = 64;
  // Q and dO rings: two stages when shared memory allows (head_dim 256 does not).
  static constexpr int kStages = kHeadDim == 256 ? 1 : 2;
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kThreadsPerWarpgroup = cutlass::NumThreadsPerWarpGroup;
  static constexpr int kConsumerThreads = kConsumerWarpgroups * kThreadsPerWarpgroup;
  static constexpr int kThreads = kConsumerThreads + kThreadsPerWarpgroup;
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  static_assert(kHeadDim % 64 == 0 && kHeadDimV % 64 == 0, "wide heads: multiples of 64");

  using SplitN = Layout<Shape<_1, Int<kConsumerWarpgroups>, _1>>;
  // S and dP: 64 queries x 32 keys per warpgroup.
  using TiledMmaSdP = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum, Shape<_64, Int<kBlockN / 2>, Int<kHeadDim>>>(),
      SplitN{}));
  // dK (dV): 64 keys x head_dim / 2 (head_dim_v / 2) per warpgroup; A = dS^T (P^T) from
  // shared memory, keys contiguous (MN-major); B = Q^T (dO^T), head_dim contiguous (MN-major).
  using TiledMmaDK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum,
                           Shape<_64, Int<kHeadDim / 2>, Int<kBlockM>>, GMMA::Major::MN,
                           GMMA::Major::MN>(),
      SplitN{}));
  using TiledMmaDV = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum,
                           Shape<_64, Int<kHeadDimV / 2>, Int<kBlockM>>, GMMA::Major::MN,
                           GMMA::Major::MN>(),
      SplitN{}));
  // One dQ chunk: 64 queries x 64 columns of head_dim, one warpgroup.
  static constexpr int kDqChunkCols = 64;
  static constexpr int kDqChunks = kHeadDim / kDqChunkCols;
  using TiledMmaDqChunk = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum, Shape<_64, Int<kDqChunkCols>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      Layout<Shape<_1, _1, _1>>{}));

  // Q (dO): K-major, atom width dividing head_dim / 2 (the dK / dV split of Q^T / dO^T).
  using SmemLayoutQ = decltype(tile_to_shape(
      KMajorAtomDividing<Element, kHeadDim / 2>{},
      Shape<Int<kBlockM>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutQt = decltype(composition(
      SmemLayoutQ{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockM>, Int<kStages>>{},
                                         Step<_2, _1, _3>{})));
  using SmemLayoutDo = decltype(tile_to_shape(
      KMajorAtomDividing<Element, kHeadDimV / 2>{},
      Shape<Int<kBlockM>, Int<kHeadDimV>, Int<kStages>>{}));
  using SmemLayoutDot = decltype(composition(
      SmemLayoutDo{}, make_ordered_layout(Shape<Int<kHeadDimV>, Int<kBlockM>, Int<kStages>>{},
                                          Step<_2, _1, _3>{})));
  // K: atom width dividing the dQ chunk (K^T's columns per chunk); V: any.
  using SmemLayoutK = decltype(tile_to_shape(KMajorAtomDividing<Element, kDqChunkCols>{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  using SmemLayoutKt = decltype(composition(
      SmemLayoutK{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, Step<_2, _1>{})));
  using SmemLayoutV = decltype(tile_to_shape(KMajorAtomDividing<Element, kHeadDimV>{},
                                             Shape<Int<kBlockN>, Int<kHeadDimV>>{}));
  // P and dS: (queries, keys, 2), keys contiguous: K-major A of dQ; seen as (keys, queries, 2)
  // they are the MN-major A of dV and dK. Double-buffered like the dS of kernel_traits.h.
  static constexpr int kDsStages = 2;
  using SmemLayoutPds = decltype(tile_to_shape(
      KMajorAtomDividing<Element, kBlockN / 2>{},
      Shape<Int<kBlockM>, Int<kBlockN>, Int<kDsStages>>{}));
  using SmemLayoutPdsT = decltype(composition(
      SmemLayoutPds{}, make_ordered_layout(Shape<Int<kBlockN>, Int<kBlockM>, Int<kDsStages>>{},
                                           Step<_2, _1, _3>{})));

  using GmemLayout = Layout<Shape<int32_t, int32_t, int32_t, int32_t>,
                            Stride<int64_t, _1, int64_t, int64_t>>;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                          GmemLayout{}));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(SmemLayoutQ{}),
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaDo = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, take<0, 2>(SmemLayoutDo{}),
                                       Shape<Int<kBlockM>, Int<kHeadDimV>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutK{},
                                      Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(SM90_TMA_LOAD{}, GmemTensor{}, SmemLayoutV{},
                                      Shape<Int<kBlockN>, Int<kHeadDimV>>{}, _1{}));

  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesDo = kBlockM * kHeadDimV * sizeof(Element);
  static constexpr uint32_t kTmaBytesK = kBlockN * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesV = kBlockN * kHeadDimV * sizeof(Element);
  static constexpr uint32_t kRowStatBytes = kBlockM * sizeof(float);

  // dQ tile in global memory: chunk c (columns 64c..) at [c * kDqChunkFloats], inside it element
  // i of thread t (of the chunk's warpgroup) at [i * 128 + t]. The consumers hand over two
  // chunks per round (one per warpgroup): round r holds chunks 2r and 2r + 1.
  static constexpr int kDqChunkFloats = kBlockM * kDqChunkCols;
  static constexpr int kDqTileFloats = kBlockM * kHeadDim;
  static constexpr int kDqRounds = (kDqChunks + 1) / 2;
  static constexpr int kDqRoundFloats = 2 * kDqChunkFloats;
  __host__ __device__ static constexpr int dq_round_floats(int r) {
    return (kDqChunks - 2 * r >= 2 ? 2 : 1) * kDqChunkFloats;
  }

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;

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
  };
  static constexpr int kSharedBytes = int(sizeof(SharedStorage));
  static_assert(kSharedBytes <= 227 * 1024, "shared memory over the sm_90 per-block limit");
};

}  // namespace flashlane::sm90::bwd
