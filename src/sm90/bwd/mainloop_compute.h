// mainloop_compute.h: the consumer warpgroups of the WGMMA backward, one loop for both split
// designs. Per visited (query head, query tile):
//   S, dP                      issue_scores: S = Q K^T and dP = dO V^T (or transposed)
//   P = exp2(S * log2e-scale - lse)      mask by select; softcap: tanh first
//   dS = P * (dP - delta)                softcap: times 1 - tanh^2
//   dV += P^T dO, dK += dS^T Q, dQ = dS K, dQ -> the dQ writer warp (dq_writer.h)
//                              gradients: the split's own operand paths
// The element-wise step, the mask, the waits and the ragged-tile handling are written once
// here; the split policy (Traits::Steps: split_keys.h or split_head_dim.h) owns the products.
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
#include "sm90/common/mask.h"
#include "sm90/common/score_math.h"
#include "sm90/common/wgmma.h"

namespace flashlane::sm90::bwd {

/// A (row, col) view with the queries as rows: itself when they are, else its transpose.
template <bool kQueriesAreRows, class Tensor>
__device__ auto query_major(Tensor&& t) {
  if constexpr (kQueriesAreRows) {
    return make_tensor(t.data(), t.layout());
  } else {
    return make_tensor(t.data(), select<1, 0>(t.layout()));
  }
}

template <class Traits>
struct BwdCompute {
  using Steps = typename Traits::Steps;
  using Element = typename Traits::Element;
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  using PipelineState = typename Traits::PipelineState;
  static constexpr int kBlockM = Traits::kBlockM;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;
  static constexpr int kHeadDimV = Traits::kHeadDimV;
  static constexpr int kConsumerThreads = Traits::kConsumerThreads;
  static constexpr bool kQueriesAreRows = Steps::kQueriesAreRows;

  /// Zeroes rows [valid, rows) of a (rows, kCols) 16-bit tile in shared memory (all consumers):
  /// 16-byte stores (every swizzle keeps 8 consecutive 16-bit elements of a row together).
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

  /// The zeros are generic-proxy stores and WGMMA reads through the async proxy: fence, then
  /// every consumer waits until all rows are zeroed.
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
      Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename Traits::SmemLayoutV{});
      zero_rows<kHeadDim>(sK, kBlockN, valid, thread_idx);
      zero_rows<kHeadDimV>(sV, kBlockN, valid, thread_idx);
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

