// reference_cuda.cu: the straightforward CUDA reference of attention (forward and backward),
// the GPU ground truth for shapes too large for reference_cpu. Same semantics as reference_cpu
// (include/flashlane/problem.h): dtypes float16 / bfloat16 / float32 (float32 accumulation) and
// float64 (float64 accumulation); bshd and varlen layouts (cu_seqlens read on the device),
// seqused_k, GQA/MQA, every mask of MaskRule (src/core/attention_rules.h), softcap, attention sinks
// (learnable_sink, dlearnable_sink), LSE float32 in natural log, arbitrary strides (last dim 1)
// and 64-bit element offsets everywhere.
//
// Design: simple CUDA-core kernels, written for obvious correctness first, but sharing K/V tiles
// in shared memory so the canonical benchmark grid can be checked in seconds.
//   * One block = kWarps warps; every warp owns kRows consecutive "broadcast" rows (forward and
//     dQ: query rows; dK/dV: key rows) of one (batch, head). The block walks the other side in
//     tiles of 32 rows (forward and dQ: keys; dK/dV: queries), one tile row per lane.
//   * Tiles are converted to the accumulation type (float or double) when they are staged in
//     shared memory: rows padded with zeros up to kPad columns, pitch kPad + 16 bytes (conflict
//     free for the per-lane 16-byte loads of different rows). Rows outside the visible range are
//     zero-filled and never read from global memory, so NaN in unused K/V never reaches outputs.
//   * Dot phase ("S = A B^T"): lane l computes, for each of its warp's kRows rows r,
//     dot(A[r], B[l]) over the runtime head dim (A rows broadcast from shared memory).
//   * Column phase ("O += P B"): lane l owns kPad/32 output columns (vectors of up to 4
//     consecutive columns, strided by 128) and accumulates sum_t P[t][r] * B[t][col] over the 32
//     tile rows t, with P staged per warp in shared memory as [32][kRows].
//   * Forward: online softmax in the log2 domain (scores prescaled by log2(e), exp2), one running
//     max per row (warp-uniform) and per-lane partial sums reduced once at the end.
//     Fully masked rows: O = 0, LSE = -inf. Attention sinks: in the epilogue the sink, in the
//     log2 domain like the scores, joins the row's maximum and sum (O and the sum rescaled when
//     it raises the maximum); a row without visible keys writes O = 0, LSE = sink.
//   * Backward: preprocess D_i = dout_i . o_i (one warp per row, into a cudaMallocAsync buffer
//     freed with cudaFreeAsync on the stream, so the call stays graph-capturable); dQ kernel
//     (warp rows = queries, lanes = keys) and dK/dV kernel (warp rows = keys, lanes = queries;
//     loops over the query heads of the GQA group and over the query range that can see the key
//     block). No atomics: every output element is written by exactly one thread, so the
//     backward is deterministic by construction. Rows with lse = -inf contribute 0.
//     dQ/dK/dV need nothing for sinks (P is recomputed from the LSE, which includes them);
//     dlearnable_sink: one block per query head sums exp(sink - lse) D over every row of the
//     batch (its threads stride over the rows in a fixed order, then a fixed shared-memory
//     tree), so it is bitwise reproducible.
//     ReferenceNumerics::kLowPrecision (Params::round_ps): P and dS, computed in fp32 as always,
//     are rounded to the 16-bit input dtype before they enter the forward's O sum and the
//     backward's dV, dK and dQ sums (the row sum l adds the unrounded P), as a tensor-core kernel
//     (FlashAttention-2/3) rounds its MMA operands and as FlashAttention's ref_lowp
//     (attention_ref with upcast=False, tests/test_util.py) does; fp32/fp64: no rounding.
//   * Grids are 1-D and grid-stride over (row block, head, batch), so batch * heads is unbounded.
// Every launch is checked with cudaGetLastError; nothing synchronizes the stream.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "core/attention_rules.h"
#include "dispatch/backends.h"

