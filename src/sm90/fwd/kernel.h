// kernel.h: the warp-specialized sm90 forward kernel. 3 warpgroups per CTA, one CTA per SM:
//   warpgroup 0: producer; its warp 0 issues all TMA loads (Q, K, V), the rest exit at once;
//                registers handed to the consumers with setmaxnreg.
//   warpgroups 1-2: consumers, 64 query rows each (kBlockM = 128): mainloop, softmax, epilogue.
// Both roles walk the same tile sequence from the tile scheduler and skip the same tiles, so
// their pipeline states stay in step across tiles (persistent mode).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "sm90/fwd/epilogue.h"
#include "sm90/fwd/kernel_traits.h"
#include "sm90/fwd/mainloop_tma_wgmma.h"
#include "sm90/common/mask.h"
#include "sm90/common/params.h"
#include "sm90/fwd/softmax.h"
#include "sm90/fwd/tile_scheduler.h"

namespace flashlane::sm90 {

/// The online softmax of a traits' row: its FlashAttention-4 choices (emulated exp2 fraction,
/// rescaling threshold) come from the kernel table through the traits.
template <class Traits, int kRows>
using FwdSoftmax =
    OnlineSoftmax<kRows, Traits::kExp2EmulatedPer16, Traits::kRescaleThreshold>;

template <class Traits>
struct FwdKernelArgs {
  FwdParams p;
  typename FwdMainloop<Traits>::TmaArgs tma;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    fwd_kernel(const __grid_constant__ FwdKernelArgs<Traits> args) {
  using Mainloop = FwdMainloop<Traits>;
  using Epilogue = FwdEpilogue<Traits>;
  using PipelineKV = typename Traits::PipelineKV;
  using PipelineState = typename Traits::PipelineState;
  using SharedStorage = typename Traits::SharedStorage;
  constexpr int kBlockM = Traits::kBlockM;
  constexpr int kBlockN = Traits::kBlockN;
  // Consumers + the producer warp meet on the "Q buffer free" barrier.
  constexpr uint32_t kQueryEmptyThreads = Traits::kConsumerThreads + cutlass::NumThreadsPerWarp;

  extern __shared__ char smem_raw[];
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw);
  const FwdParams& p = args.p;

  const int warp_idx = cutlass::canonical_warp_idx_sync();
  const int warpgroup = cutlass::canonical_warp_group_idx();
  const int lane = int(threadIdx.x) % cutlass::NumThreadsPerWarp;

  if (warp_idx == 0 && lane == 0) {
    cute::prefetch_tma_descriptor(args.tma.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(args.tma.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(args.tma.tma_v.get_tma_descriptor());
    ss.q_full.init(/*arrival_count=*/1);
  }

  typename PipelineKV::Params pipe_params;
  pipe_params.role = warpgroup == 0 ? PipelineKV::ThreadCategory::Producer
                                    : PipelineKV::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kConsumerThreads;
  pipe_params.transaction_bytes = Traits::kTmaBytesK;
  PipelineKV pipe_k(ss.pipeline_k, pipe_params, Shape<_1, _1, _1>{});
  pipe_params.transaction_bytes = Traits::kTmaBytesV;
  PipelineKV pipe_v(ss.pipeline_v, pipe_params, Shape<_1, _1, _1>{});
  // Barrier initialization (q_full and the pipelines' mbarriers) visible to every thread.
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  const FwdTileScheduler scheduler(p);

  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (warp_idx != 0) return;
    PipelineState state = cutlass::make_producer_start_state<PipelineKV>();
    bool first_q = true;
    for (int t = scheduler.first(); scheduler.valid(t); t = scheduler.next(t)) {
      const TileCoord tile = scheduler.decode(t);
      const SeqInfo seq = SeqInfo::load(p, tile.batch);
      if (tile.m_block * kBlockM >= seq.len_q) continue;
      const KeyBlockRange range =
          key_block_range<kBlockM, kBlockN>(p.mask, tile.m_block, seq.len_q, seq.used_k);
      if (range.empty()) continue;
      if (!first_q) {
        // The previous tile's Q must be fully consumed before TMA overwrites it.
        __syncwarp();
        cutlass::arch::NamedBarrier::sync(kQueryEmptyThreads,
                                          uint32_t(FwdBarrier::kQueryEmpty));
      }
      first_q = false;
      Mainloop::load(args.tma, p, ss, pipe_k, pipe_v, state, tile, seq, range, lane == 0);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    const int thread_idx = int(threadIdx.x) - Traits::kThreadsPerWarpgroup;
    PipelineState state;  // consumer start: stage 0, phase 0
    int q_phase = 0;
    // Pingpong primer: warpgroup 0 issues first. Each tile then ends with warpgroup 1's pass
    // to warpgroup 0 pending, which primes the next tile the same way.
    if (p.pingpong && thread_idx >= Traits::kThreadsPerWarpgroup) {
      cutlass::arch::NamedBarrier::arrive(Traits::kConsumerThreads,
                                          uint32_t(FwdBarrier::kPingpongWG0));
    }
    typename Traits::TiledMmaPV mma_pv;
    for (int t = scheduler.first(); scheduler.valid(t); t = scheduler.next(t)) {
      const TileCoord tile = scheduler.decode(t);
      const SeqInfo seq = SeqInfo::load(p, tile.batch);
      if (tile.m_block * kBlockM >= seq.len_q) continue;
      const KeyBlockRange range =
          key_block_range<kBlockM, kBlockN>(p.mask, tile.m_block, seq.len_q, seq.used_k);
      Tensor tOrO = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<Traits::kHeadDimV>>{});
      constexpr int kRows = decltype(size<0>(rowcol_view(tOrO)))::value;
      using Softmax = FwdSoftmax<Traits, kRows>;
      float inv_sum[kRows], lse[kRows];
      // The head's attention sink in log2 units (-inf: none; problem.h).
      const float sink_log2 =
          p.learnable_sink != nullptr ? p.learnable_sink[tile.head] * kLog2eF : -INFINITY;
      if (range.empty()) {
        // No visible key for any row of this tile: O = 0, LSE = -inf (the sink's, with one).
        clear(tOrO);
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) lse[r] = sink_log2 * kLn2F;
      } else {
        Softmax softmax(p.score_to_log2);
        Mainloop::compute(p, ss, pipe_k, pipe_v, state, tile, seq, range, q_phase, thread_idx,
                          tOrO, softmax);
        q_phase ^= 1;
        // All WGMMAs reading sQ have completed (warpgroup_wait inside compute).
        cutlass::arch::NamedBarrier::arrive(kQueryEmptyThreads,
                                            uint32_t(FwdBarrier::kQueryEmpty));
        softmax.finalize(inv_sum, lse, sink_log2);
        Tensor tOrO_rc = rowcol_view(tOrO);
        Softmax::scale_rows(tOrO_rc, inv_sum);
      }
      Epilogue::store(p, tile, seq, tOrO, lse, thread_idx);
    }
  }
}

}  // namespace flashlane::sm90
