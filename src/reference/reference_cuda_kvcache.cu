// reference_cuda_kvcache.cu: the straightforward CUDA reference of a KV-cache call
// (flashlane/kvcache.h), the GPU ground truth for decode shapes too large for reference_cpu.
// Same rules as reference_cpu_kvcache (src/reference/reference_cpu_kvcache.cpp): dense cache
// (cache_batch_idx) or paged cache (any page_size), cache_seqlens, append of k_new / v_new with
// optional rotary (interleaved or GPT-NeoX), bottom-right aligned masks and windows (MaskRule),
// softcap, GQA/MQA, attention sinks (learnable_sink joins each row's maximum and sum at the end),
// LSE float32 in natural log, rows with no visible key O = 0 / LSE = -inf (the sink with sinks).
// Dtypes float16 / bfloat16 / float32 with float32 arithmetic, float64 with float64 arithmetic.
//
// Written for obvious correctness, not speed:
//   1. append kernel: one block per (sequence, new row, kv head); k after rotary (computed in the
//      accumulation type from the input values, rotary_cos / rotary_sin of any floating dtype)
//      and v are rounded to the cache dtype by the store at position cache_seqlens[b] + j.
//   2. attention kernel, launched after the append on the same stream (so every append is done
//      before any sequence reads the cache, as reference_cpu does): one block per (sequence,
//      query head, query row). The query row (rotated when rotary is on, not rounded) sits in
//      shared memory; the visible keys are walked in chunks of kThreads, one key per thread for
//      the scores, then one output column per thread for P V, with an online softmax (running
//      maximum and sum, the accumulator rescaled when the maximum grows).
// Every piece of metadata (cache_seqlens, cache_batch_idx, page_table) is read on the device, so
// the call never synchronizes and can be captured into a CUDA graph. Only cache positions below
// seqlen_k(b) = cache_seqlens[b] + seqlen_new and pages named by those positions are read.
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

constexpr int kThreads = 128;         // threads per block (4 warps)
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadDim = 256;      // validated bound of head_dim and head_dim_v
constexpr int kColsPerThread = kMaxHeadDim / kThreads;
constexpr int64_t kMaxGrid = 1 << 20;  // grid-stride loops cover any block count

// ------------------------------------------------------------------------------------------
// Conversions.

template <typename Acc>
__device__ __forceinline__ Acc load_as(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return static_cast<Acc>(__half2float(static_cast<const __half*>(base)[i]));
    case DType::kBFloat16:
      return static_cast<Acc>(__bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]));
    case DType::kFloat32: return static_cast<Acc>(static_cast<const float*>(base)[i]);
    default: return static_cast<Acc>(static_cast<const double*>(base)[i]);
  }
}

__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename T> __device__ __forceinline__ T from_acc(float x);
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
__device__ __forceinline__ double from_acc_double(double x) { return x; }

