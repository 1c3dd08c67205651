// kernel_traits.h: compile-time shape of one sm90 forward instantiation: tile sizes, the
// warp-specialized thread layout, shared-memory layouts, the WGMMA tiled MMAs and the TMA
// copy types. Everything here derives from (head_dim, head_dim_v, kBlockN, stages, dtype) and
// the softmax choices of the row (emulated exp2 fraction, rescaling threshold: fwd/softmax.h).
#pragma once

#include <cute/tensor.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>
#include <cutlass/pipeline/pipeline.hpp>
#include <cutlass/gemm/collective/builders/sm90_common.inl>

#include "sm90/common/tma_views.h"

namespace flashlane::sm90 {

using namespace cute;

template <int kHeadDim_, int kHeadDimV_, int kBlockN_, int kStages_, class Element_,
          int kExp2EmulatedPer16_ = 0, int kRescaleThreshold_ = 0>
struct FwdTraits {
  using Element = Element_;
  using Accum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  // Each consumer warpgroup owns 64 query rows (the M of one WGMMA); two of them make kBlockM.
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kRowsPerWarpgroup = 64;
  static constexpr int kBlockM = kConsumerWarpgroups * kRowsPerWarpgroup;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kExp2EmulatedPer16 = kExp2EmulatedPer16_;
  static constexpr int kRescaleThreshold = kRescaleThreshold_;
  static constexpr int kThreadsPerWarpgroup = cutlass::NumThreadsPerWarpGroup;
  static constexpr int kConsumerThreads = kConsumerWarpgroups * kThreadsPerWarpgroup;
  static constexpr int kThreads = kConsumerThreads + kThreadsPerWarpgroup;  // + producer WG
  // setmaxnreg budget: 65536 registers per SM, one CTA per SM. The producer only issues TMA,
  // so it gives its registers to the consumers: 24 * 128 + 240 * 256 = 64512 <= 65536.
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  static_assert(kProducerRegisters * kThreadsPerWarpgroup +
                    kConsumerRegisters * kConsumerThreads <= 65536,
                "register budget over the SM's register file");

  static_assert(kHeadDim % 16 == 0 && kHeadDimV % 16 == 0, "head dims must be multiples of 16");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "kBlockN is the K of the P V WGMMA");

  using TileQK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>;   // S = Q K^T
  using TilePV = Shape<Int<kBlockM>, Int<kHeadDimV>, Int<kBlockN>>;  // O = P V
  using WarpgroupLayout = Layout<Shape<Int<kConsumerWarpgroups>, _1, _1>>;

  // S = Q K^T: both operands from shared memory, K-major (head_dim contiguous).
  using TiledMmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, Accum,
                           Shape<Int<kRowsPerWarpgroup>, Int<kBlockN>, Int<kHeadDim>>>(),
      WarpgroupLayout{}));
  // O = P V: P from registers (the S accumulators converted in place), V from shared memory
  // as an MN-major B operand (V is stored key-major, head_dim_v contiguous).
  using TiledMmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, Accum,
                           Shape<Int<kRowsPerWarpgroup>, Int<kHeadDimV>, Int<kBlockN>>,
                           GMMA::Major::K, GMMA::Major::MN>(),
      WarpgroupLayout{}));

  // Shared-memory layouts: the widest swizzle the row length allows (TMA and WGMMA agree).
  using SmemAtomQ = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                             GMMA::Major::K, Element, Int<kBlockM>, Int<kHeadDim>>());
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtomQ{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemAtomK = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                             GMMA::Major::K, Element, Int<kBlockN>, Int<kHeadDim>>());
  using SmemLayoutK = decltype(tile_to_shape(
      SmemAtomK{}, Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemAtomV = decltype(cutlass::gemm::collective::detail::ss_smem_selector<
                             GMMA::Major::K, Element, Int<kBlockN>, Int<kHeadDimV>>());
  using SmemLayoutV = decltype(tile_to_shape(
      SmemAtomV{}, Shape<Int<kBlockN>, Int<kHeadDimV>, Int<kStages>>{}));
  // The same bytes seen as V^T (head_dim_v, key, stage) for the B operand of P V.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{}, make_ordered_layout(Shape<Int<kHeadDimV>, Int<kBlockN>, Int<kStages>>{},
                                         Step<_2, _1, _3>{})));

  // Global views for TMA (common/tma_views.h).
  using GmemLayout = GmemViewLayout;
  using TmaQ = decltype(make_tma_copy(
      SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
      SmemLayoutQ{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaK = decltype(make_tma_copy(
      SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
      take<0, 2>(SmemLayoutK{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));
  using TmaV = decltype(make_tma_copy(
      SM90_TMA_LOAD{}, make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), GmemLayout{}),
      take<0, 2>(SmemLayoutV{}), Shape<Int<kBlockN>, Int<kHeadDimV>>{}, _1{}));

  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesK = kBlockN * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesV = kBlockN * kHeadDimV * sizeof(Element);

  using PipelineKV = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename PipelineKV::PipelineState;

  // 1024-byte alignment: the 128-byte swizzle pattern repeats every 1024 bytes and TMA and
  // WGMMA both assume the pattern starts at an aligned address.
  struct SharedStorage {
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutK>, 1024> k;
    cute::array_aligned<Element, cute::cosize_v<SmemLayoutV>, 1024> v;
    alignas(16) cutlass::arch::ClusterTransactionBarrier q_full;
    alignas(16) typename PipelineKV::SharedStorage pipeline_k;
    alignas(16) typename PipelineKV::SharedStorage pipeline_v;
  };
  static constexpr int kSharedBytes = int(sizeof(SharedStorage));
  static_assert(kSharedBytes <= 227 * 1024, "shared memory over the sm_90 per-block limit");
};

// Named barriers of the kernel (ids above CUTLASS's reserved ones).
enum class FwdBarrier : uint32_t {
  kQueryEmpty = 0,  // consumers done reading sQ of a tile -> producer may load the next Q
  kValueZeroed = 1, // consumers finished zeroing the invalid V rows of a ragged tile
  kPingpongWG0 = 2, // + w: consumer warpgroup w may issue its next GEMMs (pingpong)
  kPingpongWG1 = 3,
};

}  // namespace flashlane::sm90
