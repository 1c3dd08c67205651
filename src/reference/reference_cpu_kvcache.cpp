// reference_cpu_kvcache.cpp: the float64-accumulating CPU reference of a KV-cache call
// (flashlane/kvcache.h): FlashAttention's flash_attn_with_kvcache (flash-attention
// hopper/flash_attn_interface.py), written for obvious correctness.
//
// Steps, for each sequence b (all sums in float64):
//   1. Append: k_new / v_new row j goes to cache position cache_seqlens[b] + j (dense: cache row
//      cache_batch_idx[b] or b; paged: page page_table[b, t / page_size], row t % page_size),
//      k after rotary at position cache_seqlens[b] + j, rounded to the cache dtype by the store.
//   2. Rotary on q (a float64 copy, not rounded): row i at cache_seqlens[b] + i when causal or
//      local, else at cache_seqlens[b].
//   3. Attention over the first seqlen_k = cache_seqlens[b] + seqlen_new positions read back from
//      the cache (the appended values as stored), bottom-right aligned masks, softcap, softmax
//      with max subtraction; O = sum p v / sum p, LSE = m + log(sum p). A row with no visible key
//      writes O = 0, LSE = -inf. Positions at or beyond seqlen_k are never read.
//      learnable_sink (gpt-oss's per-head sink logit, flashlane/problem.h): one more logit in
//      every row's softmax, without a value: m = max(sink, max s), sum p includes
//      exp(sink - m); a row with no visible key writes O = 0, LSE = sink.
// The append of every sequence finishes before any attention starts (validation guarantees no two
// sequences write one cache row or page, and no sequence reads a page another one writes).
// Rotary: GPT-NeoX (non-interleaved) pairs (c, c + rotary_dim / 2), GPT-J (interleaved) pairs
// (2c, 2c + 1) (Su et al. 2021, RoFormer, eq. 34), with cos / sin = rotary_cos / rotary_sin[pos, c].
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/attention_rules.h"
#include "core/numeric.h"
#include "dispatch/backends.h"
#include "flashlane/kvcache.h"

namespace flashlane::detail {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

int32_t i32(const TensorView& t, int64_t index) {
  return static_cast<const int32_t*>(t.data)[index * t.stride[0]];
}

/// Where sequence b's cache positions and new rows live.
class CacheLayout {
 public:
  CacheLayout(const KvCacheProblem& p, const ProblemInfo& info) : p_(p), info_(info) {}

  int64_t cache_seqlen(int64_t b) const {
    return p_.cache_seqlens.defined() ? i32(p_.cache_seqlens, b) : info_.cache_capacity;
  }
  /// Element offset of (position t, kv head h) of sequence b in a cache tensor.
  int64_t cache_row(const TensorView& c, int64_t b, int64_t t, int64_t h) const {
    if (info_.kv_layout == KvLayout::kPaged) {
      const int64_t page =
          static_cast<const int32_t*>(p_.page_table.data)[b * p_.page_table.stride[0] +
                                                          t / info_.page_size];
      return page * c.stride[0] + (t % info_.page_size) * c.stride[1] + h * c.stride[2];
    }
    const int64_t row = p_.cache_batch_idx.defined() ? i32(p_.cache_batch_idx, b) : b;
    return row * c.stride[0] + t * c.stride[1] + h * c.stride[2];
  }

 private:
  const KvCacheProblem& p_;
  const ProblemInfo& info_;
};

int64_t bshd(const TensorView& t, int64_t b, int64_t s, int64_t h) {
  return b * t.stride[0] + s * t.stride[1] + h * t.stride[2];
}

void load(const TensorView& t, int64_t off, int64_t n, double* dst) {
  for (int64_t d = 0; d < n; ++d) dst[d] = numeric::load(t.data, t.dtype, off + d);
}
void store(const TensorView& t, int64_t off, int64_t n, const double* src) {
  for (int64_t d = 0; d < n; ++d) numeric::store(t.data, t.dtype, off + d, src[d]);
}

/// Rotates the first rotary_dim features of x at position pos in place.
void rotate(const KvCacheProblem& p, const ProblemInfo& info, int64_t pos, double* x) {
  const int64_t half = info.rotary_dim / 2;
  const TensorView &cs = p.rotary_cos, &sn = p.rotary_sin;
  for (int64_t c = 0; c < half; ++c) {
    const double cosv = numeric::load(cs.data, cs.dtype, pos * cs.stride[0] + c);
    const double sinv = numeric::load(sn.data, sn.dtype, pos * sn.stride[0] + c);
    const int64_t i1 = info.rotary_interleaved ? 2 * c : c;
    const int64_t i2 = info.rotary_interleaved ? 2 * c + 1 : c + half;
    const double x1 = x[i1], x2 = x[i2];
    x[i1] = x1 * cosv - x2 * sinv;
    x[i2] = x1 * sinv + x2 * cosv;
  }
}

bool causal_or_local(const KvCacheProblem& p) {
  return p.mask != MaskType::kNoMask || p.window_left >= 0 || p.window_right >= 0;
}

}  // namespace

