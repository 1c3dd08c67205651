// validate_kvcache.cpp: validate_kvcache(), the gate of every KV-cache call (flashlane/kvcache.h).
//
// Phases, most basic first (the first failing one gives the Status), as validate.cpp orders them:
//   1. presence   required tensors, pairs (k_new/v_new, rotary_cos/rotary_sin), combinations
//   2. devices    every tensor on q's device
//   3. dtypes     floating tensors equal to q (rotary: any floating), lse and learnable_sink
//                 float32, int32 metadata
//   4. ranks      (learnable_sink 1)
//   5. shapes     every dimension agreeing (learnable_sink [heads_q]); the cache layout (dense
//                 or paged)
//   6. heads and head dims
//   7. strides    last dimension contiguous (learnable_sink: stride 1); CUDA data tensors
//                 16-byte aligned
//   8. options    mask, window, softmax_scale, softcap, num_splits, rotary_dim
//   9. metadata   values of cache_seqlens, cache_batch_idx, page_table; rotary coverage
// Nothing is written to any tensor; `info` only on success.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/validate_shared.h"
#include "flashlane/kvcache.h"

namespace flashlane {
namespace {

constexpr int64_t kMaxHeadDim = 256;

using detail::fail;
using detail::is_floating;
using detail::shape_str;
using detail::str;
using detail::str_double;

enum class Kind { kData, kRotary, kLse, kSink, kSeqlens, kBatchIdx, kPageTable };

struct Arg {
  const char* name;
  const TensorView* t;
  Kind kind;
};

/// The error code of a malformed metadata tensor of `kind` (its own code, so callers can tell
/// which argument to fix).
ErrorCode meta_code(Kind kind) {
  switch (kind) {
    case Kind::kSeqlens: return ErrorCode::kCacheSeqlensInvalid;
    case Kind::kBatchIdx: return ErrorCode::kCacheBatchIdxInvalid;
    case Kind::kPageTable: return ErrorCode::kPageTableInvalid;
    case Kind::kRotary: return ErrorCode::kRotaryInvalid;
    default: return ErrorCode::kShapeMismatch;
  }
}

/// True for the tensors whose malformed rank or shape has the plain codes (kRankMismatch,
/// kShapeMismatch) rather than a metadata code of their own.
bool plain_code(Kind kind) {
  return kind == Kind::kData || kind == Kind::kLse || kind == Kind::kSink;
}

struct Derived {
  std::vector<Arg> args;
  bool paged = false, append = false, rotary = false;
  Device device{};
  DType dtype = DType::kFloat16;
  int64_t batch = 0, seqlen_q = 0, heads_q = 0, heads_kv = 0, head_dim = 0, head_dim_v = 0;
  int64_t batch_cache = 0, page_size = 0, num_pages = 0, max_pages = 0, capacity = 0;
  int64_t seqlen_new = 0, rotary_dim = 0, seqlen_ro = 0;
  double scale = 0.0;
};

std::vector<Arg> collect(const KvCacheProblem& p) {
  return {{"q", &p.q, Kind::kData},
          {"k_cache", &p.k_cache, Kind::kData},
          {"v_cache", &p.v_cache, Kind::kData},
          {"o", &p.o, Kind::kData},
          {"lse", &p.lse, Kind::kLse},
          {"cache_seqlens", &p.cache_seqlens, Kind::kSeqlens},
          {"cache_batch_idx", &p.cache_batch_idx, Kind::kBatchIdx},
          {"page_table", &p.page_table, Kind::kPageTable},
          {"k_new", &p.k_new, Kind::kData},
          {"v_new", &p.v_new, Kind::kData},
          {"rotary_cos", &p.rotary_cos, Kind::kRotary},
          {"rotary_sin", &p.rotary_sin, Kind::kRotary},
          {"learnable_sink", &p.learnable_sink, Kind::kSink}};
}

// ---- 1. presence
Status check_presence(const KvCacheProblem& p, Derived* d) {
  const struct {
    const char* name;
    const TensorView* t;
  } required[] = {{"q", &p.q}, {"k_cache", &p.k_cache}, {"v_cache", &p.v_cache}, {"o", &p.o}};
  for (const auto& r : required) {
    if (!r.t->defined()) {
      return fail(ErrorCode::kNullPointer, std::string(r.name) + ": not given, but required for a "
                                                                 "KV-cache call");
    }
  }
  if (p.k_new.defined() != p.v_new.defined()) {
    return fail(ErrorCode::kInvalidArgument,
                std::string(p.k_new.defined() ? "k_new is given but v_new is not"
                                              : "v_new is given but k_new is not") +
                    ": appending needs both");
  }
  if (p.rotary_cos.defined() != p.rotary_sin.defined()) {
    return fail(ErrorCode::kInvalidArgument,
                std::string(p.rotary_cos.defined() ? "rotary_cos is given but rotary_sin is not"
                                                   : "rotary_sin is given but rotary_cos is not") +
                    ": rotary embedding needs both");
  }
  d->append = p.k_new.defined();
  d->rotary = p.rotary_cos.defined();
  d->paged = p.page_table.defined();
  if (d->rotary && !d->append) {
    return fail(ErrorCode::kInvalidArgument,
                "rotary_cos / rotary_sin are given without k_new / v_new: rotary embedding applies "
                "only to a call that appends new keys (FlashAttention's rule)");
  }
  if (d->append && !p.cache_seqlens.defined()) {
    return fail(ErrorCode::kInvalidArgument,
                "k_new / v_new are given without cache_seqlens: the append position of each "
                "sequence is cache_seqlens[b]");
  }
  if (d->paged && p.cache_batch_idx.defined()) {
    return fail(ErrorCode::kInvalidArgument,
                "cache_batch_idx is given with a page_table: a paged cache is indexed by the page "
                "table alone (cache_batch_idx is for the dense cache)");
  }
  for (const Arg& a : d->args) {
    if (a.t->defined() && a.t->data == nullptr) {
      return fail(ErrorCode::kNullPointer, std::string(a.name) + ": data pointer is null");
    }
  }
  return Status::Ok();
}

// ---- 2. devices
Status check_devices(const KvCacheProblem& p, Derived* d) {
  return detail::check_tensors_on_q_device(p.q, d->args, &d->device);
}

// ---- 3. dtypes
Status check_dtypes(const KvCacheProblem& p, Derived* d) {
  for (const Arg& a : d->args) {
    if (!a.t->defined()) continue;
    const std::string got = std::string(a.name) + ".dtype = " + dtype_name(a.t->dtype);
    switch (a.kind) {
      case Kind::kData:
      case Kind::kRotary:
        if (!is_floating(a.t->dtype)) {
          return fail(ErrorCode::kUnsupportedDType,
                      got + " is not supported (float16, bfloat16, float32 or float64)");
        }
        break;
      case Kind::kLse:
        if (a.t->dtype != DType::kFloat32) {
          return fail(ErrorCode::kUnsupportedDType, got + " is not supported (lse is float32)");
        }
        break;
      case Kind::kSink:
        if (a.t->dtype != DType::kFloat32) {
          return fail(ErrorCode::kUnsupportedDType,
                      got + " is not supported (learnable_sink is float32 [heads_q])");
        }
        break;
      default:
        if (a.t->dtype != DType::kInt32) return fail(meta_code(a.kind), got + " (must be int32)");
    }
  }
  for (const Arg& a : d->args) {
    if (a.kind != Kind::kData || !a.t->defined()) continue;
    if (a.t->dtype != p.q.dtype) {
      return fail(ErrorCode::kDTypeMismatch, std::string(a.name) + ".dtype = " +
                                                 dtype_name(a.t->dtype) + " does not match q.dtype = " +
                                                 dtype_name(p.q.dtype));
    }
  }
  d->dtype = p.q.dtype;
  return Status::Ok();
}

// ---- 4. ranks
Status check_ranks(const KvCacheProblem&, Derived* d) {
  for (const Arg& a : d->args) {
    if (!a.t->defined()) continue;
    int want = 4;
    switch (a.kind) {
      case Kind::kData: want = 4; break;
      case Kind::kLse: want = 3; break;
      case Kind::kSink:
      case Kind::kSeqlens:
      case Kind::kBatchIdx: want = 1; break;
      case Kind::kPageTable:
      case Kind::kRotary: want = 2; break;
    }
    if (a.t->rank != want) {
      const ErrorCode code = plain_code(a.kind) ? ErrorCode::kRankMismatch : meta_code(a.kind);
      return fail(code, std::string(a.name) + ".rank = " + str(a.t->rank) + " (expected " +
                            str(want) + "; shape " + shape_str(*a.t) + ")");
    }
  }
  return Status::Ok();
}

Status expect_dim(const char* name, const TensorView& t, int dim, int64_t want, const char* what,
                  ErrorCode code = ErrorCode::kShapeMismatch) {
  if (t.shape[dim] == want) return Status::Ok();
  return fail(code, std::string(name) + ".shape[" + str(dim) + "] = " + str(t.shape[dim]) +
                        " does not match " + what + " = " + str(want) + "; " + name + " is " +
                        shape_str(t));
}

// ---- 5. shapes
Status check_shapes(const KvCacheProblem& p, Derived* d) {
  for (const Arg& a : d->args) {
    if (!a.t->defined()) continue;
    for (int i = 0; i < a.t->rank; ++i) {
      if (a.t->shape[i] < 0) {
        return fail(plain_code(a.kind) ? ErrorCode::kShapeMismatch : meta_code(a.kind),
                    std::string(a.name) + ".shape[" + str(i) + "] = " + str(a.t->shape[i]) +
                        " is negative");
      }
    }
  }
  d->batch = p.q.shape[0];
  d->seqlen_q = p.q.shape[1];
  if (d->seqlen_q < 1) {
    return fail(ErrorCode::kShapeMismatch,
                "q.shape[1] = " + str(d->seqlen_q) + ": a KV-cache call needs seqlen_q >= 1");
  }
  const TensorView &q = p.q, &kc = p.k_cache, &vc = p.v_cache;
  const int64_t heads_q = q.shape[2], heads_kv = kc.shape[2], dh = q.shape[3], dv = vc.shape[3];
  Status st;
  const auto check = [&](Status s) {
    if (st.ok() && !s.ok()) st = s;
  };
  check(expect_dim("k_cache", kc, 3, dh, "head_dim (q.shape[3])"));
  check(expect_dim("v_cache", vc, 0, kc.shape[0], d->paged ? "num_pages (k_cache.shape[0])"
                                                             : "batch_cache (k_cache.shape[0])"));
  check(expect_dim("v_cache", vc, 1, kc.shape[1], d->paged ? "page_size (k_cache.shape[1])"
                                                             : "seqlen_cache (k_cache.shape[1])"));
  check(expect_dim("v_cache", vc, 2, heads_kv, "heads_kv (k_cache.shape[2])"));
  check(expect_dim("o", p.o, 0, d->batch, "batch (q.shape[0])"));
  check(expect_dim("o", p.o, 1, d->seqlen_q, "seqlen_q (q.shape[1])"));
  check(expect_dim("o", p.o, 2, heads_q, "heads_q (q.shape[2])"));
  check(expect_dim("o", p.o, 3, dv, "head_dim_v (v_cache.shape[3])"));
  if (p.lse.defined()) {
    check(expect_dim("lse", p.lse, 0, d->batch, "batch (q.shape[0])"));
    check(expect_dim("lse", p.lse, 1, heads_q, "heads_q (q.shape[2])"));
    check(expect_dim("lse", p.lse, 2, d->seqlen_q, "seqlen_q (q.shape[1])"));
  }
  if (p.learnable_sink.defined()) {
    check(expect_dim("learnable_sink", p.learnable_sink, 0, heads_q, "heads_q (q.shape[2])"));
  }
  if (d->append) {
    d->seqlen_new = p.k_new.shape[1];
    check(expect_dim("k_new", p.k_new, 0, d->batch, "batch (q.shape[0])"));
    check(expect_dim("k_new", p.k_new, 2, heads_kv, "heads_kv (k_cache.shape[2])"));
    check(expect_dim("k_new", p.k_new, 3, dh, "head_dim (q.shape[3])"));
    check(expect_dim("v_new", p.v_new, 0, d->batch, "batch (q.shape[0])"));
    check(expect_dim("v_new", p.v_new, 1, d->seqlen_new, "seqlen_new (k_new.shape[1])"));
    check(expect_dim("v_new", p.v_new, 2, heads_kv, "heads_kv (k_cache.shape[2])"));
    check(expect_dim("v_new", p.v_new, 3, dv, "head_dim_v (v_cache.shape[3])"));
  }
  if (!st.ok()) return st;
  if (p.cache_seqlens.defined()) {
    if (Status s = expect_dim("cache_seqlens", p.cache_seqlens, 0, d->batch, "batch (q.shape[0])",
                              ErrorCode::kCacheSeqlensInvalid);
        !s.ok())
      return s;
  }
  if (d->paged) {
    d->num_pages = kc.shape[0];
    d->page_size = kc.shape[1];
    if (d->page_size < 1) {
      return fail(ErrorCode::kPageTableInvalid,
                  "page_size = " + str(d->page_size) +
                      " (k_cache.shape[1] of a paged cache): a page holds at least one key");
    }
    if (Status s = expect_dim("page_table", p.page_table, 0, d->batch, "batch (q.shape[0])",
                              ErrorCode::kPageTableInvalid);
        !s.ok())
      return s;
    d->max_pages = p.page_table.shape[1];
    d->capacity = d->max_pages * d->page_size;
  } else {
    d->batch_cache = kc.shape[0];
    d->capacity = kc.shape[1];
    if (p.cache_batch_idx.defined()) {
      if (Status s = expect_dim("cache_batch_idx", p.cache_batch_idx, 0, d->batch,
                                "batch (q.shape[0])", ErrorCode::kCacheBatchIdxInvalid);
          !s.ok())
        return s;
    } else if (d->batch_cache != d->batch) {
      return fail(ErrorCode::kShapeMismatch,
                  "k_cache.shape[0] = " + str(d->batch_cache) + " does not match batch = " +
                      str(d->batch) +
                      " (q.shape[0]); a dense cache with another batch needs cache_batch_idx");
    }
  }
  if (d->rotary) {
    if (p.rotary_sin.shape[0] != p.rotary_cos.shape[0] ||
        p.rotary_sin.shape[1] != p.rotary_cos.shape[1]) {
      return fail(ErrorCode::kRotaryInvalid, "rotary_sin is " + shape_str(p.rotary_sin) +
                                                 " but rotary_cos is " + shape_str(p.rotary_cos) +
                                                 " (both [seqlen_ro, rotary_dim / 2])");
    }
    d->seqlen_ro = p.rotary_cos.shape[0];
    d->rotary_dim = 2 * p.rotary_cos.shape[1];
  }
  d->heads_q = heads_q;
  d->heads_kv = heads_kv;
  d->head_dim = dh;
  d->head_dim_v = dv;
  return Status::Ok();
}

// ---- 6. heads and head dims
Status check_heads(const KvCacheProblem&, Derived* d) {
  if (d->heads_kv == 0) {
    return fail(ErrorCode::kHeadsNotDivisible,
                "heads_kv = 0 (k_cache.shape[2]): at least one key/value head is needed");
  }
  if (d->heads_q % d->heads_kv != 0) {
    return fail(ErrorCode::kHeadsNotDivisible,
                "heads_q = " + str(d->heads_q) + " (q.shape[2]) is not a multiple of heads_kv = " +
                    str(d->heads_kv) + " (k_cache.shape[2])");
  }
  const auto valid = [](int64_t v) { return v > 0 && v <= kMaxHeadDim && v % 8 == 0; };
  if (!valid(d->head_dim)) {
    return fail(ErrorCode::kHeadDimInvalid, "head_dim = " + str(d->head_dim) +
                                                " (q.shape[3]) is invalid: must be a multiple of 8 "
                                                "in [8, 256]");
  }
  if (!valid(d->head_dim_v)) {
    return fail(ErrorCode::kHeadDimInvalid, "head_dim_v = " + str(d->head_dim_v) +
                                                " (v_cache.shape[3]) is invalid: must be a multiple "
                                                "of 8 in [8, 256]");
  }
  return Status::Ok();
}

// ---- 7. strides
Status check_strides(const KvCacheProblem&, Derived* d) {
  for (const Arg& a : d->args) {
    if (!a.t->defined()) continue;
    const int last = a.t->rank - 1;
    if (a.t->stride[last] != 1) {
      return fail(ErrorCode::kNotContiguous,
                  std::string(a.name) + ".stride[" + str(last) + "] = " + str(a.t->stride[last]) +
                      ": the last dimension must be contiguous (stride 1)");
    }
  }
  if (d->device.kind != DeviceKind::kCUDA) return Status::Ok();
  for (const Arg& a : d->args) {
    if (a.kind != Kind::kData || !a.t->defined()) continue;
    if (Status st = detail::check_cuda_alignment(a.name, *a.t, d->device); !st.ok()) return st;
  }
  return Status::Ok();
}

// ---- 8. options
Status check_options(const KvCacheProblem& p, Derived* d) {
  if (p.mask == MaskType::kCausal) {
    return fail(ErrorCode::kInvalidArgument,
                "mask = causal (top-left) is not defined against a KV cache: the query rows are "
                "the last seqlen_q positions, use causal_bottom_right");
  }
  if (p.mask != MaskType::kNoMask && p.mask != MaskType::kCausalBottomRight) {
    return fail(ErrorCode::kInvalidArgument,
                "mask = " + str(static_cast<int>(p.mask)) + " is not a known MaskType");
  }
  if (p.window_left < -1) {
    return fail(ErrorCode::kWindowInvalid,
                "window_left = " + str(p.window_left) + " (must be -1 for unbounded, or >= 0)");
  }
  if (p.window_right < -1) {
    return fail(ErrorCode::kWindowInvalid,
                "window_right = " + str(p.window_right) + " (must be -1 for unbounded, or >= 0)");
  }
  if (p.mask != MaskType::kNoMask && p.window_right != -1 && p.window_right != 0) {
    return fail(ErrorCode::kWindowInvalid,
                "window_right = " + str(p.window_right) +
                    " with mask = causal_bottom_right (a causal mask allows only -1 or 0)");
  }
  double scale = 1.0 / std::sqrt(static_cast<double>(d->head_dim));
  if (p.softmax_scale.has_value()) {
    scale = *p.softmax_scale;
    if (!std::isfinite(scale) || scale <= 0.0) {
      return fail(ErrorCode::kSoftmaxScaleInvalid,
                  "softmax_scale = " + str_double(scale) + " (must be finite and > 0)");
    }
  }
  if (!std::isfinite(p.softcap) || p.softcap < 0.0) {
    return fail(ErrorCode::kSoftcapInvalid,
                "softcap = " + str_double(p.softcap) + " (must be finite and >= 0; 0 disables)");
  }
  if (p.num_splits < 0) {
    return fail(ErrorCode::kInvalidArgument,
                "num_splits = " + str(p.num_splits) + " (must be >= 0; 0 = heuristic)");
  }
  if (d->rotary && (d->rotary_dim < 2 || d->rotary_dim > d->head_dim)) {
    return fail(ErrorCode::kRotaryInvalid,
                "rotary_dim = " + str(d->rotary_dim) + " (2 * rotary_cos.shape[1]) must be in [2, " +
                    "head_dim = " + str(d->head_dim) + "]");
  }
  d->scale = scale;
  return Status::Ok();
}

/// True when q rows are rotated at consecutive positions (FlashAttention: causal or local).
bool causal_or_local(const KvCacheProblem& p) {
  return p.mask != MaskType::kNoMask || p.window_left >= 0 || p.window_right >= 0;
}

// ---- 9. metadata values
Status check_metadata(const KvCacheProblem& p, Derived* d) {
  if (d->device.kind == DeviceKind::kCUDA && !p.check_metadata_values) return Status::Ok();
  std::vector<int32_t> seqlens, batch_idx;
  if (p.cache_seqlens.defined()) {
    if (Status st = detail::read_int32_metadata("cache_seqlens", p.cache_seqlens, &seqlens); !st.ok())
      return st;
  }
  if (p.cache_batch_idx.defined()) {
    if (Status st = detail::read_int32_metadata("cache_batch_idx", p.cache_batch_idx, &batch_idx);
        !st.ok())
      return st;
  }
  const char* cap_src = d->paged ? "max_pages_per_seq * page_size" : "seqlen_cache (k_cache.shape[1])";
  std::vector<int64_t> used(static_cast<size_t>(d->batch), d->capacity);  // keys after the append
  for (int64_t b = 0; b < static_cast<int64_t>(seqlens.size()); ++b) {
    const int64_t s = seqlens[static_cast<size_t>(b)];
    if (s < 0 || s > d->capacity) {
      return fail(ErrorCode::kCacheSeqlensInvalid,
                  "cache_seqlens[" + str(b) + "] = " + str(s) + " is outside [0, " +
                      str(d->capacity) + "], the cache capacity " + cap_src);
    }
    if (s + d->seqlen_new > d->capacity) {
      return fail(ErrorCode::kCacheOverflow,
                  "cache_seqlens[" + str(b) + "] = " + str(s) + " + seqlen_new = " +
                      str(d->seqlen_new) + " (k_new.shape[1]) = " + str(s + d->seqlen_new) +
                      " exceeds the cache capacity " + str(d->capacity) + " (" + cap_src + ")");
    }
    used[static_cast<size_t>(b)] = s + d->seqlen_new;
  }
  if (!batch_idx.empty()) {
    std::vector<int64_t> owner(static_cast<size_t>(d->batch_cache), -1);
    for (int64_t b = 0; b < d->batch; ++b) {
      const int64_t c = batch_idx[static_cast<size_t>(b)];
      if (c < 0 || c >= d->batch_cache) {
        return fail(ErrorCode::kCacheBatchIdxInvalid,
                    "cache_batch_idx[" + str(b) + "] = " + str(c) + " is outside [0, " +
                        str(d->batch_cache) + ") (batch_cache = k_cache.shape[0])");
      }
      if (d->append && owner[static_cast<size_t>(c)] >= 0) {
        return fail(ErrorCode::kCacheBatchIdxInvalid,
                    "cache_batch_idx[" + str(b) + "] = " + str(c) + " repeats cache_batch_idx[" +
                        str(owner[static_cast<size_t>(c)]) +
                        "]: two sequences would append to one cache row");
      }
      owner[static_cast<size_t>(c)] = b;
    }
  }
  if (d->paged) {
    // Only the entries a sequence uses (pages covering its first used[b] positions) are read;
    // the rest of a row may hold anything (padding).
    std::vector<int64_t> writer;  // page -> first (b * max_pages + slot) whose append writes it
    std::vector<int64_t> reader;  // page -> first (b * max_pages + slot) that names it
    if (d->append) {
      writer.assign(static_cast<size_t>(d->num_pages), -1);
      reader.assign(static_cast<size_t>(d->num_pages), -1);
    }
    std::vector<int32_t> row;
    for (int64_t b = 0; b < d->batch; ++b) {
      const int64_t pages_used = (used[static_cast<size_t>(b)] + d->page_size - 1) / d->page_size;
      if (pages_used == 0) continue;
      TensorView r = p.page_table;
      r.rank = 1;
      r.data = static_cast<int32_t*>(p.page_table.data) + b * p.page_table.stride[0];
      r.shape = {pages_used, 0, 0, 0};
      r.stride = {1, 0, 0, 0};
      if (Status st = detail::read_int32_metadata("page_table", r, &row); !st.ok()) return st;
      const int64_t first_written =
          d->append && d->seqlen_new > 0 ? seqlens[static_cast<size_t>(b)] / d->page_size : pages_used;
      for (int64_t s = 0; s < pages_used; ++s) {
        const int64_t page = row[static_cast<size_t>(s)];
        if (page < 0 || page >= d->num_pages) {
          return fail(ErrorCode::kPageTableInvalid,
                      "page_table[" + str(b) + ", " + str(s) + "] = " + str(page) +
                          " is outside [0, " + str(d->num_pages) +
                          ") (num_pages = k_cache.shape[0]); sequence " + str(b) + " uses " +
                          str(pages_used) + " pages for " + str(used[static_cast<size_t>(b)]) +
                          " keys");
        }
        if (!d->append) continue;
        const int64_t entry = b * d->max_pages + s;
        const size_t pg = static_cast<size_t>(page);
        const bool writes = s >= first_written;
        const auto where = [&](int64_t e) {
          return "page_table[" + str(e / d->max_pages) + ", " + str(e % d->max_pages) + "]";
        };
        if (writes && (writer[pg] >= 0 || reader[pg] >= 0)) {
          const int64_t other = writer[pg] >= 0 ? writer[pg] : reader[pg];
          return fail(ErrorCode::kPageTableInvalid,
                      "page_table[" + str(b) + ", " + str(s) + "] = " + str(page) +
                          " is written by the append but " + where(other) +
                          " names the same page");
        }
        if (!writes && writer[pg] >= 0) {
          return fail(ErrorCode::kPageTableInvalid,
                      "page_table[" + str(b) + ", " + str(s) + "] = " + str(page) + " names a page " +
                          "that the append writes through " + where(writer[pg]));
        }
        if (writes) writer[pg] = entry;
        if (reader[pg] < 0) reader[pg] = entry;
      }
    }
  }
  if (d->rotary) {
    // Highest rotated position: k_new row seqlen_new - 1 at cache_seqlens[b] + seqlen_new - 1;
    // q row seqlen_q - 1 at cache_seqlens[b] + seqlen_q - 1 (causal / local) or cache_seqlens[b].
    const int64_t q_extent = causal_or_local(p) ? d->seqlen_q : 1;
    for (int64_t b = 0; b < d->batch; ++b) {
      const int64_t s = seqlens[static_cast<size_t>(b)];
      const int64_t need = s + std::max<int64_t>(d->seqlen_new, q_extent);
      if (need > d->seqlen_ro) {
        return fail(ErrorCode::kRotaryInvalid,
                    "rotary_cos.shape[0] = " + str(d->seqlen_ro) + " (seqlen_ro) does not cover " +
                        "position " + str(need - 1) + " that sequence " + str(b) +
                        " rotates (cache_seqlens[" + str(b) + "] = " + str(s) + ")");
      }
    }
  }
  return Status::Ok();
}

ProblemInfo fill_info(const KvCacheProblem& p, const Derived& d) {
  ProblemInfo info;
  info.direction = Direction::kDecode;
  info.dtype = d.dtype;
  info.device = d.device;
  info.varlen = false;
  info.kv_layout = d.paged ? KvLayout::kPaged : KvLayout::kDense;
  info.batch = d.batch;
  info.seqlen_q = d.seqlen_q;
  info.seqlen_k = d.capacity;
  info.total_q = d.batch * d.seqlen_q;
  info.total_k = d.batch * d.capacity;
  info.heads_q = d.heads_q;
  info.heads_kv = d.heads_kv;
  info.head_dim = d.head_dim;
  info.head_dim_v = d.head_dim_v;
  info.has_lse = p.lse.defined();
  info.has_sink = p.learnable_sink.defined();
  info.softmax_scale = d.scale;
  info.softcap = p.softcap;
  info.mask = p.mask;
  info.bottom_right = true;
  info.window_left = p.window_left;
  info.window_right = p.mask != MaskType::kNoMask ? 0 : p.window_right;
  info.batch_cache = d.batch_cache;
  info.page_size = d.page_size;
  info.num_pages = d.num_pages;
  info.max_pages_per_seq = d.max_pages;
  info.cache_capacity = d.capacity;
  info.has_cache_seqlens = p.cache_seqlens.defined();
  info.has_cache_batch_idx = p.cache_batch_idx.defined();
  info.has_append = d.append;
  info.seqlen_new = d.seqlen_new;
  info.rotary_dim = d.rotary_dim;
  info.rotary_interleaved = d.rotary && p.rotary_interleaved;
  info.num_splits = p.num_splits;
  return info;
}

using Phase = Status (*)(const KvCacheProblem&, Derived*);
constexpr Phase kPhases[] = {check_presence, check_devices, check_dtypes,  check_ranks, check_shapes,
                             check_heads,    check_strides, check_options, check_metadata};

}  // namespace

Status validate_kvcache(const KvCacheProblem& p, ProblemInfo* info_out) {
  Derived d;
  d.args = collect(p);
  for (const Phase phase : kPhases) {
    if (Status st = phase(p, &d); !st.ok()) return st;
  }
  if (info_out != nullptr) *info_out = fill_info(p, d);
  return Status::Ok();
}

const char* kvcache_runtime_mode(const KvCacheProblem& p) {
  return kvcache_runtime_mode(p.k_new.defined(), p.page_table.defined());
}

const char* kvcache_runtime_mode(bool append, bool paged) {
  if (append) return "append_decode";
  if (paged) return "paged_decode";
  return "decode";
}

}  // namespace flashlane
