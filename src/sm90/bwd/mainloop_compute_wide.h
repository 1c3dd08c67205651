// mainloop_compute_wide.h: the consumer warpgroups of the wide-head WGMMA backward
// (kernel_traits_wide.h). Per visited (query head, query tile):
//   S = Q K^T, dP = dO V^T              (WGMMA SS; this warpgroup's 32 keys)
//   P = exp2(S * log2e-scale - lse)      (mask by select; softcap: tanh first)
//   dS = P * (dP - delta)                (softcap: times 1 - tanh^2)
//   P, dS -> shared memory; both warpgroups meet
//   dV += P^T dO, dK += dS^T Q           (WGMMA SS; this warpgroup's half of head_dim)
//   dQ = dS K, 64 columns at a time      (WGMMA SS; chunks alternate between the warpgroups)
//   each round of two chunks -> shared memory for the dQ writer warp (dq_writer.h)
// NaN safety as in mainloop_compute.h: rows that are not real queries or keys are zero in
// shared memory, masked P and dS are selected to 0.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "core/attention_rules.h"
#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/mainloop_compute.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd/work.h"
#include "sm90/fwd/utils.h"

namespace flashlane::sm90::bwd {

template <class Traits>
struct BwdComputeWide {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kHeadDimV = Traits::kHeadDimV;
  static constexpr int kConsumerThreads = Traits::kConsumerThreads;
  static constexpr int kWgThreads = Traits::kThreadsPerWarpgroup;
  static constexpr uint32_t kDqSyncThreads = kConsumerThreads + cutlass::NumThreadsPerWarp;

  /// Zeroes rows [valid, rows) of a (rows, cols) 16-bit tile in shared memory (all consumers).
  template <int kCols, class SmemTensor>
  __device__ static void zero_rows(SmemTensor&& s, int rows, int valid, int thread_idx) {
    constexpr int kChunk = 16 / sizeof(Element);
    constexpr int kChunksPerRow = kCols / kChunk;
    const int count = (rows - valid) * kChunksPerRow;
    for (int i = thread_idx; i < count; i += kConsumerThreads) {
      const int row = valid + i / kChunksPerRow;
      const int col = (i % kChunksPerRow) * kChunk;
      *reinterpret_cast<uint4*>(&s(row, col)) = make_uint4(0, 0, 0, 0);
    }
  }

  __device__ static void rows_zeroed_barrier() {
    cutlass::arch::fence_view_async_shared();
    cutlass::arch::NamedBarrier::sync(kConsumerThreads, uint32_t(BwdBarrier::kRowsZeroed));
  }

  template <class FragDK, class FragDV>
  __device__ static void run(const BwdParams& p, SharedStorage& ss, Pipeline& pipe_q,
                             Pipeline& pipe_do, const KeyTileWork& w, int thread_idx,
                             FragDK& tdKrdK, FragDV& tdVrdV) {
    if (p.has_softcap) {
      run_impl<true>(p, ss, pipe_q, pipe_do, w, thread_idx, tdKrdK, tdVrdV);
    } else {
      run_impl<false>(p, ss, pipe_q, pipe_do, w, thread_idx, tdKrdK, tdVrdV);
    }
  }

