// flashlane/kvcache.h: attention against a KV cache (decode), with optional append of new keys
// and values and optional rotary embedding: the call FlashAttention names
// flash_attn_with_kvcache (flash-attention hopper/flash_attn_interface.py and
// flash_attn/flash_attn_interface.py; the semantics below are that docstring's, made exact).
//
// Layouts (FlashAttention's; d = head_dim, d_v = head_dim_v; last dimension contiguous):
//   q             [batch, seqlen_q >= 1, heads_q, d]            the new query rows
//   o             [batch, seqlen_q, heads_q, d_v]               output, q's dtype
//   lse           float32 [batch, heads_q, seqlen_q]            optional output, natural log
//   dense cache   k_cache [batch_cache, seqlen_cache, heads_kv, d], v_cache [.., d_v];
//                 sequence b lives in cache row cache_batch_idx[b] (default b; then batch_cache
//                 must equal batch).
//   paged cache   k_cache [num_pages, page_size, heads_kv, d], v_cache [.., d_v], page_table int32
//                 [batch, max_pages_per_seq]: key position t of sequence b lives in page
//                 page_table[b, t / page_size], row t % page_size. Any page_size >= 1.
//   cache_seqlens optional int32 [batch]: keys already in the cache; absent = every sequence
//                 holds its full capacity (dense: seqlen_cache, paged: max_pages_per_seq *
//                 page_size). Required when k_new is given.
//   k_new, v_new  optional [batch, seqlen_new, heads_kv, d / d_v]: appended, in place, at cache
//                 positions cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1 before
//                 attending (rounded to the cache dtype, k after rotary).
//   rotary_cos, rotary_sin  optional [seqlen_ro, rotary_dim / 2], any floating dtype; only with
//                 k_new (FlashAttention's rule). rotary_dim = 2 * rotary_cos.shape[1] <= d.
//                 Applied to the first rotary_dim features of q and of k_new (the rest pass):
//                 interleaved (GPT-J): pairs (2c, 2c + 1); otherwise (GPT-NeoX): pairs
//                 (c, c + rotary_dim / 2); x' = x1 cos - x2 sin, y' = x1 sin + x2 cos with
//                 cos = rotary_cos[pos, c]. Positions: k_new row j at cache_seqlens[b] + j; q row
//                 i at cache_seqlens[b] + i when the call is causal or local (mask
//                 causal_bottom_right or a window bound >= 0), else every q row at
//                 cache_seqlens[b]. q itself is not modified (the rotation is applied to a copy).
//
// Attention: sequence b attends over its first seqlen_k(b) = cache_seqlens[b] + seqlen_new cache
// positions (after the append). The masks of problem.h apply with the diagonal bottom-right
// aligned (the query rows are the last seqlen_q positions): diag(i) = i + seqlen_k(b) -
// seqlen_q. mask must be kNoMask or kCausalBottomRight (kCausal, top-left, has no meaning against
// a cache and is refused). GQA/MQA, softcap, softmax_scale and learnable_sink as in problem.h. A
// row with no visible key (an empty cache, or rows above the causal diagonal) writes O = 0 and
// LSE = -inf (LSE = learnable_sink[h] with sinks). Cache positions at or beyond seqlen_k(b), and
// pages no used page_table entry names, are never read.
//
// Validation (nothing is written, neither o nor lse nor the cache, when it fails):
//   kNullPointer, kDeviceMismatch, kUnsupportedDType, kDTypeMismatch, kRankMismatch,
//   kShapeMismatch, kHeadsNotDivisible, kHeadDimInvalid, kNotContiguous, kMisaligned,
//   kWindowInvalid, kSoftmaxScaleInvalid, kSoftcapInvalid as for forward() (learnable_sink:
//   float32 [heads_q], stride 1, on q's device);
//   kInvalidArgument     k_new without v_new (or the reverse), rotary without k_new, rotary_cos
//                        without rotary_sin, k_new without cache_seqlens, cache_batch_idx with a
//                        page_table, mask kCausal, num_splits < 0;
//   kCacheSeqlensInvalid cache_seqlens shape/dtype, or a value < 0 or above the capacity;
//   kCacheOverflow       cache_seqlens[b] + seqlen_new above the capacity (the append overflows);
//   kPageTableInvalid    page_table shape/dtype, page_size 0, a used entry outside
//                        [0, num_pages), or (with k_new) a page the append writes that another
//                        used entry also names;
//   kCacheBatchIdxInvalid shape/dtype, a value outside [0, batch_cache), or (with k_new) a
//                        repeated value (two sequences appending to one cache row);
//   kRotaryInvalid       rotary_cos / rotary_sin shapes differ, rotary_dim 0 or above head_dim,
//                        or seqlen_ro not covering every rotated position.
// Host metadata (cache_seqlens, cache_batch_idx, page_table) is always read and checked; for
// CUDA metadata, check_metadata_values = false skips the synchronous reads (the call then trusts
// the values).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <optional>

