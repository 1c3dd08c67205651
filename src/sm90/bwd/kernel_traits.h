// kernel_traits.h: compile-time shape of one sm90 WGMMA backward instantiation. The part every
// backward shares (tile edges, the warp-specialized thread layout and register budget, the TMA
// global views, the Q/dO ring, the named barriers) is BwdTraitsBase; how the two consumer
// warpgroups share a key tile is the split policy of the kernel-table row (BwdSplit):
//   kKeys     split_keys.h      head_dim <= 128: each warpgroup owns half of the keys
//   kHeadDim  split_head_dim.h  wider heads: each owns half of head_dim for dK and dV
// Each policy file defines the MMAs, shared-memory layouts, TMA copy types and shared storage of
// its design, and the steps of the compute loop that differ (mainloop_compute.h runs the loop).
// BwdTraits<D, DV, Element> is the policy traits of the row of (D, DV).
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
#include "sm90/common/tma_views.h"

namespace flashlane::sm90::bwd {

using namespace cute;

template <int kHeadDim_, int kHeadDimV_, int kBlockM_, int kBlockN_, int kStages_,
          class Element_>
struct BwdTraitsBase {
  using Element = Element_;
  using Accum = float;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kHeadDimV = kHeadDimV_;
  static constexpr int kBlockM = kBlockM_;  // query rows per visit
  static constexpr int kBlockN = kBlockN_;  // keys per CTA
  static constexpr int kStages = kStages_;  // Q/LSE and dO/delta ring depth
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
  // dS (and P) in shared memory are double-buffered so one warpgroup can store the next tile's
  // while the other still reads this one.
  static constexpr int kDsStages = 2;

  // Global views for TMA (common/tma_views.h).
  using GmemLayout = GmemViewLayout;
  using GmemTensor = decltype(make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)),
                                          GmemLayout{}));

  static constexpr uint32_t kTmaBytesQ = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesDo = kBlockM * kHeadDimV * sizeof(Element);
  static constexpr uint32_t kTmaBytesK = kBlockN * kHeadDim * sizeof(Element);
  static constexpr uint32_t kTmaBytesV = kBlockN * kHeadDimV * sizeof(Element);
  static constexpr uint32_t kRowStatBytes = kBlockM * sizeof(float);  // LSE or delta of a tile

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename Pipeline::PipelineState;
};

// Named barriers of the kernel (ids above CUTLASS's reserved ones).
enum class BwdBarrier : uint32_t {
  kDsReady = 0,     // both consumers stored dS (and P) of the tile -> the products reading them
  kDqEmpty = 1,     // dQ writer finished reading sdQ -> consumers may store the next dQ
  kDqFull = 2,      // consumers stored dQ of the tile -> the writer may reduce it into gmem
  kRowsZeroed = 3,  // consumers zeroed the rows past the sequence of a ragged tile
};

template <int D, int DV, class Element>
struct KeysSplitTraits;  // split_keys.h
template <class Traits>
struct KeysSplitSteps;
template <int D, int DV, class Element>
struct HeadDimSplitTraits;  // split_head_dim.h
template <class Traits>
struct HeadDimSplitSteps;

/// The traits of the kernel-table row of (D, DV).
template <int D, int DV, class Element>
using BwdTraits = std::conditional_t<BwdConfig<D, DV>::kSplitHeadDim,
                                     HeadDimSplitTraits<D, DV, Element>,
                                     KeysSplitTraits<D, DV, Element>>;

}  // namespace flashlane::sm90::bwd