namespace flashlane::detail {
namespace {

constexpr int kTile = 32;  // tile rows walked per step (one per lane)
constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.6931471805599453094;

// ------------------------------------------------------------------------------------------
// Element conversions and math in the accumulation type.

__device__ __forceinline__ float to_acc_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc_f(float x) { return x; }
__device__ __forceinline__ double to_acc_f(double x) { return x; }

template <typename T, typename Acc>
__device__ __forceinline__ Acc to_acc(T x) {
  return static_cast<Acc>(to_acc_f(x));
}

template <typename T> __device__ __forceinline__ T from_acc(float x);
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <typename T> __device__ __forceinline__ T from_acc_d(double x) { return from_acc<T>(static_cast<float>(x)); }
template <> __device__ __forceinline__ double from_acc_d<double>(double x) { return x; }

template <typename T, typename Acc>
__device__ __forceinline__ T store_cvt(Acc x) {
  if constexpr (sizeof(Acc) == 8) return from_acc_d<T>(x);
  else return from_acc<T>(x);
}

/// x rounded to the 16-bit T and back (an MMA operand of type T); identity for float / double.
template <typename T, typename Acc>
__device__ __forceinline__ Acc round_through(Acc x) {
  if constexpr (sizeof(T) == 2) return to_acc<T, Acc>(from_acc<T>(x));
  else return x;
}

__device__ __forceinline__ float ex2(float x) { return exp2f(x); }
__device__ __forceinline__ double ex2(double x) { return exp2(x); }
__device__ __forceinline__ float th(float x) { return tanhf(x); }
__device__ __forceinline__ double th(double x) { return tanh(x); }
__device__ __forceinline__ float lg(float x) { return logf(x); }
__device__ __forceinline__ double lg(double x) { return log(x); }

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename Acc>
__device__ __forceinline__ Acc neg_inf() { return -std::numeric_limits<Acc>::infinity(); }

template <typename Acc>
__device__ __forceinline__ Acc warp_max(Acc x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

/// Loads 4 consecutive Acc values from 16-byte-aligned shared memory (float4 / 2x double2).
template <typename Acc>
__device__ __forceinline__ void lds4(const Acc* p, Acc (&out)[4]) {
  if constexpr (sizeof(Acc) == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  } else {
    const double2 a = *reinterpret_cast<const double2*>(p);
    const double2 b = *reinterpret_cast<const double2*>(p + 2);
    out[0] = a.x; out[1] = a.y; out[2] = b.x; out[3] = b.y;
  }
}

/// Stores this lane's kRows values at dst[0..kRows) (16-byte stores when kRows % 4 == 0).
template <typename Acc, int kRows>
__device__ __forceinline__ void sts_rows(Acc* dst, const Acc (&v)[kRows]) {
  if constexpr (kRows % 4 == 0 && sizeof(Acc) == 4) {
#pragma unroll
    for (int r = 0; r < kRows; r += 4) {
      *reinterpret_cast<float4*>(dst + r) = make_float4(v[r], v[r + 1], v[r + 2], v[r + 3]);
    }
  } else {
#pragma unroll
    for (int r = 0; r < kRows; ++r) dst[r] = v[r];
  }
}

/// Loads W (1, 2 or 4) consecutive Acc values from aligned shared memory.
template <typename Acc, int W>
__device__ __forceinline__ void ldsw(const Acc* p, Acc (&out)[W]) {
  if constexpr (W == 4) {
    lds4<Acc>(p, out);
  } else {
#pragma unroll
    for (int w = 0; w < W; ++w) out[w] = p[w];
  }
}

// ------------------------------------------------------------------------------------------
// Kernel parameters (host-filled, passed by value).

/// Addressing of one q/k/v/o-shaped tensor (or lse, or the D buffer) for (b, h, row):
///   element offset = (varlen ? start_b : b) * batch_stride + h * head_stride + row * row_stride
/// where start_b is the packed offset of sequence b (cu_seqlens[b]).
struct TensorDesc {
  void* ptr = nullptr;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0;
};

struct Params {
  TensorDesc q, k, v, o, lse, dout, dq, dk, dv, dsum;  // dsum: backward D buffer (Acc)
  const int32_t* cu_q = nullptr;
  const int32_t* cu_k = nullptr;
  const int32_t* seqused_k = nullptr;
  int64_t cu_q_stride = 1, cu_k_stride = 1, seqused_stride = 1;
  const float* sink = nullptr;  // learnable_sink [heads_q] (nullptr: no sinks)
  float* dsink = nullptr;       // backward: dlearnable_sink [heads_q] (nullptr: not wanted)
  int64_t sink_stride = 1, dsink_stride = 1;
  bool varlen = false;
  bool has_lse = false;
  bool vec_ok = false;  // every base pointer and row/head/batch stride allows 16-byte loads
  bool round_ps = false;  // P (forward and backward) and dS rounded to T before the sums (kLowPrecision)
  int64_t batch = 0, heads_q = 0, heads_kv = 0, group = 1;
  int64_t seqlen_q = 0, seqlen_k = 0;  // bshd sizes; varlen: max_seqlen bounds (grid size)
  int64_t total_q = 0;
  int head_dim = 0, head_dim_v = 0;
  double scale = 0.0;
  double softcap = 0.0;
  MaskRule mask;
};

/// One sequence of the batch: packed start offsets (varlen) and lengths.
struct Seq {
  int64_t q_base = 0;  // multiplier of batch_stride for q-like tensors (b or cu_q[b])
  int64_t k_base = 0;
  int64_t sq = 0;      // queries
  int64_t sk = 0;      // key rows in the sequence
  int64_t used_k = 0;  // keys used (seqused_k) <= sk
};

__device__ __forceinline__ Seq sequence(const Params& p, int64_t b) {
  Seq s;
  if (p.varlen) {
    const int64_t q0 = p.cu_q[b * p.cu_q_stride], q1 = p.cu_q[(b + 1) * p.cu_q_stride];
    const int64_t k0 = p.cu_k[b * p.cu_k_stride], k1 = p.cu_k[(b + 1) * p.cu_k_stride];
    s.q_base = q0; s.k_base = k0;
    s.sq = q1 > q0 ? q1 - q0 : 0;
    s.sk = k1 > k0 ? k1 - k0 : 0;
  } else {
    s.q_base = b; s.k_base = b;
    s.sq = p.seqlen_q; s.sk = p.seqlen_k;
  }
  s.used_k = s.sk;
  if (p.seqused_k != nullptr) {
    const int64_t u = p.seqused_k[b * p.seqused_stride];
    s.used_k = u < 0 ? 0 : (u > s.sk ? s.sk : u);
  }
  return s;
}

template <typename T>
__device__ __forceinline__ T* row_ptr(const TensorDesc& t, int64_t base, int64_t h, int64_t row) {
  return static_cast<T*>(t.ptr) + base * t.batch_stride + h * t.head_stride + row * t.row_stride;
}

// ------------------------------------------------------------------------------------------
// Shared-memory staging.

/// Stages `rows` rows (row0 + r, r < rows) of a q/k/v-shaped tensor into s[r * pitch + c],
/// converting to Acc; columns [cols, pad) and rows >= valid are zero (never read from global).
/// All threads of the block take part. cols is a multiple of 8 (validated head dims).
template <typename T, typename Acc>
__device__ __forceinline__ void stage_rows(Acc* s, int pitch, int rows, int pad, int cols,
                                           const T* base, int64_t row_stride, int64_t row0,
                                           int64_t valid, bool vec_ok) {
  const int chunks = pad / 8;
  for (int c = threadIdx.x; c < rows * chunks; c += blockDim.x) {
    const int r = c / chunks;
    const int col = (c - r * chunks) * 8;
    Acc v[8];
    if (r < valid && col < cols) {
      const T* src = base + (row0 + r) * row_stride + col;
      if (vec_ok) {
        constexpr int kPer = 16 / static_cast<int>(sizeof(T));  // elements per 16 bytes
#pragma unroll
        for (int u = 0; u < 8 / kPer; ++u) {
          const uint4 raw = *reinterpret_cast<const uint4*>(src + u * kPer);
          const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
          for (int x = 0; x < kPer; ++x) v[u * kPer + x] = to_acc<T, Acc>(e[x]);
        }
      } else {
#pragma unroll
        for (int x = 0; x < 8; ++x) v[x] = to_acc<T, Acc>(src[x]);
      }
    } else {
#pragma unroll
      for (int x = 0; x < 8; ++x) v[x] = Acc(0);
    }
    Acc* dst = s + r * pitch + col;
#pragma unroll
    for (int x = 0; x < 8; ++x) dst[x] = v[x];
  }
}

/// out[r] += dot(A[r], B) over n columns: A = kRows rows (pitch pa) broadcast to the warp,
/// B = this lane's row. n is a multiple of 8.
template <typename Acc, int kRows>
__device__ __forceinline__ void dot_rows(const Acc* A, int pa, const Acc* B, int n,
                                         Acc (&out)[kRows]) {
#pragma unroll 2
  for (int d = 0; d < n; d += 4) {
    Acc b[4];
    lds4<Acc>(B + d, b);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      Acc a[4];
      lds4<Acc>(A + r * pa + d, a);
      out[r] = fma(a[0], b[0], out[r]);
      out[r] = fma(a[1], b[1], out[r]);
      out[r] = fma(a[2], b[2], out[r]);
      out[r] = fma(a[3], b[3], out[r]);
    }
  }
}

/// Column layout of the per-lane accumulators: kCols = kPad / 32 columns per lane, in vectors of
/// W consecutive columns; vector g of lane l starts at column g * 32 * W + l * W.
template <int kPad>
struct Cols {
  static constexpr int kCols = kPad / 32;
  static constexpr int W = kCols < 4 ? kCols : 4;
  static constexpr int G = kCols / W;
  __device__ static __forceinline__ int col(int lane, int g, int w) { return g * 32 * W + lane * W + w; }
};

/// acc[r][k] += sum_t P[t * kRows + r] * B[t * pb + col(k)] over the 32 tile rows t.
template <typename Acc, int kRows, int kPad>
__device__ __forceinline__ void accumulate_cols(const Acc* P, const Acc* B, int pb, int lane,
                                                Acc (&acc)[kRows][kPad / 32]) {
  using C = Cols<kPad>;
#pragma unroll 2
  for (int t = 0; t < kTile; ++t) {
    Acc pr[kRows];
    if constexpr (kRows % 4 == 0) {
#pragma unroll
      for (int r = 0; r < kRows; r += 4) {
        Acc x[4];
        lds4<Acc>(P + t * kRows + r, x);
#pragma unroll
        for (int u = 0; u < 4; ++u) pr[r + u] = x[u];
      }
    } else {
#pragma unroll
      for (int r = 0; r < kRows; ++r) pr[r] = P[t * kRows + r];
    }
#pragma unroll
    for (int g = 0; g < C::G; ++g) {
      Acc bv[C::W];
      ldsw<Acc, C::W>(B + t * pb + C::col(lane, g, 0), bv);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
#pragma unroll
        for (int w = 0; w < C::W; ++w) acc[r][g * C::W + w] = fma(pr[r], bv[w], acc[r][g * C::W + w]);
      }
    }
  }
}

/// Writes a warp row (this lane's columns < ncols) scaled by `mul`.
template <typename T, typename Acc, int kPad>
__device__ __forceinline__ void store_cols(T* dst, const Acc (&acc)[kPad / 32], Acc mul, int ncols,
                                           int lane) {
  using C = Cols<kPad>;
#pragma unroll
  for (int g = 0; g < C::G; ++g) {
#pragma unroll
    for (int w = 0; w < C::W; ++w) {
      const int c = C::col(lane, g, w);
      if (c < ncols) dst[c] = store_cvt<T, Acc>(acc[g * C::W + w] * mul);
    }
  }
}

/// Score of a raw dot product in the log2 domain (for exp2) and, for softcap, tanh(raw / c).
template <typename Acc>
__device__ __forceinline__ Acc score_log2(Acc dot, Acc scale, Acc softcap, Acc* t_out) {
  if (softcap > Acc(0)) {
    const Acc t = th(dot * scale / softcap);
    *t_out = t;
    return softcap * t * Acc(kLog2e);
  }
  *t_out = Acc(0);
  return dot * (scale * Acc(kLog2e));
}

// Block configurations. kRows: rows per warp; kWarps: warps per block; kMinBlocks: the
// __launch_bounds__ occupancy hint. 1 lets ptxas use up to 255 registers: without it, ptxas'
// default heuristic caps some of these kernels at 128 / 168 registers and spills a few values
// (and any cap that would allow 3 blocks per SM spills too). No kernel spills with 1.
template <typename Acc, int kPad>
struct FwdCfg {
  static constexpr int kWarps = sizeof(Acc) == 8 ? 2 : 4;
  static constexpr int kRows = sizeof(Acc) == 8 ? 4 : 8;
  static constexpr int kMinBlocks = 1;
};
template <typename Acc, int kPad>
struct DqCfg {
  static constexpr int kWarps = sizeof(Acc) == 8 ? 2 : 4;
  static constexpr int kRows = sizeof(Acc) == 8 ? 2 : 8;
  static constexpr int kMinBlocks = 1;
};
template <typename Acc, int kPad>
struct DkvCfg {  // two accumulator sets (dk, dv) per lane
  static constexpr int kWarps = sizeof(Acc) == 8 ? 2 : 4;
  static constexpr int kRows = sizeof(Acc) == 8 ? 2 : (kPad >= 256 ? 4 : 8);
  static constexpr int kMinBlocks = 1;
};

template <typename Acc, int kPad>
constexpr int pitch_of() { return kPad + 16 / static_cast<int>(sizeof(Acc)); }

// ------------------------------------------------------------------------------------------
// Forward.

template <typename Acc, int kPad>
constexpr size_t fwd_smem() {
  using Cfg = FwdCfg<Acc, kPad>;
  constexpr int pitch = pitch_of<Acc, kPad>();
  return sizeof(Acc) * (static_cast<size_t>(Cfg::kWarps * Cfg::kRows) * pitch  // Q
                        + 2 * static_cast<size_t>(kTile) * pitch                 // K, V
                        + static_cast<size_t>(Cfg::kWarps) * kTile * Cfg::kRows);  // P
}

template <typename T, typename Acc, int kPad>
__global__ void __launch_bounds__(FwdCfg<Acc, kPad>::kWarps * 32, FwdCfg<Acc, kPad>::kMinBlocks)
fwd_kernel(const Params p) {
  using Cfg = FwdCfg<Acc, kPad>;
  constexpr int kRows = Cfg::kRows, kWarps = Cfg::kWarps, kBlockRows = kRows * kWarps;
  constexpr int kCols = kPad / 32;
  constexpr int pitch = pitch_of<Acc, kPad>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* sQ = reinterpret_cast<Acc*>(smem_raw);
  Acc* sK = sQ + kBlockRows * pitch;
  Acc* sV = sK + kTile * pitch;
  Acc* sP = sV + kTile * pitch;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Acc* myP = sP + warp * kTile * kRows;
  const Acc scale = static_cast<Acc>(p.scale), softcap = static_cast<Acc>(p.softcap);

  const int64_t nqb = (p.seqlen_q + kBlockRows - 1) / kBlockRows;
  const int64_t total = nqb * p.heads_q * p.batch;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t qb = blk % nqb, h = (blk / nqb) % p.heads_q, b = blk / (nqb * p.heads_q);
    const Seq s = sequence(p, b);
    const int64_t q0 = qb * kBlockRows;
    if (q0 >= s.sq) continue;  // block-uniform
    const int64_t rows_here = imin(kBlockRows, s.sq - q0);
    const int64_t kvh = h / p.group;
    // Keys visible to any row of the block: key ranges are monotone in the query index.
    int64_t kfirst, klast, unused;
    p.mask.key_range(q0, s.sq, s.used_k, &kfirst, &unused);
    p.mask.key_range(q0 + rows_here - 1, s.sq, s.used_k, &unused, &klast);
    const float sink =
        p.sink != nullptr ? p.sink[h * p.sink_stride] : -std::numeric_limits<float>::infinity();
    const Acc sink2 = static_cast<Acc>(sink) * Acc(kLog2e);  // log2 domain, like m

    __syncthreads();  // the previous block iteration is done with shared memory
    stage_rows<T, Acc>(sQ, pitch, kBlockRows, kPad, p.head_dim,
                       row_ptr<const T>(p.q, s.q_base, h, 0), p.q.row_stride, q0, rows_here,
                       p.vec_ok);

    Acc m[kRows], l[kRows], acc[kRows][kCols];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      m[r] = neg_inf<Acc>();
      l[r] = Acc(0);
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] = Acc(0);
    }
    const Acc* myQ = sQ + warp * kRows * pitch;
    const T* kbase = row_ptr<const T>(p.k, s.k_base, kvh, 0);
    const T* vbase = row_ptr<const T>(p.v, s.k_base, kvh, 0);

    for (int64_t k0 = kfirst; k0 < klast; k0 += kTile) {
      __syncthreads();  // previous tile consumed
      const int64_t kvalid = imin(kTile, klast - k0);
      stage_rows<T, Acc>(sK, pitch, kTile, kPad, p.head_dim, kbase, p.k.row_stride, k0, kvalid,
                         p.vec_ok);
      stage_rows<T, Acc>(sV, pitch, kTile, kPad, p.head_dim_v, vbase, p.v.row_stride, k0, kvalid,
                         p.vec_ok);
      __syncthreads();

      Acc sc[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) sc[r] = Acc(0);
      dot_rows<Acc, kRows>(myQ, pitch, sK + lane * pitch, p.head_dim, sc);

      const int64_t j = k0 + lane;
      Acc pv[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t i = q0 + warp * kRows + r;
        int64_t first = 0, last = 0;
        if (i < s.sq) p.mask.key_range(i, s.sq, s.used_k, &first, &last);
        Acc t;
        const Acc x = (j >= first && j < last) ? score_log2(sc[r], scale, softcap, &t) : neg_inf<Acc>();
        const Acc m_new = max(m[r], warp_max(x));
        const Acc m_use = m_new == neg_inf<Acc>() ? Acc(0) : m_new;  // no (-inf) - (-inf)
        const Acc alpha = ex2(m[r] - m_use);
        const Acc pr = ex2(x - m_use);
        l[r] = l[r] * alpha + pr;
#pragma unroll
        for (int c = 0; c < kCols; ++c) acc[r][c] *= alpha;
        m[r] = m_new;
        pv[r] = p.round_ps ? round_through<T, Acc>(pr) : pr;  // the P V operand; l sums pr
      }
      sts_rows<Acc, kRows>(myP + lane * kRows, pv);
      __syncwarp();
      accumulate_cols<Acc, kRows, kPad>(myP, sV, pitch, lane, acc);
      __syncwarp();
    }

    // Epilogue: the sink (if any) joins the row's maximum and sum; O = acc / l,
    // LSE = (m + log2 l) * ln 2; rows without visible keys: O = 0, LSE = sink (-inf without).
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t i = q0 + warp * kRows + r;
      const Acc lsum = warp_sum(l[r]);
      if (i >= s.sq) continue;
      const bool empty = !(lsum > Acc(0));
      Acc m_row = m[r], l_row = lsum, o_mul = Acc(1);
      if (!empty && sink2 != neg_inf<Acc>()) {
        const Acc m_new = max(m_row, sink2);
        o_mul = ex2(m_row - m_new);  // acc and lsum are relative to m_row
        l_row = lsum * o_mul + ex2(sink2 - m_new);
        m_row = m_new;
      }
      const Acc inv = empty ? Acc(0) : o_mul / l_row;
      store_cols<T, Acc, kPad>(row_ptr<T>(p.o, s.q_base, h, i), acc[r], inv, p.head_dim_v, lane);
      if (p.has_lse && lane == 0) {
        const float lse = empty ? sink : static_cast<float>(m_row * Acc(kLn2) + lg(l_row));
        *row_ptr<float>(p.lse, s.q_base, h, i) = lse;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Backward preprocess: dsum[h][row] = sum_c dout[row, h, c] * o[row, h, c] (one warp per row).

template <typename T, typename Acc>
__global__ void __launch_bounds__(256) bwd_dot_do_o_kernel(const Params p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t rows = p.total_q * p.heads_q;  // (h, packed row) pairs
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * 8 + warp; w < rows;
       w += static_cast<int64_t>(gridDim.x) * 8) {
    const int64_t h = w / p.total_q, t = w % p.total_q;
    // Packed row t -> (base, row) for the tensor addressing: varlen base 0 (packed index);
    // bshd (b, i).
    int64_t base, i;
    if (p.varlen) { base = 0; i = t; } else { base = t / p.seqlen_q; i = t % p.seqlen_q; }
    const T* d = row_ptr<const T>(p.dout, base, h, i);
    const T* o = row_ptr<const T>(p.o, base, h, i);
    Acc sum = Acc(0);
    for (int c = lane; c < p.head_dim_v; c += 32) sum = fma(to_acc<T, Acc>(d[c]), to_acc<T, Acc>(o[c]), sum);
    sum = warp_sum(sum);
    if (lane == 0) static_cast<Acc*>(p.dsum.ptr)[h * p.total_q + t] = sum;
  }
}

