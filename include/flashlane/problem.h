// flashlane/problem.h: one validated description of an attention call (forward or backward).
//
// Conventions (FlashAttention's):
//   bshd layout   q [batch, seqlen_q, heads_q, head_dim]      k [batch, seqlen_k, heads_kv, head_dim]
//                 v [batch, seqlen_k, heads_kv, head_dim_v]   o [batch, seqlen_q, heads_q, head_dim_v]
//                 lse float32 [batch, heads_q, seqlen_q] (natural log)
//   varlen layout (cu_seqlens_q given): q [total_q, heads_q, head_dim], k/v [total_k, heads_kv, d],
//                 o [total_q, heads_q, head_dim_v], lse float32 [heads_q, total_q];
//                 cu_seqlens_q / cu_seqlens_k int32 [batch + 1], starting at 0, non-decreasing,
//                 ending at total_q / total_k.
//   seqused_k     optional int32 [batch]: only the first seqused_k[b] keys of sequence b are used.
//   Gradients have the shape of what they differentiate: dout ~ o, dq ~ q, dk ~ k, dv ~ v.
//   GQA/MQA: heads_q % heads_kv == 0, query head h reads kv head h / (heads_q / heads_kv).
//   Last dimension contiguous (stride 1); other strides free.
//
// Masks, named as TransformerEngine names them:
//   kNoMask            every key is visible (window bounds, if set, are bottom-right aligned).
//   kCausal            top-left aligned (PyTorch SDPA is_causal): query i sees keys j <= i.
//   kCausalBottomRight FlashAttention >= 2.1 causal=True: query i sees keys
//                      j <= i + seqlen_k - seqlen_q.
//   window_left / window_right (-1 = unbounded) bound the visible keys around the same diagonal:
//     diag(i) = i (kCausal) or i + seqlen_k - seqlen_q (otherwise);
//     visible(i, j) = (window_left < 0 || j >= diag(i) - window_left) &&
//                     (window_right < 0 || j <= diag(i) + window_right). Causal masks accept window_right
//     -1 or 0 only and normalize it to 0.
//   seqlen_k here is the number of keys actually used (seqused_k[b] when given).
// softcap s > 0: score = s * tanh(softmax_scale * q.k / s) (Gemma 2), softmax without more scaling.
// A query row with no visible key writes O = 0 and LSE = -inf (never NaN); its gradients are 0.
//
// Attention sinks (gpt-oss; FlashAttention-4's learnable_sink): learnable_sink float32 [heads_q]
// holds one logit per query head, in the units of the final scores (after softmax_scale and
// softcap; the sink itself is neither scaled nor capped). It joins every row's softmax as a key
// without a value:  lse_i = log(exp(sink_h) + sum_j visible exp(s_ij)),  p_ij = exp(s_ij - lse_i),
// o_i = sum_j p_ij v_j. So the returned LSE includes the sink, the rows' weights sum to less
// than 1, and a row with no visible key writes O = 0 and LSE = sink_h. Its gradient is
//   dsink_h = -sum over batch and rows i of head h of exp(sink_h - lse_i) * delta_i,
//   delta_i = sum_d dout_id * o_id,
// the sink's column of dS = P * (dP - delta) with dP = 0 (the sink has no value).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "flashlane/status.h"
#include "flashlane/tensor.h"

namespace flashlane {

enum class MaskType : int { kNoMask = 0, kCausal = 1, kCausalBottomRight = 2 };

/// "no_mask", "causal", "causal_bottom_right".
const char* mask_type_name(MaskType mask);
bool parse_mask_type(const std::string& name, MaskType* out);

/// kDecode: a KV-cache call (flashlane/kvcache.h); validate() refuses it (validate_kvcache).
enum class Direction : int { kForward = 0, kBackward = 1, kDecode = 2 };

/// How the keys and values of a call are laid out in memory (FlashAttention's three layouts).
///   kDense        k/v [batch, seqlen_k, heads_kv, d] (bshd).
///   kVarlenPacked k/v [total_k, heads_kv, d], sequences delimited by cu_seqlens_k.
///   kPaged        k/v [num_pages, page_size, heads_kv, d] with page_table int32
///                 [batch, max_pages_per_seq]: the paged KV cache of a KV-cache call
///                 (flashlane/kvcache.h; forward() and backward() never see it).
enum class KvLayout : int { kDense = 0, kVarlenPacked = 1, kPaged = 2 };

/// "dense", "varlen_packed", "paged".
const char* kv_layout_name(KvLayout layout);

/// The caller's description of one attention call. Fill the tensors the direction needs:
///   forward:  q, k, v -> o (required), lse (optional output)
///   backward: q, k, v, o, lse, dout -> dq, dk, dv (all required)
struct AttentionProblem {
  TensorView q, k, v;
  TensorView o;     // forward output; backward input
  TensorView lse;   // forward output (optional); backward input (required)
  TensorView dout;  // backward input
  TensorView dq, dk, dv;  // backward outputs

  /// Optional attention sinks, float32 [heads_q], contiguous (see "Attention sinks" above);
  /// forward and backward input. The backward needs the forward's LSE, which includes the sinks.
  TensorView learnable_sink;
  /// Backward only, optional output float32 [heads_q]: overwritten with d loss / d sink (needs
  /// learnable_sink). Reduced in a fixed order: bitwise reproducible from run to run.
  TensorView dlearnable_sink;

