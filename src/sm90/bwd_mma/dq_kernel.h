// dq_kernel.h: deterministic dQ. One CTA owns one query tile of one head and walks the key
// tiles it can see in a fixed order, recomputing S, dP and dS (two more products than the
// atomic path) and keeping dQ in registers: no atomics, bitwise reproducible.
#pragma once

#include "sm90/bwd_mma/dkdv_kernel.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd_mma/scores.h"
#include "sm90/bwd_mma/tiles.h"

namespace flashlane::sm90::bwd {

template <class T, int D, int DV>
__global__ void __launch_bounds__(kThreads, 1) dq_kernel(const BwdParams p) {
  constexpr int BM = kBlockM, BN = block_n<D, DV>();
  using Smem = BwdSmem<T, D, DV, BM, BN>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int m_block = blockIdx.x, hq = blockIdx.y, b = blockIdx.z;
  const int h_kv = hq / (p.heads_q / p.heads_kv);
  const int warp = threadIdx.x / 32;
  const SeqInfo si = seq_info(p, b);
  const int m0 = m_block * BM;
  if (m0 >= si.len_q) return;
  const int rows_q = min(BM, si.len_q - m0);

  load_tile<BM, D>(sm.q[0], row_ptr<T>(p.q, p.q_batch_stride, p.q_row_stride, p.q_head_stride, b,
                                    si.q_start + m0, hq),
                   p.q_row_stride, rows_q);
  load_tile<BM, DV>(sm.dout[0], row_ptr<T>(p.dout, p.do_batch_stride, p.do_row_stride,
                                        p.do_head_stride, b, si.q_start + m0, hq),
                    p.do_row_stride, rows_q);
  load_row_stats(sm, p, hq, si.ws_row0 + m0, rows_q);

  // Visible keys of the tile: [lo(first row), hi(last row)), both non-decreasing in the row.
  int64_t lo_first, hi_first, lo_last, hi_last;
  p.mask.key_range(m0, si.len_q, si.used_k, &lo_first, &hi_first);
  p.mask.key_range(m0 + rows_q - 1, si.len_q, si.used_k, &lo_last, &hi_last);
  const int n_begin = int(lo_first / BN);
  const int n_end = hi_last > lo_first ? int((hi_last + BN - 1) / BN) : n_begin;

  AccFrag dq[frags_per_warp<BM, D>()];
  zero(dq);
  for (int n_block = n_begin; n_block < n_end; ++n_block) {
    const int n0 = n_block * BN;
    const int rows_used = max(0, min(BN, si.used_k - n0));
    __syncthreads();  // the previous tile's readers of k, v, ds are done
    load_tile<BN, D>(sm.k, row_ptr<T>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride,
                                      b, si.k_start + n0, h_kv),
                     p.k_row_stride, rows_used);
    load_tile<BN, DV>(sm.v, row_ptr<T>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride,
                                       b, si.k_start + n0, h_kv),
                      p.v_row_stride, rows_used);
    __syncthreads();
    compute_s_dp(sm, 0, warp);
    __syncthreads();
    scores_to_p_ds(sm, p, 0, m0, n0, si.len_q, si.used_k);
    __syncthreads();
    warp_gemm<BM, D, BN, RowMajor, RowMajor>(dq, sm.ds, Smem::kLdP, sm.k, Smem::kLdK, warp);
    warp_gemm<BM, D, BN, RowMajor, RowMajor>(dq, sm.ds_lo, Smem::kLdP, sm.k, Smem::kLdK, warp);
  }

  T* dq_out = static_cast<T*>(p.dq) + b * p.dq_batch_stride + (si.q_start + m0) * p.dq_row_stride +
              hq * p.dq_head_stride;
  float* scratch = sm.scratch[warp];
#pragma unroll
  for (int i = 0; i < frags_per_warp<BM, D>(); ++i) {
    const int f = warp + i * kWarps;
    wmma::store_matrix_sync(scratch, dq[i], kFrag, wmma::mem_row_major);
    __syncwarp();
    write_block(dq_out, p.dq_row_stride, (f / (D / kFrag)) * kFrag, (f % (D / kFrag)) * kFrag,
                rows_q, scratch, p.softmax_scale);
    __syncwarp();
  }
}

}  // namespace flashlane::sm90::bwd