// ------------------------------------------------------------------------------------------
// Backward dsink: dsink[h] = -sum over the packed rows t of the batch of exp(sink_h - lse) D.
// One block per query head (grid-stride over heads); thread x sums rows x, x + kDsinkThreads, ...
// in order, then a fixed tree over the threads: the same bits on every run.

constexpr int kDsinkThreads = 256;

template <typename Acc>
__global__ void __launch_bounds__(kDsinkThreads) bwd_dsink_kernel(const Params p) {
  __shared__ Acc partial[kDsinkThreads];
  // Rows of the sequences: bshd every packed row; varlen [0, cu_seqlens_q[batch]) (rows after
  // the last sequence belong to none).
  const int64_t rows = p.varlen ? p.cu_q[p.batch * p.cu_q_stride] : p.total_q;
  for (int64_t h = blockIdx.x; h < p.heads_q; h += gridDim.x) {
    const Acc sink = static_cast<Acc>(p.sink[h * p.sink_stride]);
    Acc sum = Acc(0);
    for (int64_t t = threadIdx.x; t < rows; t += kDsinkThreads) {
      int64_t base, i;
      if (p.varlen) { base = 0; i = t; } else { base = t / p.seqlen_q; i = t % p.seqlen_q; }
      const Acc lse = static_cast<Acc>(*row_ptr<const float>(p.lse, base, h, i));
      if (lse == neg_inf<Acc>()) continue;  // a row the sink is not part of
      const Acc d = static_cast<const Acc*>(p.dsum.ptr)[h * p.total_q + t];
      sum = fma(ex2((sink - lse) * Acc(kLog2e)), d, sum);
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
#pragma unroll
    for (int half = kDsinkThreads / 2; half > 0; half >>= 1) {
      if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) p.dsink[h * p.dsink_stride] = static_cast<float>(-partial[0]);
    __syncthreads();  // partial[0] is read before the next head overwrites it
  }
}

// ------------------------------------------------------------------------------------------
// Backward dQ: warp rows = queries, lanes = keys.

template <typename Acc, int kPad>
constexpr size_t dq_smem() {
  using Cfg = DqCfg<Acc, kPad>;
  constexpr int pitch = pitch_of<Acc, kPad>();
  return sizeof(Acc) * (2 * static_cast<size_t>(Cfg::kWarps * Cfg::kRows) * pitch  // Q, dO
                        + 2 * static_cast<size_t>(kTile) * pitch                     // K, V
                        + static_cast<size_t>(Cfg::kWarps) * kTile * Cfg::kRows);      // dS
}

template <typename T, typename Acc, int kPad>
__global__ void __launch_bounds__(DqCfg<Acc, kPad>::kWarps * 32, DqCfg<Acc, kPad>::kMinBlocks)
bwd_dq_kernel(const Params p) {
  using Cfg = DqCfg<Acc, kPad>;
  constexpr int kRows = Cfg::kRows, kWarps = Cfg::kWarps, kBlockRows = kRows * kWarps;
  constexpr int kCols = kPad / 32;
  constexpr int pitch = pitch_of<Acc, kPad>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* sQ = reinterpret_cast<Acc*>(smem_raw);
  Acc* sO = sQ + kBlockRows * pitch;  // dout rows
  Acc* sK = sO + kBlockRows * pitch;
  Acc* sV = sK + kTile * pitch;
  Acc* sS = sV + kTile * pitch;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Acc* myS = sS + warp * kTile * kRows;
  const Acc scale = static_cast<Acc>(p.scale), softcap = static_cast<Acc>(p.softcap);

  const int64_t nqb = (p.seqlen_q + kBlockRows - 1) / kBlockRows;
  const int64_t total = nqb * p.heads_q * p.batch;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t qb = blk % nqb, h = (blk / nqb) % p.heads_q, b = blk / (nqb * p.heads_q);
    const Seq s = sequence(p, b);
    const int64_t q0 = qb * kBlockRows;
    if (q0 >= s.sq) continue;
    const int64_t rows_here = imin(kBlockRows, s.sq - q0);
    const int64_t kvh = h / p.group;
    int64_t kfirst, klast, unused;
    p.mask.key_range(q0, s.sq, s.used_k, &kfirst, &unused);
    p.mask.key_range(q0 + rows_here - 1, s.sq, s.used_k, &unused, &klast);

    __syncthreads();
    stage_rows<T, Acc>(sQ, pitch, kBlockRows, kPad, p.head_dim,
                       row_ptr<const T>(p.q, s.q_base, h, 0), p.q.row_stride, q0, rows_here,
                       p.vec_ok);
    stage_rows<T, Acc>(sO, pitch, kBlockRows, kPad, p.head_dim_v,
                       row_ptr<const T>(p.dout, s.q_base, h, 0), p.dout.row_stride, q0, rows_here,
                       p.vec_ok);

    Acc lse2[kRows], dsum[kRows], acc[kRows][kCols];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t i = q0 + warp * kRows + r;
      lse2[r] = neg_inf<Acc>();
      dsum[r] = Acc(0);
      if (i < s.sq) {
        lse2[r] = static_cast<Acc>(*row_ptr<const float>(p.lse, s.q_base, h, i)) * Acc(kLog2e);
        dsum[r] = *row_ptr<const Acc>(p.dsum, s.q_base, h, i);
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] = Acc(0);
    }
    const Acc* myQ = sQ + warp * kRows * pitch;
    const Acc* myO = sO + warp * kRows * pitch;
    const T* kbase = row_ptr<const T>(p.k, s.k_base, kvh, 0);
    const T* vbase = row_ptr<const T>(p.v, s.k_base, kvh, 0);

    for (int64_t k0 = kfirst; k0 < klast; k0 += kTile) {
      __syncthreads();
      const int64_t kvalid = imin(kTile, klast - k0);
      stage_rows<T, Acc>(sK, pitch, kTile, kPad, p.head_dim, kbase, p.k.row_stride, k0, kvalid,
                         p.vec_ok);
      stage_rows<T, Acc>(sV, pitch, kTile, kPad, p.head_dim_v, vbase, p.v.row_stride, k0, kvalid,
                         p.vec_ok);
      __syncthreads();

      Acc sc[kRows], dp[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) { sc[r] = Acc(0); dp[r] = Acc(0); }
      dot_rows<Acc, kRows>(myQ, pitch, sK + lane * pitch, p.head_dim, sc);
      dot_rows<Acc, kRows>(myO, pitch, sV + lane * pitch, p.head_dim_v, dp);

      const int64_t j = k0 + lane;
      Acc dsv[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t i = q0 + warp * kRows + r;
        int64_t first = 0, last = 0;
        if (i < s.sq) p.mask.key_range(i, s.sq, s.used_k, &first, &last);
        Acc ds = Acc(0);
        if (j >= first && j < last && lse2[r] != neg_inf<Acc>()) {
          Acc t;
          const Acc x = score_log2(sc[r], scale, softcap, &t);
          const Acc pr = ex2(x - lse2[r]);
          ds = pr * (dp[r] - dsum[r]);
          if (softcap > Acc(0)) ds *= Acc(1) - t * t;
        }
        dsv[r] = p.round_ps ? round_through<T, Acc>(ds) : ds;
      }
      sts_rows<Acc, kRows>(myS + lane * kRows, dsv);
      __syncwarp();
      accumulate_cols<Acc, kRows, kPad>(myS, sK, pitch, lane, acc);
      __syncwarp();
    }

#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t i = q0 + warp * kRows + r;
      if (i >= s.sq) continue;
      store_cols<T, Acc, kPad>(row_ptr<T>(p.dq, s.q_base, h, i), acc[r], scale, p.head_dim, lane);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Backward dK/dV: warp rows = keys (of one kv head), lanes = queries of the group's heads.

template <typename Acc, int kPad>
constexpr size_t dkv_smem() {
  using Cfg = DkvCfg<Acc, kPad>;
  constexpr int pitch = pitch_of<Acc, kPad>();
  return sizeof(Acc) * (2 * static_cast<size_t>(Cfg::kWarps * Cfg::kRows) * pitch  // K, V
                        + 2 * static_cast<size_t>(kTile) * pitch                     // Q, dO
                        + 2 * static_cast<size_t>(Cfg::kWarps) * kTile * Cfg::kRows);  // P, dS
}

template <typename T, typename Acc, int kPad>
__global__ void __launch_bounds__(DkvCfg<Acc, kPad>::kWarps * 32, DkvCfg<Acc, kPad>::kMinBlocks)
bwd_dkv_kernel(const Params p) {
  using Cfg = DkvCfg<Acc, kPad>;
  constexpr int kRows = Cfg::kRows, kWarps = Cfg::kWarps, kBlockRows = kRows * kWarps;
  constexpr int kCols = kPad / 32;
  constexpr int pitch = pitch_of<Acc, kPad>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* sK = reinterpret_cast<Acc*>(smem_raw);
  Acc* sV = sK + kBlockRows * pitch;
  Acc* sQ = sV + kBlockRows * pitch;
  Acc* sO = sQ + kTile * pitch;  // dout tile
  Acc* sP = sO + kTile * pitch;
  Acc* sS = sP + kWarps * kTile * kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Acc* myP = sP + warp * kTile * kRows;
  Acc* myS = sS + warp * kTile * kRows;
  const Acc scale = static_cast<Acc>(p.scale), softcap = static_cast<Acc>(p.softcap);
  const MaskRule& mk = p.mask;

  const int64_t nkb = (p.seqlen_k + kBlockRows - 1) / kBlockRows;
  const int64_t total = nkb * p.heads_kv * p.batch;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t kb = blk % nkb, kvh = (blk / nkb) % p.heads_kv, b = blk / (nkb * p.heads_kv);
    const Seq s = sequence(p, b);
    const int64_t j0 = kb * kBlockRows;
    if (j0 >= s.sk) continue;  // block-uniform
    // Keys [j0, j1) of the block that are used; rows in [j1, sk) get dK = dV = 0.
    const int64_t j1 = imin(j0 + kBlockRows, s.used_k);

    Acc dk[kRows][kCols], dv[kRows][kCols];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) { dk[r][c] = Acc(0); dv[r][c] = Acc(0); }
    }

    if (j1 > j0) {
      // Queries that can see a key of [j0, j1): from the mask definition (problem.h),
      //   visible(i, j) needs j <= diag(i) + wr  ->  i >= j - wr - shift   (wr >= 0)
      //                     j >= diag(i) - wl  ->  i <= j + wl - shift   (wl >= 0)
      // so i in [j0 - wr - shift, j1 - 1 + wl - shift]; MaskRule::visible decides per element.
      const int64_t shift = mk.diagonal_shift(s.sq, s.used_k);
      int64_t ilo = 0, ihi = s.sq;
      if (mk.window_right >= 0) ilo = imax(ilo, j0 - mk.window_right - shift);
      if (mk.window_left >= 0) ihi = imin(ihi, j1 + mk.window_left - shift);

      __syncthreads();
      stage_rows<T, Acc>(sK, pitch, kBlockRows, kPad, p.head_dim,
                         row_ptr<const T>(p.k, s.k_base, kvh, 0), p.k.row_stride, j0, j1 - j0,
                         p.vec_ok);
      stage_rows<T, Acc>(sV, pitch, kBlockRows, kPad, p.head_dim_v,
                         row_ptr<const T>(p.v, s.k_base, kvh, 0), p.v.row_stride, j0, j1 - j0,
                         p.vec_ok);
      const Acc* myK = sK + warp * kRows * pitch;
      const Acc* myV = sV + warp * kRows * pitch;

      for (int64_t g = 0; g < p.group; ++g) {
        const int64_t h = kvh * p.group + g;
        const T* qbase = row_ptr<const T>(p.q, s.q_base, h, 0);
        const T* obase = row_ptr<const T>(p.dout, s.q_base, h, 0);
        for (int64_t i0 = ilo; i0 < ihi; i0 += kTile) {
          __syncthreads();
          const int64_t ivalid = imin(kTile, ihi - i0);
          stage_rows<T, Acc>(sQ, pitch, kTile, kPad, p.head_dim, qbase, p.q.row_stride, i0,
                             ivalid, p.vec_ok);
          stage_rows<T, Acc>(sO, pitch, kTile, kPad, p.head_dim_v, obase, p.dout.row_stride, i0,
                             ivalid, p.vec_ok);
          __syncthreads();

          const int64_t i = i0 + lane;
          Acc lse2 = neg_inf<Acc>(), dsum = Acc(0);
          if (lane < ivalid) {
            lse2 = static_cast<Acc>(*row_ptr<const float>(p.lse, s.q_base, h, i)) * Acc(kLog2e);
            dsum = *row_ptr<const Acc>(p.dsum, s.q_base, h, i);
          }
          Acc sc[kRows], dp[kRows];
#pragma unroll
          for (int r = 0; r < kRows; ++r) { sc[r] = Acc(0); dp[r] = Acc(0); }
          dot_rows<Acc, kRows>(myK, pitch, sQ + lane * pitch, p.head_dim, sc);
          dot_rows<Acc, kRows>(myV, pitch, sO + lane * pitch, p.head_dim_v, dp);
          Acc pv[kRows], dsv[kRows];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            const int64_t j = j0 + warp * kRows + r;
            Acc pr = Acc(0), ds = Acc(0);
            if (lane < ivalid && j < j1 && lse2 != neg_inf<Acc>() &&
                mk.visible(i, j, s.sq, s.used_k)) {
              Acc t;
              const Acc x = score_log2(sc[r], scale, softcap, &t);
              pr = ex2(x - lse2);
              ds = pr * (dp[r] - dsum);
              if (softcap > Acc(0)) ds *= Acc(1) - t * t;
            }
            pv[r] = p.round_ps ? round_through<T, Acc>(pr) : pr;
            dsv[r] = p.round_ps ? round_through<T, Acc>(ds) : ds;
          }
          sts_rows<Acc, kRows>(myP + lane * kRows, pv);
          sts_rows<Acc, kRows>(myS + lane * kRows, dsv);
          __syncwarp();
          accumulate_cols<Acc, kRows, kPad>(myP, sO, pitch, lane, dv);
          accumulate_cols<Acc, kRows, kPad>(myS, sQ, pitch, lane, dk);
          __syncwarp();
        }
      }
    }