template <typename T, typename Acc>
__device__ __forceinline__ T store_cvt(Acc x) {
  if constexpr (sizeof(Acc) == 8) return from_acc_double(x);
  else return from_acc<T>(x);
}

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float tanh_acc(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_acc(double x) { return tanh(x); }

template <typename Acc>
__device__ __forceinline__ Acc neg_inf() { return -std::numeric_limits<Acc>::infinity(); }

// ------------------------------------------------------------------------------------------
// Parameters (host-filled, passed by value). Strides in elements.

/// A [batch-like, rows, heads, features] tensor: offset = i0 * s0 + i1 * s1 + i2 * s2 + feature.
struct Desc4 {
  void* ptr = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  __device__ __forceinline__ int64_t at(int64_t i0, int64_t i1, int64_t i2) const {
    return i0 * s0 + i1 * s1 + i2 * s2;
  }
};

struct KvParams {
  Desc4 q, o, k_cache, v_cache, k_new, v_new;
  Desc4 lse;  // [batch, heads_q, seqlen_q]: at(b, h, i)
  const int32_t* cache_seqlens = nullptr;
  const int32_t* cache_batch_idx = nullptr;
  const int32_t* page_table = nullptr;
  int64_t cache_seqlens_stride = 1, cache_batch_idx_stride = 1, page_table_stride = 0;
  const void* rotary_cos = nullptr;
  const void* rotary_sin = nullptr;
  DType rotary_dtype = DType::kFloat32;
  int64_t rotary_cos_stride = 0, rotary_sin_stride = 0;
  int64_t rotary_dim = 0;
  bool rotary_interleaved = false;
  bool q_consecutive = false;  // q row i rotated at cache_seqlens[b] + i (else at cache_seqlens[b])
  bool paged = false;
  bool has_lse = false;
  const float* sink = nullptr;  // learnable_sink [heads_q] (nullptr: no sinks)
  int64_t sink_stride = 1;
  int64_t batch = 0, seqlen_q = 0, heads_q = 0, heads_kv = 0, group = 1;
  int64_t head_dim = 0, head_dim_v = 0;
  int64_t seqlen_new = 0, capacity = 0, page_size = 0;
  double scale = 0.0, softcap = 0.0;
  MaskRule mask;
};

__device__ __forceinline__ int64_t cached_len(const KvParams& p, int64_t b) {
  return p.cache_seqlens != nullptr ? p.cache_seqlens[b * p.cache_seqlens_stride] : p.capacity;
}

/// Element offset of (position t, kv head h) of sequence b in a cache tensor.
__device__ __forceinline__ int64_t cache_row(const KvParams& p, const Desc4& c, int64_t b,
                                             int64_t t, int64_t h) {
  if (p.paged) {
    const int64_t page = p.page_table[b * p.page_table_stride + t / p.page_size];
    return c.at(page, t % p.page_size, h);
  }
  const int64_t row =
      p.cache_batch_idx != nullptr ? p.cache_batch_idx[b * p.cache_batch_idx_stride] : b;
  return c.at(row, t, h);
}

/// Feature c of x (a row in shared memory) after rotary at position pos (pairs as in
/// kvcache.h: interleaved (2i, 2i + 1), otherwise (i, i + rotary_dim / 2)).
template <typename Acc>
__device__ __forceinline__ Acc rotated(const KvParams& p, const Acc* x, int64_t pos, int c) {
  if (c >= p.rotary_dim) return x[c];
  const int half = static_cast<int>(p.rotary_dim / 2);
  int pair, i1, i2;
  bool first;
  if (p.rotary_interleaved) {
    pair = c / 2;
    i1 = 2 * pair;
    i2 = i1 + 1;
    first = c == i1;
  } else {
    pair = c < half ? c : c - half;
    i1 = pair;
    i2 = pair + half;
    first = c < half;
  }
  const Acc cs = load_as<Acc>(p.rotary_cos, p.rotary_dtype, pos * p.rotary_cos_stride + pair);
  const Acc sn = load_as<Acc>(p.rotary_sin, p.rotary_dtype, pos * p.rotary_sin_stride + pair);
  return first ? x[i1] * cs - x[i2] * sn : x[i1] * sn + x[i2] * cs;
}

template <typename Acc>
__device__ __forceinline__ Acc block_reduce(Acc x, bool is_max, Acc* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Acc y = __shfl_xor_sync(0xffffffffu, x, o);
    x = is_max ? max(x, y) : x + y;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // the previous reduction is done reading scratch
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  Acc r = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = is_max ? max(r, scratch[w]) : r + scratch[w];
  return r;
}

// ------------------------------------------------------------------------------------------
// 1. Append: block per (b, j, kv head).

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) append_kernel(const KvParams p) {
  __shared__ Acc row[kMaxHeadDim];
  const int64_t total = p.batch * p.seqlen_new * p.heads_kv;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t h = blk % p.heads_kv, j = (blk / p.heads_kv) % p.seqlen_new;
    const int64_t b = blk / (p.heads_kv * p.seqlen_new);
    const int64_t pos = cached_len(p, b) + j;
    const T* kn = static_cast<const T*>(p.k_new.ptr) + p.k_new.at(b, j, h);
    const T* vn = static_cast<const T*>(p.v_new.ptr) + p.v_new.at(b, j, h);
    T* kc = static_cast<T*>(p.k_cache.ptr) + cache_row(p, p.k_cache, b, pos, h);
    T* vc = static_cast<T*>(p.v_cache.ptr) + cache_row(p, p.v_cache, b, pos, h);
    __syncthreads();  // the previous iteration is done reading row
    for (int c = threadIdx.x; c < p.head_dim; c += kThreads) row[c] = to_acc(kn[c]);
    __syncthreads();
    for (int c = threadIdx.x; c < p.head_dim; c += kThreads) {
      kc[c] = store_cvt<T, Acc>(rotated<Acc>(p, row, pos, c));
    }
    for (int c = threadIdx.x; c < p.head_dim_v; c += kThreads) vc[c] = vn[c];
  }
}

