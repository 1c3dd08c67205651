// mainloop_compute.h: the consumer warpgroups of the WGMMA backward (64 keys each). Per visited
// (query head, query tile):
//   S^T = K Q^T, dP^T = V dO^T            (WGMMA SS, issued back to back)
//   P^T = exp2(S^T * log2e-scale - lse)    (mask by select; softcap: tanh first)
//   dV += P^T dO                           (WGMMA RS, runs while dS^T is computed)
//   dS^T = P^T * (dP^T - delta)            (softcap: times 1 - tanh^2)
//   dK += dS^T Q                           (WGMMA RS)
//   dS -> shared memory, both warpgroups meet, dQ = dS K (WGMMA SS, fp32)
//   dQ -> shared memory for the dQ writer warp (dq_writer.h)
// (FlashAttention-3, sec. 3 and its hopper/mainloop_bwd_sm90_tma_gmma_ws.hpp design; our own
// code on CuTe.) dK and dV stay in registers for the whole CTA; they are unscaled sums, the
// epilogue applies softmax_scale to dK.
//
// NaN safety: every shared-memory row that is not a real (query, key) of the sequence is zero
// (TMA zero-fills past the tensor; rows of a neighbouring sequence or past seqused_k are zeroed
// here), so every product is finite and the masked P (selected to 0) zeroes its terms.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "core/attention_rules.h"
#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd/work.h"
#include "sm90/fwd/utils.h"

namespace flashlane::sm90::bwd {

/// tanh to ~1e-7 absolute even under --use_fast_math (tanhf would become tanh.approx).
__device__ __forceinline__ float tanh_accurate(float x) {
  constexpr float kTwoLog2e = 2.8853900817779268f;  // 2 * log2(e)
  const float e = exp2f(kTwoLog2e * fabsf(x));      // +inf for large |x|: t -> 1
  return copysignf(1.f - __fdividef(2.f, e + 1.f), x);
}

template <class Traits>
struct BwdCompute {
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kConsumerThreads = Traits::kConsumerThreads;
  static constexpr uint32_t kDqSyncThreads = kConsumerThreads + cutlass::NumThreadsPerWarp;

  /// Zeroes rows [valid, rows) of a (rows, head_dim) tile: 16-byte stores (every swizzle keeps 8
  /// consecutive 16-bit elements of a row together), then make them visible to WGMMA.
  template <class SmemTensor>
  __device__ static void zero_rows(SmemTensor&& s, int rows, int valid, int thread_idx) {
    constexpr int kChunk = 16 / sizeof(Element);
    constexpr int kChunksPerRow = kHeadDim / kChunk;
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

  /// Waits for K and V and zeroes their rows past the used keys (neighbouring sequence, NaN
  /// beyond seqused_k).
  __device__ static void wait_key_tile(SharedStorage& ss, const KeyTileWork& w, int thread_idx) {
    ss.kv_full.wait(0);
    const int valid = max(0, min(kBlockN, w.used_k - w.n0));
    if (valid < kBlockN) {
      Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
      Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutK{});
      zero_rows(sK, kBlockN, valid, thread_idx);
      zero_rows(sV, kBlockN, valid, thread_idx);
      rows_zeroed_barrier();
    }
  }