#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int64_t j = j0 + warp * kRows + r;
      if (j >= s.sk) continue;
      store_cols<T, Acc, kPad>(row_ptr<T>(p.dk, s.k_base, kvh, j), dk[r], scale, p.head_dim, lane);
      store_cols<T, Acc, kPad>(row_ptr<T>(p.dv, s.k_base, kvh, j), dv[r], Acc(1), p.head_dim_v, lane);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host side.

Status cuda_error(const char* what, cudaError_t err) {
  return Status(ErrorCode::kCudaError,
                std::string("reference_cuda: ") + what + ": " + cudaGetErrorString(err));
}

/// Descriptor of a q/k/v/o-shaped view: bshd [b, s, h, d] or varlen [t, h, d].
TensorDesc qkv_desc(const TensorView& t, bool varlen) {
  TensorDesc d;
  d.ptr = t.data;
  if (varlen) {
    d.batch_stride = t.stride[0];  // multiplied by cu_seqlens[b]
    d.row_stride = t.stride[0];
    d.head_stride = t.stride[1];
  } else {
    d.batch_stride = t.stride[0];
    d.row_stride = t.stride[1];
    d.head_stride = t.stride[2];
  }
  return d;
}

/// lse: bshd [b, h, s]; varlen [h, t].
TensorDesc lse_desc(const TensorView& t, bool varlen) {
  TensorDesc d;
  d.ptr = t.data;
  if (varlen) {
    d.batch_stride = t.stride[1];
    d.row_stride = t.stride[1];
    d.head_stride = t.stride[0];
  } else {
    d.batch_stride = t.stride[0];
    d.head_stride = t.stride[1];
    d.row_stride = t.stride[2];
  }
  return d;
}