// ------------------------------------------------------------------------------------------
// 2. Attention: block per (b, query head, query row).

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) attention_kernel(const KvParams p) {
  __shared__ Acc q_raw[kMaxHeadDim];
  __shared__ Acc q_row[kMaxHeadDim];
  __shared__ Acc probs[kThreads];
  __shared__ Acc scratch[kWarps];
  const Acc scale = static_cast<Acc>(p.scale), softcap = static_cast<Acc>(p.softcap);
  const int64_t total = p.batch * p.heads_q * p.seqlen_q;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t i = blk % p.seqlen_q, h = (blk / p.seqlen_q) % p.heads_q;
    const int64_t b = blk / (p.seqlen_q * p.heads_q);
    const int64_t hk = h / p.group;
    const int64_t cached = cached_len(p, b);
    const int64_t seqlen_k = cached + p.seqlen_new;
    int64_t first = 0, last = 0;
    p.mask.key_range(i, p.seqlen_q, seqlen_k, &first, &last);

    __syncthreads();  // the previous iteration is done with shared memory
    const T* qg = static_cast<const T*>(p.q.ptr) + p.q.at(b, i, h);
    for (int c = threadIdx.x; c < p.head_dim; c += kThreads) q_raw[c] = to_acc(qg[c]);
    __syncthreads();
    const int64_t q_pos = cached + (p.q_consecutive ? i : 0);
    for (int c = threadIdx.x; c < p.head_dim; c += kThreads) {
      q_row[c] = p.rotary_dim > 0 ? rotated<Acc>(p, q_raw, q_pos, c) : q_raw[c];
    }
    __syncthreads();

    Acc m = neg_inf<Acc>(), l = Acc(0);
    Acc acc[kColsPerThread];
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) acc[u] = Acc(0);

    for (int64_t k0 = first; k0 < last; k0 += kThreads) {
      const int n = last - k0 < kThreads ? static_cast<int>(last - k0) : kThreads;
      // Scores: thread t owns key k0 + t.
      Acc s = neg_inf<Acc>();
      if (threadIdx.x < n) {
        const T* kr = static_cast<const T*>(p.k_cache.ptr) +
                      cache_row(p, p.k_cache, b, k0 + threadIdx.x, hk);
        Acc dot = Acc(0);
        for (int c = 0; c < p.head_dim; ++c) dot += q_row[c] * to_acc(kr[c]);
        s = softcap > Acc(0) ? softcap * tanh_acc(dot * scale / softcap) : dot * scale;
      }
      const Acc m_new = max(m, block_reduce(s, true, scratch));  // finite: n >= 1 keys
      const Acc alpha = exp_acc(m - m_new);                       // 0 on the first chunk
      const Acc pr = threadIdx.x < n ? exp_acc(s - m_new) : Acc(0);
      probs[threadIdx.x] = pr;
      l = l * alpha + block_reduce(pr, false, scratch);  // its barriers publish probs
      m = m_new;
      // P V: thread t owns output columns t, t + kThreads.
#pragma unroll
      for (int u = 0; u < kColsPerThread; ++u) {
        const int c = threadIdx.x + u * kThreads;
        if (c >= p.head_dim_v) continue;
        Acc a = acc[u] * alpha;
        for (int t = 0; t < n; ++t) {
          const T* vr = static_cast<const T*>(p.v_cache.ptr) + cache_row(p, p.v_cache, b, k0 + t, hk);
          a += probs[t] * to_acc(vr[c]);
        }
        acc[u] = a;
      }
      __syncthreads();  // probs is read before the next chunk overwrites it
    }

    const bool empty = first >= last;
    // The sink (if any): one more logit of the row, without a value.
    const float sink =
        p.sink != nullptr ? p.sink[h * p.sink_stride] : -std::numeric_limits<float>::infinity();
    Acc o_mul = Acc(1);
    if (!empty && static_cast<Acc>(sink) != neg_inf<Acc>()) {
      const Acc m_new = max(m, static_cast<Acc>(sink));
      o_mul = exp_acc(m - m_new);  // acc and l are relative to m
      l = l * o_mul + exp_acc(static_cast<Acc>(sink) - m_new);
      m = m_new;
    }
    T* og = static_cast<T*>(p.o.ptr) + p.o.at(b, i, h);
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) {
      const int c = threadIdx.x + u * kThreads;
      if (c < p.head_dim_v) og[c] = store_cvt<T, Acc>(empty ? Acc(0) : acc[u] * o_mul / l);
    }
    if (p.has_lse && threadIdx.x == 0) {
      static_cast<float*>(p.lse.ptr)[p.lse.at(b, h, i)] =
          empty ? sink : static_cast<float>(m + log_acc(l));
    }
  }
}

// ------------------------------------------------------------------------------------------
// Host side.