  // Variable-length (packed) batches. Giving cu_seqlens_q selects the varlen layout; then
  // cu_seqlens_k is required and max_seqlen_q / max_seqlen_k must bound the sequence lengths
  // (0 lets validation compute them from the host copy of cu_seqlens).
  TensorView cu_seqlens_q, cu_seqlens_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  TensorView seqused_k;  // optional, int32 [batch], both layouts

  std::optional<double> softmax_scale;  // default 1 / sqrt(head_dim)
  MaskType mask = MaskType::kNoMask;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;    // 0 disables
  double dropout_p = 0.0;  // must be 0: dropout is not supported yet
  /// Backward only: make dq (and GQA dk/dv) bitwise reproducible from run to run.
  bool deterministic = false;
  /// Validation reads cu_seqlens and seqused_k to check them; for device tensors that is a
  /// synchronous copy. Set false to skip those value checks (e.g. inside CUDA graph capture);
  /// then max_seqlen_q / max_seqlen_k must be given.
  bool check_metadata_values = true;
};

/// Everything a backend needs, derived once by validate(): sizes, the resolved scale and the
/// normalized mask. Per-sequence lengths of varlen problems are read by the backends from
/// cu_seqlens / seqused_k themselves.
struct ProblemInfo {
  Direction direction = Direction::kForward;
  DType dtype = DType::kFloat16;
  Device device{};
  bool varlen = false;  // q (and o, lse) packed by cu_seqlens_q
  KvLayout kv_layout = KvLayout::kDense;  // kVarlenPacked exactly when varlen
  int64_t batch = 0;
  int64_t seqlen_q = 0, seqlen_k = 0;  // bshd: the shapes; varlen: max_seqlen_q / max_seqlen_k
  int64_t total_q = 0, total_k = 0;    // varlen: packed lengths; bshd: batch * seqlen
  int64_t heads_q = 0, heads_kv = 0;
  int64_t head_dim = 0, head_dim_v = 0;
  bool has_lse = false;
  bool has_seqused_k = false;
  double softmax_scale = 0.0;  // resolved
  double softcap = 0.0;
  MaskType mask = MaskType::kNoMask;
  bool bottom_right = false;  // diagonal alignment (see the mask rules above)
  int64_t window_left = -1, window_right = -1;  // normalized: causal -> window_right = 0
  bool deterministic = false;
  bool has_sink = false;   // learnable_sink given
  bool has_dsink = false;  // backward: dlearnable_sink given
  // KV-cache calls only (direction kDecode, flashlane/kvcache.h); zero / false otherwise.
  int64_t batch_cache = 0;        // dense cache: k_cache.shape[0]
  int64_t page_size = 0;          // paged: k_cache.shape[1]
  int64_t num_pages = 0;          // paged: k_cache.shape[0]
  int64_t max_pages_per_seq = 0;  // paged: page_table.shape[1]
  int64_t cache_capacity = 0;     // keys one sequence can hold (also seqlen_k)
  bool has_cache_seqlens = false;
  bool has_cache_batch_idx = false;
  bool has_append = false;        // k_new / v_new given
  int64_t seqlen_new = 0;         // k_new.shape[1]
  int64_t rotary_dim = 0;         // 0: no rotary
  bool rotary_interleaved = false;
  int64_t num_splits = 0;         // the caller's hint
  bool is_decode() const { return direction == Direction::kDecode; }
  bool is_causal() const { return mask != MaskType::kNoMask; }
  bool has_window() const { return window_left >= 0 || (window_right >= 0 && !is_causal()); }
  /// Number of visible (query, key) pairs summed over batch and query heads; needs host copies
  /// of cu_seqlens / seqused_k for varlen, given as optional host arrays (nullptr = bshd).
  double visible_pairs(const int32_t* cu_q_host, const int32_t* cu_k_host,
                       const int32_t* seqused_k_host) const;
};

/// Validates `problem` for `direction`. On success fills `info` (if non-null). On failure returns
/// a Status with a specific ErrorCode and a message naming the argument and its value; it never
/// writes any tensor. Checks: null pointers; dlearnable_sink only with learnable_sink
/// (kInvalidArgument); dtypes (q/k/v/o/dout/dq/dk/dv: float16, bfloat16, float32, float64, all
/// equal; lse, learnable_sink and dlearnable_sink float32; cu_seqlens/seqused_k int32); ranks and
/// shapes of every tensor (the sinks [heads_q]); heads_q % heads_kv; head_dim and head_dim_v in
/// 8..256, multiples of 8; unit stride in the last dimension; 16-byte alignment of base pointers
/// and strides of CUDA tensors (q/k/v/o/dout/dq/dk/dv); cu_seqlens contents; seqused_k contents;
/// window >= -1; softmax_scale finite and > 0; softcap finite and >= 0; all tensors on one
/// device; dropout. The forward ignores dout, dq, dk, dv and dlearnable_sink.
Status validate(const AttentionProblem& problem, Direction direction, ProblemInfo* info);

/// FLOPs of the forward pass as FlashAttention counts them: 4 * visible pairs * head_dim
/// (2 for QK^T, 2 for PV, with head_dim averaged as (head_dim + head_dim_v) / 2).
double forward_flops(const ProblemInfo& info, double visible_pairs);

}  // namespace flashlane
