// kernel.h: the warp-specialized sm90 WGMMA backward kernel (dK, dV and the fp32 dQ sum).
// Grid (key tiles, KV heads, batch; in deterministic mode a CTA takes its key tile from a ticket
// instead, work.h), 3 warpgroups per CTA, one CTA per SM:
//   warpgroup 0: warp 0 issues the TMA loads (mainloop_load.h), warp 1 adds dQ into the global
//                accumulator (dq_writer.h), warps 2-3 exit; registers handed to the consumers.
//   warpgroups 1-2: consumers (mainloop_compute.h; the split of the kernel-table row decides
//                what each owns: split_keys.h, split_head_dim.h), then the dK/dV epilogue.
// All roles derive the same iteration sequence from work.h.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "sm90/bwd/dq_writer.h"
#include "sm90/bwd/epilogue.h"
#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/mainloop_compute.h"
#include "sm90/bwd/mainloop_load.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd/split_head_dim.h"
#include "sm90/bwd/split_keys.h"
#include "sm90/bwd/work.h"

namespace flashlane::sm90::bwd {

template <class Traits>
struct BwdKernelArgs {
  BwdParams p;
  typename BwdLoad<Traits>::TmaArgs tma;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1)
    bwd_kernel(const __grid_constant__ BwdKernelArgs<Traits> args) {
  using Pipeline = typename Traits::Pipeline;
  using SharedStorage = typename Traits::SharedStorage;
  extern __shared__ char smem_raw[];
  SharedStorage& ss = *reinterpret_cast<SharedStorage*>(smem_raw);
  const BwdParams& p = args.p;

  KeyTileCoord tile{int(blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
  if (p.deterministic) {  // the key tile comes from a ticket (work.h, deterministic_tile)
    if (threadIdx.x == 0) ss.tile_ticket = atomicAdd(p.tile_ticket, 1);
    __syncthreads();
    tile = deterministic_tile(ss.tile_ticket, int(gridDim.x), int(gridDim.y), int(gridDim.z),
                              p.det_key_chunk);
  }
  const KeyTileWork w =
      key_tile_work<Traits::kBlockM, Traits::kBlockN>(p, tile.n_block, tile.h_kv, tile.b);
  if (w.n0 >= w.len_k) return;  // the whole CTA: past this sequence's keys

  const int warp_idx = cutlass::canonical_warp_idx_sync();
  const int warpgroup = cutlass::canonical_warp_group_idx();
  const int lane = int(threadIdx.x) % cutlass::NumThreadsPerWarp;

  if (warp_idx == 0 && lane == 0) {
    cute::prefetch_tma_descriptor(args.tma.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(args.tma.tma_do.get_tma_descriptor());
    cute::prefetch_tma_descriptor(args.tma.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(args.tma.tma_v.get_tma_descriptor());
    ss.kv_full.init(/*arrival_count=*/1);
  }
  typename Pipeline::Params pipe_params;
  pipe_params.role = warpgroup == 0 ? Pipeline::ThreadCategory::Producer
                                    : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kConsumerThreads;
  pipe_params.transaction_bytes = Traits::kTmaBytesQ + Traits::kRowStatBytes;
  Pipeline pipe_q(ss.pipeline_q, pipe_params, Shape<_1, _1, _1>{});
  pipe_params.transaction_bytes = Traits::kTmaBytesDo + Traits::kRowStatBytes;
  Pipeline pipe_do(ss.pipeline_do, pipe_params, Shape<_1, _1, _1>{});
  cutlass::arch::fence_barrier_init();
  __syncthreads();

  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    if (warp_idx == 0) {
      BwdLoad<Traits>::run(args.tma, p, ss, pipe_q, pipe_do, w, lane == 0);
    } else if (warp_idx == 1) {
      BwdDqWriter<Traits>::run(p, ss, w, lane);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    const int thread_idx = int(threadIdx.x) - Traits::kThreadsPerWarpgroup;
    using Compute = BwdCompute<Traits>;
    Tensor tdKrdK = partition_fragment_C(typename Traits::TiledMmaDK{},
                                         Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDim>>{});
    Tensor tdVrdV = partition_fragment_C(typename Traits::TiledMmaDV{},
                                         Shape<Int<Traits::kBlockN>, Int<Traits::kHeadDimV>>{});
    clear(tdKrdK);
    clear(tdVrdV);
    Compute::run(p, ss, pipe_q, pipe_do, w, thread_idx, tdKrdK, tdVrdV);
    BwdEpilogue<Traits>::store(p, w, tdKrdK, tdVrdV, thread_idx);
  }
}

}  // namespace flashlane::sm90::bwd