  /// P (and with softcap dS) from the scores; zeroes P, and dS once formed, where the mask hides
  /// the pair: select, never arithmetic, so nothing computed there can leak. Waits for the
  /// score products inside: without softcap P is formed while dP is still on the tensor cores.
  /// tC: the (row, col) coordinates of the accumulators (Steps::score_coords).
  template <bool kSoftcap, class FragS, class CoordRC>
  __device__ static void scores_to_grads(const BwdParams& p, const KeyTileWork& w, int m0,
                                         bool need_mask, const float* lse, const float* delta,
                                         CoordRC const& tC, FragS& tSrS, FragS& tdPrdP) {
    const float c = p.score_to_log2;
    Tensor tS_rc = rowcol_view(tSrS);
    Tensor tdP_rc = rowcol_view(tdPrdP);
    // Queries as rows: per query row one LSE and one delta.
    Tensor tS_q = query_major<kQueriesAreRows>(tS_rc);
    Tensor tdP_q = query_major<kQueriesAreRows>(tdP_rc);
    Tensor tC_q = query_major<kQueriesAreRows>(tC);
    constexpr int kQueries = decltype(size<0>(tS_q))::value;
    constexpr int kKeys = decltype(size<1>(tS_q))::value;
    auto query_of = [&](int qi) { return get<kQueriesAreRows ? 0 : 1>(tC_q(qi, 0)); };

    // The mask walks the accumulators in their own (row, col) order.
    auto apply_mask = [&](auto zero_ds) {
      if (!need_mask) return;
      CUTE_UNROLL
      for (int r = 0; r < size<0>(tS_rc); ++r) {
        const int c0 = get<0>(tC(r, 0));
        CUTE_UNROLL
        for (int cc = 0; cc < size<1>(tS_rc); ++cc) {
          const int c1 = get<1>(tC(0, cc));
          const int row = m0 + (kQueriesAreRows ? c0 : c1);
          const int key = w.n0 + (kQueriesAreRows ? c1 : c0);
          if (!p.mask.visible(row, key, w.len_q, w.used_k)) {
            tS_rc(r, cc) = 0.f;
            if constexpr (decltype(zero_ds)::value) tdP_rc(r, cc) = 0.f;
          }
        }
      }
    };

    if constexpr (kSoftcap) {
      // dS needs the tanh of the same element: both products first, then P and dS in one pass
      // (dS = P (dP - delta) (1 - tanh^2)).
      warpgroup_wait<0>();
      CUTE_UNROLL
      for (int qi = 0; qi < kQueries; ++qi) {
        const float lse_q = lse[query_of(qi)];
        const float delta_q = delta[query_of(qi)];
        CUTE_UNROLL
        for (int ki = 0; ki < kKeys; ++ki) {
          const float th = softcap_tanh<Reciprocal::kFast>(tS_q(qi, ki), p.softcap_prescale);
          const float pv = score_exp2(th * c - lse_q);
          tS_q(qi, ki) = pv;
          tdP_q(qi, ki) = pv * (tdP_q(qi, ki) - delta_q) * (1.f - th * th);
        }
      }
      apply_mask(cute::true_type{});
    } else {
      // P while dP is still on the tensor cores, then dS = P (dP - delta); a masked P is 0 and
      // every dP is finite, so its dS is 0 too.
      warpgroup_wait<1>();
      CUTE_UNROLL
      for (int qi = 0; qi < kQueries; ++qi) {
        const float lse_q = lse[query_of(qi)];
        CUTE_UNROLL
        for (int ki = 0; ki < kKeys; ++ki) tS_q(qi, ki) = score_exp2(tS_q(qi, ki) * c - lse_q);
      }
      apply_mask(cute::false_type{});
      warpgroup_wait<0>();
      CUTE_UNROLL
      for (int qi = 0; qi < kQueries; ++qi) {
        const float delta_q = delta[query_of(qi)];
        CUTE_UNROLL
        for (int ki = 0; ki < kKeys; ++ki) {
          tdP_q(qi, ki) = tS_q(qi, ki) * (tdP_q(qi, ki) - delta_q);
        }
      }
    }
  }

  template <bool kSoftcap, class FragDK, class FragDV>
  __device__ static void run_impl(const BwdParams& p, SharedStorage& ss, Pipeline& pipe_q,
                                  Pipeline& pipe_do, const KeyTileWork& w, int thread_idx,
                                  FragDK& tdKrdK, FragDV& tdVrdV) {
    Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename Traits::SmemLayoutQ{});
    Tensor sdO = make_tensor(make_smem_ptr(ss.dout.data()), typename Traits::SmemLayoutDo{});
    const auto tC = Steps::score_coords(thread_idx);

    wait_key_tile(ss, w, thread_idx);

    PipelineState state;  // consumer start: stage 0, phase 0
    int ds_stage = 0;
    for (int t = 0; t < w.count; ++t) {
      const int m = w.m_block(t);
      const int m0 = m * kBlockM;
      const int stage = state.index();
      pipe_q.consumer_wait(state);
      pipe_do.consumer_wait(state);
      // Varlen: rows past the sequence belong to the next one (or to padding that may hold NaN).
      if (p.varlen_q && m0 + kBlockM > w.len_q) {
        zero_rows<kHeadDim>(sQ(_, _, stage), kBlockM, w.len_q - m0, thread_idx);
        zero_rows<kHeadDimV>(sdO(_, _, stage), kBlockM, w.len_q - m0, thread_idx);
        rows_zeroed_barrier();
      }

      Tensor tSrS = Steps::score_fragment();
      Tensor tdPrdP = Steps::score_fragment();
      Steps::issue_scores(ss, thread_idx, stage, tSrS, tdPrdP);

      // The per-element mask is needed unless every row of the tile sees every key of it.
      const bool need_mask =
          key_tile_needs_mask<kBlockM, kBlockN>(p.mask, m0, w.len_q, w.used_k, w.n0);
      const float* lse = ss.lse_log2.data() + stage * kBlockM;
      const float* delta = ss.delta.data() + stage * kBlockM;
      scores_to_grads<kSoftcap>(p, w, m0, need_mask, lse, delta, tC, tSrS, tdPrdP);

      Steps::gradients(ss, pipe_q, pipe_do, state, ds_stage, thread_idx, tSrS, tdPrdP, tdKrdK,
                       tdVrdV);
      ++state;
      ds_stage ^= 1;
    }
  }
};

}  // namespace flashlane::sm90::bwd