#include "flashlane/dispatch.h"
#include "flashlane/problem.h"
#include "flashlane/status.h"
#include "flashlane/tensor.h"

namespace flashlane {

/// One KV-cache attention call (see the header comment for shapes, dtypes and rules).
struct KvCacheProblem {
  TensorView q;
  TensorView k_cache, v_cache;  // read, and written at the appended positions when k_new is given
  TensorView o;
  TensorView lse;  // optional output

  TensorView cache_seqlens;    // optional int32 [batch]
  TensorView cache_batch_idx;  // optional int32 [batch], dense cache only
  TensorView page_table;       // int32 [batch, max_pages_per_seq]: selects the paged layout

  TensorView k_new, v_new;            // optional append
  TensorView rotary_cos, rotary_sin;  // optional rotary, needs k_new
  bool rotary_interleaved = true;     // FlashAttention's default (GPT-J pairs)

  std::optional<double> softmax_scale;  // default 1 / sqrt(head_dim)
  MaskType mask = MaskType::kNoMask;    // kNoMask or kCausalBottomRight
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  /// Optional attention sinks, float32 [heads_q], contiguous: as AttentionProblem's
  /// learnable_sink (flashlane/problem.h); LSE includes them.
  TensorView learnable_sink;
  /// Split-KV hint (FlashAttention's num_splits: 0 = heuristic, 1 = no split, n = n chunks).
  /// It never changes the result; backends may ignore it.
  int64_t num_splits = 0;
  bool check_metadata_values = true;
};

/// Validates a KV-cache call. On success fills `info` (direction kDecode, kv_layout kDense or
/// kPaged, seqlen_k = the per-sequence capacity, and the decode fields). Never writes a tensor.
Status validate_kvcache(const KvCacheProblem& problem, ProblemInfo* info);

/// Selects a backend for a KV-cache call without running anything (as select() in dispatch.h).
Status select_kvcache(const KvCacheProblem& problem, const Request& request, Plan* plan,
                      ProblemInfo* info = nullptr);

/// The receipt runtime_mode of a KV-cache call: "append_decode" when k_new is given (either
/// layout), else "paged_decode" with a page_table, else "decode".
const char* kvcache_runtime_mode(const KvCacheProblem& problem);

/// The same names from the two facts that decide them, for callers that have no problem yet
/// (ServingPlan names the decode mode of a configuration): append (k_new given) wins over paged
/// (a page_table given).
const char* kvcache_runtime_mode(bool append, bool paged);

/// Attention against a KV cache, appending k_new / v_new first when given. Dispatch, strict
/// mode, receipts and error rules as forward() (dispatch.h); the receipt's runtime_mode is
/// kvcache_runtime_mode(problem). Backends with decode code: reference_cpu (host tensors,
/// float64 accumulation), reference_cuda (CUDA tensors, fp32 accumulation, metadata read on the
/// device) and sm90 (H100/H200: split-KV with the query heads of a KV head packed into one tile,
/// any page size, head_dim == head_dim_v in {64, 128, 256}; docs/sm90_decode.md). sm90 reads
/// every metadata tensor on the device and allocates its workspace on `stream`, so a call with
/// check_metadata_values = false is CUDA-graph capturable and replays with new cache_seqlens.
/// Every other backend refuses with its tag (sm100.not_implemented, ...).
Status forward_kvcache(const KvCacheProblem& problem, const Request& request = {},
                       cudaStream_t stream = nullptr);

}  // namespace flashlane