Status reference_cpu_kvcache(const KvCacheProblem& p, const ProblemInfo& info) {
  for (const TensorView* t : {&p.q, &p.k_cache, &p.v_cache, &p.o, &p.lse, &p.cache_seqlens,
                              &p.cache_batch_idx, &p.page_table, &p.k_new, &p.v_new,
                              &p.rotary_cos, &p.rotary_sin, &p.learnable_sink}) {
    if (t->defined() && t->device.kind != DeviceKind::kCPU) {
      return Status(ErrorCode::kInternal, "reference_cpu called with a tensor not on the host");
    }
  }
  const CacheLayout layout(p, info);
  const int64_t d = info.head_dim, dv = info.head_dim_v;
  const int64_t group = info.heads_q / info.heads_kv;
  const bool rotary = info.rotary_dim > 0;
  const bool write_lse = p.lse.defined();
  std::vector<double> row(static_cast<size_t>(std::max(d, dv)));

  // 1. Append (every sequence before any attention).
  if (info.has_append) {
    for (int64_t b = 0; b < info.batch; ++b) {
      const int64_t base = layout.cache_seqlen(b);
      for (int64_t j = 0; j < info.seqlen_new; ++j) {
        for (int64_t h = 0; h < info.heads_kv; ++h) {
          load(p.k_new, bshd(p.k_new, b, j, h), d, row.data());
          if (rotary) rotate(p, info, base + j, row.data());
          store(p.k_cache, layout.cache_row(p.k_cache, b, base + j, h), d, row.data());
          load(p.v_new, bshd(p.v_new, b, j, h), dv, row.data());
          store(p.v_cache, layout.cache_row(p.v_cache, b, base + j, h), dv, row.data());
        }
      }
    }
  }

  // 2.-3. Attention.
  MaskRule rule;
  rule.window_left = info.window_left;
  rule.window_right = info.window_right;
  rule.bottom_right = true;
  const bool consecutive = causal_or_local(p);
  std::vector<double> qrow(static_cast<size_t>(d)), orow(static_cast<size_t>(dv));
  std::vector<double> kbuf, vbuf, scores;
  for (int64_t b = 0; b < info.batch; ++b) {
    const int64_t cached = layout.cache_seqlen(b);
    const int64_t seqlen_k = cached + info.seqlen_new;
    for (int64_t hk = 0; hk < info.heads_kv; ++hk) {
      kbuf.assign(static_cast<size_t>(seqlen_k * d), 0.0);
      vbuf.assign(static_cast<size_t>(seqlen_k * dv), 0.0);
      for (int64_t t = 0; t < seqlen_k; ++t) {
        load(p.k_cache, layout.cache_row(p.k_cache, b, t, hk), d, &kbuf[t * d]);
        load(p.v_cache, layout.cache_row(p.v_cache, b, t, hk), dv, &vbuf[t * dv]);
      }
      scores.assign(static_cast<size_t>(seqlen_k), 0.0);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const TensorView& sinks = p.learnable_sink;
        const double sink =
            info.has_sink ? numeric::load(sinks.data, sinks.dtype, h * sinks.stride[0]) : kNegInf;
        for (int64_t i = 0; i < info.seqlen_q; ++i) {
          const int64_t o_off = bshd(p.o, b, i, h);
          const int64_t lse_off =
              write_lse ? b * p.lse.stride[0] + h * p.lse.stride[1] + i * p.lse.stride[2] : 0;
          int64_t first = 0, last = 0;
          rule.key_range(i, info.seqlen_q, seqlen_k, &first, &last);
          if (first >= last) {
            std::fill(orow.begin(), orow.end(), 0.0);
            store(p.o, o_off, dv, orow.data());
            if (write_lse) numeric::store(p.lse.data, p.lse.dtype, lse_off, sink);
            continue;
          }
          load(p.q, bshd(p.q, b, i, h), d, qrow.data());
          if (rotary) rotate(p, info, cached + (consecutive ? i : 0), qrow.data());
          double m = sink;  // -inf without sinks
          for (int64_t j = first; j < last; ++j) {
            double raw = 0.0;
            for (int64_t c = 0; c < d; ++c) raw += qrow[c] * kbuf[j * d + c];
            raw *= info.softmax_scale;
            const double s = info.softcap > 0.0 ? info.softcap * std::tanh(raw / info.softcap) : raw;
            scores[j] = s;
            m = std::max(m, s);
          }
          double l = 0.0;
          std::fill(orow.begin(), orow.end(), 0.0);
          for (int64_t j = first; j < last; ++j) {
            const double pj = std::exp(scores[j] - m);
            l += pj;
            for (int64_t c = 0; c < dv; ++c) orow[c] += pj * vbuf[j * dv + c];
          }
          if (sink != kNegInf) l += std::exp(sink - m);
          for (int64_t c = 0; c < dv; ++c) orow[c] /= l;
          store(p.o, o_off, dv, orow.data());
          if (write_lse) numeric::store(p.lse.data, p.lse.dtype, lse_off, m + std::log(l));
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace flashlane::detail