bool aligned16(const TensorView& t, int elem) {
  if (!t.defined()) return true;
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) return false;
  for (int i = 0; i + 1 < t.rank; ++i) {
    if ((t.stride[i] * elem) % 16 != 0) return false;
  }
  return true;
}

Params make_params(const AttentionProblem& p, const ProblemInfo& info) {
  Params k;
  const bool vl = info.varlen;
  k.varlen = vl;
  k.q = qkv_desc(p.q, vl);
  k.k = qkv_desc(p.k, vl);
  k.v = qkv_desc(p.v, vl);
  k.o = qkv_desc(p.o, vl);
  if (p.dout.defined()) k.dout = qkv_desc(p.dout, vl);
  if (p.dq.defined()) k.dq = qkv_desc(p.dq, vl);
  if (p.dk.defined()) k.dk = qkv_desc(p.dk, vl);
  if (p.dv.defined()) k.dv = qkv_desc(p.dv, vl);
  k.has_lse = p.lse.defined() && p.lse.data != nullptr;
  if (k.has_lse) k.lse = lse_desc(p.lse, vl);
  if (vl) {
    k.cu_q = static_cast<const int32_t*>(p.cu_seqlens_q.data);
    k.cu_k = static_cast<const int32_t*>(p.cu_seqlens_k.data);
    k.cu_q_stride = p.cu_seqlens_q.stride[0];
    k.cu_k_stride = p.cu_seqlens_k.stride[0];
  }
  if (p.seqused_k.defined() && p.seqused_k.data != nullptr) {
    k.seqused_k = static_cast<const int32_t*>(p.seqused_k.data);
    k.seqused_stride = p.seqused_k.stride[0];
  }
  if (info.has_sink && p.learnable_sink.defined()) {
    k.sink = static_cast<const float*>(p.learnable_sink.data);
    k.sink_stride = p.learnable_sink.stride[0];
  }
  if (info.has_dsink && p.dlearnable_sink.defined()) {
    k.dsink = static_cast<float*>(p.dlearnable_sink.data);
    k.dsink_stride = p.dlearnable_sink.stride[0];
  }
  const int es = dtype_size(info.dtype);
  k.vec_ok = aligned16(p.q, es) && aligned16(p.k, es) && aligned16(p.v, es) &&
             aligned16(p.dout, es) && aligned16(p.o, es);
  k.batch = info.batch;
  k.heads_q = info.heads_q;
  k.heads_kv = info.heads_kv;
  k.group = info.heads_kv > 0 ? info.heads_q / info.heads_kv : 1;
  k.seqlen_q = info.seqlen_q;
  k.seqlen_k = info.seqlen_k;
  k.total_q = vl ? info.total_q : info.batch * info.seqlen_q;
  k.head_dim = static_cast<int>(info.head_dim);
  k.head_dim_v = static_cast<int>(info.head_dim_v);
  k.scale = info.softmax_scale;
  k.softcap = info.softcap;
  // Normalized as problem.cpp reads a ProblemInfo: causal closes the window on the right at the
  // diagonal; only kCausal aligns the diagonal top-left.
  k.mask.window_left = info.window_left;
  k.mask.window_right = info.is_causal() ? 0 : info.window_right;
  k.mask.bottom_right = info.mask != MaskType::kCausal;
  return k;
}