  template <bool kSoftcap, class FragDK, class FragDV>
  __device__ static void run_impl(const BwdParams& p, SharedStorage& ss, Pipeline& pipe_q,
                                  Pipeline& pipe_do, const KeyTileWork& w, int thread_idx,
                                  FragDK& tdKrdK, FragDV& tdVrdV) {
    typename Traits::TiledMmaSdP mma_sdp;
    typename Traits::TiledMmaDK mma_dk;
    typename Traits::TiledMmaDV mma_dv;
    typename Traits::TiledMmaDqChunk mma_dq;
    const int warpgroup = thread_idx / kWgThreads;
    const int wg_thread = thread_idx % kWgThreads;
    auto thr_sdp = mma_sdp.get_thread_slice(thread_idx);
    auto thr_dk = mma_dk.get_thread_slice(thread_idx);
    auto thr_dv = mma_dv.get_thread_slice(thread_idx);
    auto thr_dq = mma_dq.get_thread_slice(wg_thread);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDo{});
    Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDot{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
    Tensor sP = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutPds{});
    Tensor sPt = make_tensor(make_smem_ptr(ss.p.data()), typename Traits::SmemLayoutPdsT{});
    Tensor sdS = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutPds{});
    Tensor sdSt = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutPdsT{});

    Tensor tSrQ = thr_sdp.partition_fragment_A(sQ);
    Tensor tSrK = thr_sdp.partition_fragment_B(sK);
    Tensor tdPrdO = thr_sdp.partition_fragment_A(sdO);
    Tensor tdPrV = thr_sdp.partition_fragment_B(sV);
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
    // (query, key) coordinates of this thread's S accumulators.
    Tensor tScS_rc = rowcol_view(
        thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{})));

    // K and V: wait, and zero the rows past the used keys.
    ss.kv_full.wait(0);
    {
      const int valid = max(0, min(kBlockN, w.used_k - w.n0));
      if (valid < kBlockN) {
        zero_rows<kHeadDim>(sK, kBlockN, valid, thread_idx);
        zero_rows<kHeadDimV>(sV, kBlockN, valid, thread_idx);
        rows_zeroed_barrier();
      }
    }

    PipelineState state;
    int ds_stage = 0;
    const float c = p.score_to_log2;
    for (int t = 0; t < w.count; ++t) {
      const int m = w.m_block(t);
      const int m0 = m * kBlockM;
      const int stage = state.index();
      pipe_q.consumer_wait(state);
      pipe_do.consumer_wait(state);
      if (p.varlen && m0 + kBlockM > w.len_q) {
        zero_rows<kHeadDim>(sQ(_, _, stage), kBlockM, w.len_q - m0, thread_idx);
        zero_rows<kHeadDimV>(sdO(_, _, stage), kBlockM, w.len_q - m0, thread_idx);
        rows_zeroed_barrier();
      }

      Tensor tSrS = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
      Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<Int<kBlockM>, Int<kBlockN>>{});
      warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tSrQ(_, _, _, stage),
                                                                 tSrK, tSrS);
      warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tdPrdO(_, _, _, stage),
                                                                 tdPrV, tdPrdP);

      int64_t lo_first, hi_first, lo_last, hi_last;
      const int last_row = min(m0 + kBlockM, w.len_q) - 1;
      p.mask.key_range(m0, w.len_q, w.used_k, &lo_first, &hi_first);
      p.mask.key_range(last_row, w.len_q, w.used_k, &lo_last, &hi_last);
      const bool need_mask = !(w.n0 >= lo_last && w.n0 + kBlockN <= hi_first);
      const float* lse = ss.lse_log2.data() + stage * kBlockM;
      const float* delta = ss.delta.data() + stage * kBlockM;
      Tensor tS_rc = rowcol_view(tSrS);
      Tensor tdP_rc = rowcol_view(tdPrdP);
      constexpr int kRows = decltype(size<0>(tS_rc))::value;
      constexpr int kCols = decltype(size<1>(tS_rc))::value;
      auto apply_mask = [&](auto zero_ds) {
        if (!need_mask) return;
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int row = m0 + get<0>(tScS_rc(r, 0));
          CUTE_UNROLL
          for (int cc = 0; cc < kCols; ++cc) {
            const int key = w.n0 + get<1>(tScS_rc(0, cc));
            if (!p.mask.visible(row, key, w.len_q, w.used_k)) {
              tS_rc(r, cc) = 0.f;
              if constexpr (decltype(zero_ds)::value) tdP_rc(r, cc) = 0.f;
            }
          }
        }
      };
      if constexpr (kSoftcap) {
        warpgroup_wait<0>();
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const float lse_r = lse[get<0>(tScS_rc(r, 0))];
          const float delta_r = delta[get<0>(tScS_rc(r, 0))];
          CUTE_UNROLL
          for (int cc = 0; cc < kCols; ++cc) {
            const float th = tanh_accurate(tS_rc(r, cc) * p.softcap_prescale);
            const float pv = exp2f(th * c - lse_r);
            tS_rc(r, cc) = pv;
            tdP_rc(r, cc) = pv * (tdP_rc(r, cc) - delta_r) * (1.f - th * th);
          }
        }
        apply_mask(cute::true_type{});
      } else {
        warpgroup_wait<1>();  // S ready; dP may still run
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const float lse_r = lse[get<0>(tScS_rc(r, 0))];
          CUTE_UNROLL
          for (int cc = 0; cc < kCols; ++cc) tS_rc(r, cc) = exp2f(tS_rc(r, cc) * c - lse_r);
        }
        apply_mask(cute::false_type{});
        warpgroup_wait<0>();
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const float delta_r = delta[get<0>(tScS_rc(r, 0))];
          CUTE_UNROLL
          for (int cc = 0; cc < kCols; ++cc) tdP_rc(r, cc) = tS_rc(r, cc) * (tdP_rc(r, cc) - delta_r);
        }
      }

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

      ++state;
      ds_stage ^= 1;
    }
  }
};

}  // namespace flashlane::sm90::bwd