Desc4 desc(const TensorView& t) {
  Desc4 d;
  d.ptr = t.data;
  if (t.defined()) {
    d.s0 = t.stride[0];
    d.s1 = t.stride[1];
    d.s2 = t.stride[2];
  }
  return d;
}

KvParams make_params(const KvCacheProblem& p, const ProblemInfo& info) {
  KvParams k;
  k.q = desc(p.q);
  k.o = desc(p.o);
  k.k_cache = desc(p.k_cache);
  k.v_cache = desc(p.v_cache);
  k.k_new = desc(p.k_new);
  k.v_new = desc(p.v_new);
  k.lse = desc(p.lse);
  k.has_lse = p.lse.defined();
  if (info.has_sink && p.learnable_sink.defined()) {
    k.sink = static_cast<const float*>(p.learnable_sink.data);
    k.sink_stride = p.learnable_sink.stride[0];
  }
  if (p.cache_seqlens.defined()) {
    k.cache_seqlens = static_cast<const int32_t*>(p.cache_seqlens.data);
    k.cache_seqlens_stride = p.cache_seqlens.stride[0];
  }
  if (p.cache_batch_idx.defined()) {
    k.cache_batch_idx = static_cast<const int32_t*>(p.cache_batch_idx.data);
    k.cache_batch_idx_stride = p.cache_batch_idx.stride[0];
  }
  k.paged = info.kv_layout == KvLayout::kPaged;
  if (k.paged) {
    k.page_table = static_cast<const int32_t*>(p.page_table.data);
    k.page_table_stride = p.page_table.stride[0];
  }
  k.rotary_dim = info.rotary_dim;
  if (k.rotary_dim > 0) {
    k.rotary_cos = p.rotary_cos.data;
    k.rotary_sin = p.rotary_sin.data;
    k.rotary_dtype = p.rotary_cos.dtype;
    k.rotary_cos_stride = p.rotary_cos.stride[0];
    k.rotary_sin_stride = p.rotary_sin.stride[0];
  }
  k.rotary_interleaved = info.rotary_interleaved;
  k.q_consecutive = info.mask != MaskType::kNoMask || info.window_left >= 0 || info.window_right >= 0;
  k.batch = info.batch;
  k.seqlen_q = info.seqlen_q;
  k.heads_q = info.heads_q;
  k.heads_kv = info.heads_kv;
  k.group = info.heads_q / info.heads_kv;
  k.head_dim = info.head_dim;
  k.head_dim_v = info.head_dim_v;
  k.seqlen_new = info.has_append ? info.seqlen_new : 0;
  k.capacity = info.cache_capacity;
  k.page_size = info.page_size;
  k.scale = info.softmax_scale;
  k.softcap = info.softcap;
  k.mask.window_left = info.window_left;
  k.mask.window_right = info.window_right;
  k.mask.bottom_right = true;
  return k;
}

Status launch_error(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::Ok();
  return Status(ErrorCode::kCudaError,
                std::string("reference_cuda kvcache ") + what + ": " + cudaGetErrorString(e));
}

unsigned grid_for(int64_t blocks) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, kMaxGrid)));
}

template <typename T, typename Acc>
Status run(const KvParams& k, cudaStream_t stream) {
  if (k.seqlen_new > 0) {
    append_kernel<T, Acc><<<grid_for(k.batch * k.seqlen_new * k.heads_kv), kThreads, 0, stream>>>(k);
    if (Status st = launch_error("append"); !st.ok()) return st;
  }
  const int64_t rows = k.batch * k.heads_q * k.seqlen_q;
  if (rows == 0) return Status::Ok();
  attention_kernel<T, Acc><<<grid_for(rows), kThreads, 0, stream>>>(k);
  return launch_error("attention");
}

}  // namespace

Status reference_cuda_kvcache(const KvCacheProblem& p, const ProblemInfo& info,
                              cudaStream_t stream) {
  if (info.head_dim > kMaxHeadDim || info.head_dim_v > kMaxHeadDim) {
    return Status(ErrorCode::kInternal, "reference_cuda kvcache: head dim above 256");
  }
  const KvParams k = make_params(p, info);
  switch (info.dtype) {
    case DType::kFloat16: return run<__half, float>(k, stream);
    case DType::kBFloat16: return run<__nv_bfloat16, float>(k, stream);
    case DType::kFloat32: return run<float, float>(k, stream);
    case DType::kFloat64: return run<double, double>(k, stream);
    default: return Status(ErrorCode::kInternal, "reference_cuda kvcache: unexpected dtype");
  }
}

}  // namespace flashlane::detail