/// Grid of a grid-stride kernel over `blocks` logical blocks (0: nothing to launch).
unsigned grid_for(int64_t blocks) {
  constexpr int64_t kMax = 1 << 24;  // enough to fill any GPU; the kernels loop beyond
  return static_cast<unsigned>(std::min<int64_t>(blocks, kMax));
}

template <typename KernelFn>
Status launch(KernelFn kernel, int64_t blocks, int threads, size_t smem, cudaStream_t stream,
              const Params& prm, const char* name) {
  const unsigned grid = grid_for(blocks);
  if (grid == 0) return Status::Ok();
  // A stale, non-sticky error of an earlier unrelated call would otherwise be reported as this
  // launch's failure by the cudaGetLastError below.
  (void)cudaGetLastError();
  if (smem > 48 * 1024) {
    // sm_80 / sm_90 allow 163 / 227 KiB per block (the largest configuration here needs 150 KiB);
    // sm_86 / sm_89 allow only 99 KiB: say so instead of failing with "invalid argument".
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess &&
        static_cast<size_t>(optin) < smem) {
      return Status(ErrorCode::kCudaError,
                    std::string("reference_cuda: ") + name + ": needs " + std::to_string(smem) +
                        " bytes of shared memory per block, device " + std::to_string(dev) +
                        " allows " + std::to_string(optin) +
                        " (head dims > 128 need an sm_80 / sm_90 class GPU)");
    }
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return cuda_error(name, e);
    }
  }
  kernel<<<grid, threads, smem, stream>>>(prm);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_error(name, e);
  return Status::Ok();
}

