// dkdv_kernel.h: the main backward kernel. One CTA owns one key tile (BN keys of one KV head):
// it keeps dK and dV of the tile in registers while it walks, for every query head of the
// GQA group, the query tiles that can see the tile (masked-out tiles never visited). Per query
// tile: S and dP by tensor cores, P and dS element-wise (scores.h), then dV += P^T dO,
// dK += dS^T Q (P and dS as hi + lo pairs, scores.h), and in atomic mode dQ += dS K added into the fp32 accumulator with vector
// atomics. Looping the group's heads inside the CTA makes GQA/MQA dK/dV race-free and
// deterministic.
#pragma once

#include "sm90/bwd/params.h"
#include "sm90/bwd_mma/scores.h"
#include "sm90/bwd_mma/tiles.h"

namespace flashlane::sm90::bwd {

constexpr int kBlockM = 64;

/// Key-tile edge: dK and dV of a tile live in registers, so wide heads take half the keys.
template <int D, int DV>
constexpr int block_n() {
  return D <= 128 && DV <= 128 ? 64 : 32;
}

template <class T>
__device__ inline const T* row_ptr(const void* base, int64_t batch_stride, int64_t row_stride,
                                   int64_t head_stride, int b, int64_t row, int h) {
  return static_cast<const T*>(base) + b * batch_stride + row * row_stride + h * head_stride;
}

/// Adds one 16x16 float block (row-major in `scratch`) to rows row0.. of the dQ accumulator
/// (row pitch D floats); rows at or beyond `rows` skipped. One warp, float4 atomics.
template <int D>
__device__ inline void atomic_add_block(float* accum, int row0, int col0, int rows,
                                        const float* scratch) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int quad = lane * 2 + k;  // 64 float4 per block
    const int r = quad / 4, c = (quad % 4) * 4;
    if (row0 + r < rows) {
      const float4 val = *reinterpret_cast<const float4*>(scratch + r * kFrag + c);
      atomicAdd(reinterpret_cast<float4*>(accum + int64_t(row0 + r) * D + col0 + c), val);
    }
  }
}

