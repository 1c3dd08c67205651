// dq_writer.h: warp 1 of the producer warpgroup. For every visited query tile it takes the
// consumers' fp32 dQ from shared memory and adds it into the global accumulator with one bulk
// reduce (cp.reduce.async.bulk .add.f32: the tile is one contiguous block in both places, so no
// per-element atomics), then hands the buffer back.
//
// Deterministic mode: the key tiles of a (query head, query tile) add in ascending key-tile
// order. Each accumulator tile has a counter; the writer waits until it equals the number of key
// tiles that add before this one (work.h), adds, hands the shared buffer back once the add has
// read it, then waits for the add to land and increments the counter (FlashAttention-3's
// deterministic backward uses a semaphore per tile too). Forward progress does not depend on the
// order the hardware starts CTAs in: every key tile a CTA waits for holds a lower ticket
// (work.h, deterministic_tile), so a CTA that is running or done has it.
#pragma once

#include <cutlass/arch/barrier.h>

#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd/work.h"

namespace flashlane::sm90::bwd {

__device__ __forceinline__ void bulk_reduce_add_f32(float* gmem, const float* smem, int bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
               :
               : "l"(gmem), "r"(s), "r"(bytes)
               : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

__device__ __forceinline__ void bulk_wait_read_all() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

__device__ __forceinline__ void bulk_wait_complete_all() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

__device__ __forceinline__ int load_acquire(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}

template <class Traits>
struct BwdDqWriter {
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr uint32_t kDqSyncThreads = Traits::kConsumerThreads + cutlass::NumThreadsPerWarp;

  __device__ static void run(const BwdParams& p, typename Traits::SharedStorage& ss,
                             const KeyTileWork& w, int lane) {
    if (w.count == 0) return;
    cutlass::arch::NamedBarrier::arrive(kDqSyncThreads, uint32_t(BwdBarrier::kDqEmpty));
    for (int t = 0; t < w.count; ++t) {
      const int hq = w.head_q(t), m = w.m_block(t);
      const int64_t tile = int64_t(hq) * p.ws_tiles + w.tile_base + m;
      float* dst = p.dq_accum + tile * Traits::kDqTileFloats;
      int* counter = p.dq_semaphore + tile;
      // Deterministic mode: this tile's turn, counted while the consumers still compute its dQ.
      const int before = p.deterministic ? key_tiles_before<kBlockM, kBlockN>(p, w, m, lane) : 0;
      // The consumers hand the tile over in kDqRounds parts of up to kDqRoundFloats each.
      for (int r = 0; r < Traits::kDqRounds; ++r) {
        cutlass::arch::NamedBarrier::sync(kDqSyncThreads, uint32_t(BwdBarrier::kDqFull));
        if (lane == 0) {
          const int bytes = Traits::dq_round_floats(r) * int(sizeof(float));
          float* part = dst + r * Traits::kDqRoundFloats;
          if (p.deterministic && r == 0) {
            while (load_acquire(counter) != before) {
            }
            asm volatile("fence.proxy.async.global;\n" ::: "memory");
          }
          bulk_reduce_add_f32(part, ss.dq.data(), bytes);
          bulk_wait_read_all();
        }
        __syncwarp();
        // The buffer goes back to the consumers as soon as it has been read ...
        if (t + 1 < w.count || r + 1 < Traits::kDqRounds) {
          cutlass::arch::NamedBarrier::arrive(kDqSyncThreads, uint32_t(BwdBarrier::kDqEmpty));
        }
        // ... and the next key tile's turn comes once the adds have landed, while the consumers
        // already compute the next tile.
        if (p.deterministic && r + 1 == Traits::kDqRounds && lane == 0) {
          bulk_wait_complete_all();
          asm volatile("fence.proxy.async.global;\n" ::: "memory");
          __threadfence();
          atomicAdd(counter, 1);
        }
        __syncwarp();
      }
    }
  }
};

}  // namespace flashlane::sm90::bwd