int pad_of(int64_t d) { return d <= 64 ? 64 : (d <= 128 ? 128 : 256); }

template <typename T, typename Acc, int kPad>
Status forward_t(const Params& prm, cudaStream_t stream) {
  using Cfg = FwdCfg<Acc, kPad>;
  const int64_t rows = Cfg::kWarps * Cfg::kRows;
  const int64_t blocks = (prm.seqlen_q + rows - 1) / rows * prm.heads_q * prm.batch;
  return launch(fwd_kernel<T, Acc, kPad>, blocks, Cfg::kWarps * 32, fwd_smem<Acc, kPad>(), stream,
                prm, "forward kernel launch");
}

template <typename T, typename Acc, int kPad>
Status backward_t(Params prm, cudaStream_t stream) {
  const size_t dsum_bytes = static_cast<size_t>(prm.total_q * prm.heads_q) * sizeof(Acc);
  void* dsum = nullptr;
  if (dsum_bytes > 0) {
    const cudaError_t e = cudaMallocAsync(&dsum, dsum_bytes, stream);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return cuda_error("cudaMallocAsync of the D buffer", e);
    }
  }
  // D buffer [heads_q, total_q]: row of (b, i) = (varlen ? cu_q[b] : b * seqlen_q) + i.
  prm.dsum.ptr = dsum;
  prm.dsum.batch_stride = prm.varlen ? 1 : prm.seqlen_q;
  prm.dsum.head_stride = prm.total_q;
  prm.dsum.row_stride = 1;

  Status st = launch(bwd_dot_do_o_kernel<T, Acc>, (prm.total_q * prm.heads_q + 7) / 8, 256, 0,
                     stream, prm, "backward preprocess launch");
  if (st.ok() && prm.dsink != nullptr) {
    st = launch(bwd_dsink_kernel<Acc>, prm.heads_q, kDsinkThreads, 0, stream, prm,
                "backward dsink launch");
  }
  if (st.ok()) {
    using Cq = DqCfg<Acc, kPad>;
    const int64_t rows = Cq::kWarps * Cq::kRows;
    st = launch(bwd_dq_kernel<T, Acc, kPad>, (prm.seqlen_q + rows - 1) / rows * prm.heads_q * prm.batch,
                Cq::kWarps * 32, dq_smem<Acc, kPad>(), stream, prm, "backward dQ launch");
  }
  if (st.ok()) {
    using Ck = DkvCfg<Acc, kPad>;
    const int64_t rows = Ck::kWarps * Ck::kRows;
    st = launch(bwd_dkv_kernel<T, Acc, kPad>,
                (prm.seqlen_k + rows - 1) / rows * prm.heads_kv * prm.batch, Ck::kWarps * 32,
                dkv_smem<Acc, kPad>(), stream, prm, "backward dK/dV launch");
  }
  if (dsum != nullptr) {
    const cudaError_t e = cudaFreeAsync(dsum, stream);
    if (e != cudaSuccess && st.ok()) {
      (void)cudaGetLastError();
      st = cuda_error("cudaFreeAsync of the D buffer", e);
    }
  }
  return st;
}