template <class T, int D, int DV, bool kAtomicDq>
__global__ void __launch_bounds__(kThreads, 1) dkdv_kernel(const BwdParams p) {
  constexpr int BM = kBlockM, BN = block_n<D, DV>();
  using Smem = BwdSmem<T, D, DV, BM, BN>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>(smem_raw);

  const int n_block = blockIdx.x, h_kv = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const SeqInfo si = seq_info(p, b);
  const int n0 = n_block * BN;
  if (n0 >= si.len_k) return;
  const int rows_k = min(BN, si.len_k - n0);
  const int rows_used = max(0, min(BN, si.used_k - n0));

  load_tile<BN, D>(sm.k, row_ptr<T>(p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, b,
                                    si.k_start + n0, h_kv),
                   p.k_row_stride, rows_used);
  load_tile<BN, DV>(sm.v, row_ptr<T>(p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, b,
                                     si.k_start + n0, h_kv),
                    p.v_row_stride, rows_used);

  AccFrag dk[frags_per_warp<BN, D>()], dv[frags_per_warp<BN, DV>()];
  zero(dk);
  zero(dv);

  // Query rows that see some key of the tile: visible(i, j) needs
  // j - shift - window_right <= i <= j - shift + window_left.
  const int64_t shift = p.mask.diagonal_shift(si.len_q, si.used_k);
  int64_t i_lo = 0, i_end = rows_used > 0 ? si.len_q : 0;
  if (p.mask.window_right >= 0) i_lo = max(int64_t(0), n0 - shift - p.mask.window_right);
  if (p.mask.window_left >= 0) {
    i_end = min(i_end, int64_t(n0) + rows_used - 1 - shift + p.mask.window_left + 1);
  }
  const int m_begin = int(i_lo / BM);
  const int m_end = i_end > i_lo ? int((i_end + BM - 1) / BM) : m_begin;

  // The (query head, query tile) pairs of this key tile, in a fixed order; the next pair's
  // Q, dO, LSE and delta are copied (cp.async) into the other stage while this one computes.
  const int group = p.heads_q / p.heads_kv;
  const int tiles_per_head = m_end - m_begin;
  const int num_tiles = group * tiles_per_head;
  auto issue_tile = [&](int t, int stage) {
    const int hq = h_kv * group + t / tiles_per_head;
    const int m0 = (m_begin + t % tiles_per_head) * BM;
    const int rows_q = min(BM, si.len_q - m0);
    load_tile_async<BM, D>(sm.q[stage], row_ptr<T>(p.q, p.q_batch_stride, p.q_row_stride,
                                                    p.q_head_stride, b, si.q_start + m0, hq),
                           p.q_row_stride, rows_q);
    load_tile_async<BM, DV>(sm.dout[stage], row_ptr<T>(p.dout, p.do_batch_stride, p.do_row_stride,
                                                        p.do_head_stride, b, si.q_start + m0, hq),
                            p.do_row_stride, rows_q);
    if (threadIdx.x < BM) {
      // Rows beyond the sequence read as 0; harmless, their pairs are invisible.
      const int r = threadIdx.x;
      const int64_t at = int64_t(hq) * p.ws_rows + si.ws_row0 + m0 + (r < rows_q ? r : 0);
      cp_async4(&sm.lse_log2[stage][r], p.lse_log2 + at, r < rows_q);
      cp_async4(&sm.delta[stage][r], p.delta + at, r < rows_q);
    }
  };
  if (num_tiles > 0) issue_tile(0, 0);
  cp_async_commit();
  for (int t = 0; t < num_tiles; ++t) {
    const int hq = h_kv * group + t / tiles_per_head;
    const int m0 = (m_begin + t % tiles_per_head) * BM;
    const int rows_q = min(BM, si.len_q - m0);
    const int stage = t % 2;
    {
      __syncthreads();  // the previous tile's readers of the other stage, s, dp, p, ds are done
      if (t + 1 < num_tiles) issue_tile(t + 1, stage ^ 1);
      cp_async_commit();
      cp_async_wait<1>();  // this tile's copies (all but the newest group) have landed
      __syncthreads();
      compute_s_dp(sm, stage, warp);
      __syncthreads();
      scores_to_p_ds(sm, p, stage, m0, n0, si.len_q, si.used_k);
      __syncthreads();
      warp_gemm<BN, DV, BM, ColMajor, RowMajor>(dv, sm.p, Smem::kLdP, sm.dout[stage], Smem::kLdV,
                                                warp);
      warp_gemm<BN, DV, BM, ColMajor, RowMajor>(dv, sm.p_lo, Smem::kLdP, sm.dout[stage],
                                                Smem::kLdV, warp);
      warp_gemm<BN, D, BM, ColMajor, RowMajor>(dk, sm.ds, Smem::kLdP, sm.q[stage], Smem::kLdK,
                                               warp);
      warp_gemm<BN, D, BM, ColMajor, RowMajor>(dk, sm.ds_lo, Smem::kLdP, sm.q[stage], Smem::kLdK,
                                               warp);
      if constexpr (kAtomicDq) {
        float* accum = p.dq_accum + (int64_t(hq) * p.ws_rows + si.ws_row0 + m0) * D;
        float* scratch = sm.scratch[warp];
        constexpr int kCols = D / kFrag;
        for (int f = warp; f < (BM / kFrag) * kCols; f += kWarps) {
          AccFrag acc[1];
          zero(acc);
#pragma unroll
          for (int k = 0; k < BN / kFrag; ++k) {
            wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, T, RowMajor> fa, fa_lo;
            wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, T, RowMajor> fb;
            wmma::load_matrix_sync(fa, block_at<RowMajor>(sm.ds, f / kCols, k, Smem::kLdP),
                                   Smem::kLdP);
            wmma::load_matrix_sync(fa_lo, block_at<RowMajor>(sm.ds_lo, f / kCols, k, Smem::kLdP),
                                   Smem::kLdP);
            wmma::load_matrix_sync(fb, block_at<RowMajor>(sm.k, k, f % kCols, Smem::kLdK),
                                   Smem::kLdK);
            wmma::mma_sync(acc[0], fa, fb, acc[0]);
            wmma::mma_sync(acc[0], fa_lo, fb, acc[0]);
          }
          wmma::store_matrix_sync(scratch, acc[0], kFrag, wmma::mem_row_major);
          __syncwarp();
          atomic_add_block<D>(accum, (f / kCols) * kFrag, (f % kCols) * kFrag, rows_q, scratch);
          __syncwarp();
        }
      }
    }
  }

  // Epilogue: dK = softmax_scale * sum dS^T Q, dV = sum P^T dO; rows beyond the sequence
  // skipped (rows in [used_k, len_k) are zero: no query sees them).
  T* dk_out = static_cast<T*>(p.dk) + b * p.dk_batch_stride +
              (si.k_start + n0) * p.dk_row_stride + h_kv * p.dk_head_stride;
  T* dv_out = static_cast<T*>(p.dv) + b * p.dv_batch_stride +
              (si.k_start + n0) * p.dv_row_stride + h_kv * p.dv_head_stride;
  float* scratch = sm.scratch[warp];
#pragma unroll
  for (int i = 0; i < frags_per_warp<BN, D>(); ++i) {
    const int f = warp + i * kWarps;
    wmma::store_matrix_sync(scratch, dk[i], kFrag, wmma::mem_row_major);
    __syncwarp();
    write_block(dk_out, p.dk_row_stride, (f / (D / kFrag)) * kFrag, (f % (D / kFrag)) * kFrag,
                rows_k, scratch, p.softmax_scale);
    __syncwarp();
  }
#pragma unroll
  for (int i = 0; i < frags_per_warp<BN, DV>(); ++i) {
    const int f = warp + i * kWarps;
    wmma::store_matrix_sync(scratch, dv[i], kFrag, wmma::mem_row_major);
    __syncwarp();
    write_block(dv_out, p.dv_row_stride, (f / (DV / kFrag)) * kFrag, (f % (DV / kFrag)) * kFrag,
                rows_k, scratch, 1.f);
    __syncwarp();
  }
}

}  // namespace flashlane::sm90::bwd