  template <class FragDK, class FragDV>
  __device__ static void run(const BwdParams& p, SharedStorage& ss, Pipeline& pipe_q,
                             Pipeline& pipe_do, const KeyTileWork& w, int thread_idx,
                             FragDK& tdKrdK, FragDV& tdVrdV) {
    // Softcap is a separate instantiation of the loop: the two orders of waits differ and a
    // runtime branch between them would keep the compiler from pipelining the WGMMAs.
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
    typename Traits::TiledMmaKV mma_kv;
    typename Traits::TiledMmaDQ mma_dq;
    auto thr_sdp = mma_sdp.get_thread_slice(thread_idx);
    auto thr_kv = mma_kv.get_thread_slice(thread_idx);
    auto thr_dq = mma_dq.get_thread_slice(thread_idx);

    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQ{});
    Tensor sQt = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQt{});
    Tensor sdOt = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutQt{});
    Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutK{});
    Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutK{});
    Tensor sKt = make_tensor(make_smem_ptr(ss.k.data()), typename Traits::SmemLayoutKt{});
    Tensor sDs = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutDs{});
    Tensor sDsT = make_tensor(make_smem_ptr(ss.ds.data()), typename Traits::SmemLayoutDsT{});

    Tensor tSrK = thr_sdp.partition_fragment_A(sK);
    Tensor tSrQ = thr_sdp.partition_fragment_B(sQ);
    Tensor tdPrV = thr_sdp.partition_fragment_A(sV);
    Tensor tdPrdO = thr_sdp.partition_fragment_B(sdO);
    Tensor tdVrdO = thr_kv.partition_fragment_B(sdOt);
    Tensor tdKrQ = thr_kv.partition_fragment_B(sQt);
    Tensor tdQrdS = thr_dq.partition_fragment_A(sDs);
    Tensor tdQrK = thr_dq.partition_fragment_B(sKt);
    // dS^T registers -> dS in shared memory with stmatrix (transposing 8x8 16-bit tiles), as
    // FlashAttention-3 does for its swapped products.
    auto r2s_ds = make_tiled_copy_C(Copy_Atom<SM90_U16x8_STSM_T, Element>{}, mma_sdp);
    auto thr_r2s_ds = r2s_ds.get_thread_slice(thread_idx);
    Tensor tdSsdS = thr_r2s_ds.partition_D(sDsT);

    // (key, query) coordinates of this thread's S^T accumulators.
    Tensor tScS_rc = rowcol_view(
        thr_sdp.partition_C(make_identity_tensor(Shape<Int<kBlockN>, Int<kBlockM>>{})));

    wait_key_tile(ss, w, thread_idx);

    PipelineState state;  // consumer start: stage 0, phase 0
    int ds_stage = 0;
    const float c = p.score_to_log2;
    for (int t = 0; t < w.count; ++t) {
      const int m = w.m_block(t);
      const int m0 = m * kBlockM;
      const int stage = state.index();
      pipe_q.consumer_wait(state);
      pipe_do.consumer_wait(state);
      // Varlen: rows past the sequence belong to the next one (or to padding that may hold NaN).
      if (p.varlen && m0 + kBlockM > w.len_q) {
        zero_rows(sQ(_, _, stage), kBlockM, w.len_q - m0, thread_idx);
        zero_rows(sdO(_, _, stage), kBlockM, w.len_q - m0, thread_idx);
        rows_zeroed_barrier();
      }

      Tensor tSrS = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
      Tensor tdPrdP = partition_fragment_C(mma_sdp, Shape<Int<kBlockN>, Int<kBlockM>>{});
      warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tSrK,
                                                                 tSrQ(_, _, _, stage), tSrS);
      warpgroup_gemm</*kZeroInit=*/true, /*kARegisters=*/false>(mma_sdp, tdPrV,
                                                                 tdPrdO(_, _, _, stage), tdPrdP);

      // The per-element mask is needed unless every row of the tile sees every key of it.
      int64_t lo_first, hi_first, lo_last, hi_last;
      const int last_row = min(m0 + kBlockM, w.len_q) - 1;
      p.mask.key_range(m0, w.len_q, w.used_k, &lo_first, &hi_first);
      p.mask.key_range(last_row, w.len_q, w.used_k, &lo_last, &hi_last);
      const bool need_mask = !(w.n0 >= lo_last && w.n0 + kBlockN <= hi_first);
      const float* lse = ss.lse_log2.data() + stage * kBlockM;
      const float* delta = ss.delta.data() + stage * kBlockM;
      // Row-column views: rows are this thread's keys, columns its queries.
      Tensor tS_rc = rowcol_view(tSrS);
      Tensor tdP_rc = rowcol_view(tdPrdP);
      constexpr int kRows = decltype(size<0>(tS_rc))::value;
      constexpr int kCols = decltype(size<1>(tS_rc))::value;
      // Zeroes P^T (and dS^T once formed) where the mask hides the pair: select, never
      // arithmetic, so nothing computed there can leak.
      auto apply_mask = [&](auto zero_ds) {
        if (!need_mask) return;
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int key = w.n0 + get<0>(tScS_rc(r, 0));
          CUTE_UNROLL
          for (int cc = 0; cc < kCols; ++cc) {
            const int row = m0 + get<1>(tScS_rc(0, cc));
            if (!p.mask.visible(row, key, w.len_q, w.used_k)) {
              tS_rc(r, cc) = 0.f;
              if constexpr (decltype(zero_ds)::value) tdP_rc(r, cc) = 0.f;
            }
          }
        }
      };

      if constexpr (kSoftcap) {
        // dS needs the tanh of the same element: both products first, then P^T and dS^T in
        // one pass (dS = P (dP - delta) (1 - tanh^2)).
        warpgroup_wait<0>();
        CUTE_UNROLL
        for (int cc = 0; cc < kCols; ++cc) {
          const float lse_c = lse[get<1>(tScS_rc(0, cc))];
          const float delta_c = delta[get<1>(tScS_rc(0, cc))];
          CUTE_UNROLL
          for (int r = 0; r < kRows; ++r) {
            const float th = tanh_accurate(tS_rc(r, cc) * p.softcap_prescale);
            const float pv = exp2f(th * c - lse_c);
            tS_rc(r, cc) = pv;
            tdP_rc(r, cc) = pv * (tdP_rc(r, cc) - delta_c) * (1.f - th * th);
          }
        }
        apply_mask(cute::true_type{});
      } else {
        // P^T while dP^T is still on the tensor cores, then dS = P (dP - delta); a masked P is
        // 0 and every dP is finite, so its dS is 0 too.
        warpgroup_wait<1>();
        CUTE_UNROLL
        for (int cc = 0; cc < kCols; ++cc) {
          const float lse_c = lse[get<1>(tScS_rc(0, cc))];
          CUTE_UNROLL
          for (int r = 0; r < kRows; ++r) tS_rc(r, cc) = exp2f(tS_rc(r, cc) * c - lse_c);
        }
        apply_mask(cute::false_type{});
        warpgroup_wait<0>();
        CUTE_UNROLL
        for (int cc = 0; cc < kCols; ++cc) {
          const float delta_c = delta[get<1>(tScS_rc(0, cc))];
          CUTE_UNROLL
          for (int r = 0; r < kRows; ++r) tdP_rc(r, cc) = tS_rc(r, cc) * (tdP_rc(r, cc) - delta_c);
        }
      }
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

      ++state;
      ds_stage ^= 1;
    }
  }
};

}  // namespace flashlane::sm90::bwd