template <typename T, typename Acc>
Status dispatch_pad(bool backward, const Params& prm, cudaStream_t stream) {
  switch (pad_of(std::max(prm.head_dim, prm.head_dim_v))) {
    case 64: return backward ? backward_t<T, Acc, 64>(prm, stream) : forward_t<T, Acc, 64>(prm, stream);
    case 128: return backward ? backward_t<T, Acc, 128>(prm, stream) : forward_t<T, Acc, 128>(prm, stream);
    default: return backward ? backward_t<T, Acc, 256>(prm, stream) : forward_t<T, Acc, 256>(prm, stream);
  }
}

Status run(bool backward, const AttentionProblem& p, const ProblemInfo& info, cudaStream_t stream,
           ReferenceNumerics numerics) {
  if (info.head_dim <= 0 || info.head_dim_v <= 0 || info.head_dim > 256 ||
      info.head_dim_v > 256 || info.head_dim % 8 != 0 || info.head_dim_v % 8 != 0) {
    return Status(ErrorCode::kInternal, "reference_cuda: head dims " +
                                            std::to_string(info.head_dim) + "/" +
                                            std::to_string(info.head_dim_v) +
                                            " reached the backend unvalidated");
  }
  if (info.heads_kv <= 0 || info.heads_q % info.heads_kv != 0) {
    return Status(ErrorCode::kInternal, "reference_cuda: heads_q % heads_kv != 0 reached the backend");
  }
  Params prm = make_params(p, info);
  prm.round_ps = numerics == ReferenceNumerics::kLowPrecision;
  if (backward && !prm.has_lse) {
    return Status(ErrorCode::kInternal, "reference_cuda: backward without lse reached the backend");
  }
  if (prm.dsink != nullptr && prm.sink == nullptr) {
    return Status(ErrorCode::kInternal,
                  "reference_cuda: dlearnable_sink without learnable_sink reached the backend");
  }
  switch (info.dtype) {
    case DType::kFloat16: return dispatch_pad<__half, float>(backward, prm, stream);
    case DType::kBFloat16: return dispatch_pad<__nv_bfloat16, float>(backward, prm, stream);
    case DType::kFloat32: return dispatch_pad<float, float>(backward, prm, stream);
    case DType::kFloat64: return dispatch_pad<double, double>(backward, prm, stream);
    default: break;
  }
  return Status(ErrorCode::kInternal,
                std::string("reference_cuda: dtype ") + dtype_name(info.dtype) + " reached the backend");
}

}  // namespace

Status reference_cuda_forward(const AttentionProblem& p, const ProblemInfo& info,
                              cudaStream_t stream) {
  return run(false, p, info, stream, ReferenceNumerics::kFloat64);
}

Status reference_cuda_forward(const AttentionProblem& p, const ProblemInfo& info,
                              cudaStream_t stream, ReferenceNumerics numerics) {
  return run(false, p, info, stream, numerics);
}

Status reference_cuda_backward(const AttentionProblem& p, const ProblemInfo& info,
                               cudaStream_t stream) {
  return run(true, p, info, stream, ReferenceNumerics::kFloat64);
}

Status reference_cuda_backward(const AttentionProblem& p, const ProblemInfo& info,
                               cudaStream_t stream, ReferenceNumerics numerics) {
  return run(true, p, info, stream, numerics);
}

}  // namespace flashlane::detail
