// KV-cache calls (flashlane/kvcache.h): validation codes (nothing written on error), the CPU
// reference against forward() over the gathered cache, paged == dense, append with rotary,
// empty caches, unused positions and pages never read, receipts and the dispatcher's rows, and
// the serving plan.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "dispatch/applicability.h"
#include "dispatch/backend_registry.h"
#include "dispatch/backends.h"
#include "flashlane/flashlane.h"

namespace fl = flashlane;
using fl::DType;
using fl::ErrorCode;
using fl::TensorView;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

/// An owned host tensor of one dtype.
struct Buf {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
  Buf() = default;
  Buf(DType dt, std::vector<int64_t> s, double fill = 0.0) : dtype(dt), shape(std::move(s)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    bytes.assign(static_cast<size_t>(n * fl::dtype_size(dt)), 0);
    for (int64_t i = 0; i < n; ++i) set(i, fill);
  }
  int64_t numel() const { return static_cast<int64_t>(bytes.size()) / fl::dtype_size(dtype); }
  double get(int64_t i) const { return fl::numeric::load(bytes.data(), dtype, i); }
  void set(int64_t i, double v) { fl::numeric::store(bytes.data(), dtype, i, v); }
  int64_t off(std::initializer_list<int64_t> idx) const {
    int64_t o = 0;
    size_t d = 0;
    for (int64_t i : idx) o = o * shape[d++] + i;
    return o;
  }
  TensorView view() { return TensorView::contiguous(bytes.data(), dtype, shape, fl::Device{}); }
  void random(uint64_t seed) {
    std::mt19937_64 g(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (int64_t i = 0; i < numel(); ++i) set(i, u(g));
  }
};

Buf ints(std::vector<int32_t> v, std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
  Buf b(DType::kInt32, shape);
  std::memcpy(b.bytes.data(), v.data(), v.size() * sizeof(int32_t));
  return b;
}

/// One KV-cache call with owned buffers. Dense by default; page_size > 0 makes it paged with a
/// shuffled page table (pages of sequence b are not contiguous, some pages belong to nobody).
struct Case {
  DType dtype = DType::kFloat32;
  int64_t batch = 2, seqlen_q = 1, heads_q = 4, heads_kv = 2, d = 16, dv = 16;
  int64_t capacity = 24;  // dense seqlen_cache; paged: max_pages * page_size
  int64_t page_size = 0;
  std::vector<int32_t> seqlens = {5, 11};
  int64_t seqlen_new = 0;
  int64_t rotary_dim = 0;
  bool interleaved = true;
  fl::MaskType mask = fl::MaskType::kNoMask;
  int64_t wl = -1, wr = -1;
  double softcap = 0.0;
  bool use_seqlens = true;
  std::vector<float> sinks;  // learnable_sink, one per query head; empty: none

  Buf q, kc, vc, o, lse, seqlens_t, page_table, k_new, v_new, cos, sin, sink_t;
  int64_t num_pages = 0, max_pages = 0;

  void build(uint64_t seed = 1) {
    q = Buf(dtype, {batch, seqlen_q, heads_q, d});
    q.random(seed);
    if (page_size > 0) {
      max_pages = capacity / page_size;
      num_pages = batch * max_pages + 3;
      kc = Buf(dtype, {num_pages, page_size, heads_kv, d}, kNaN);
      vc = Buf(dtype, {num_pages, page_size, heads_kv, dv}, kNaN);
      std::vector<int32_t> table(static_cast<size_t>(batch * max_pages));
      // Page of (b, s): reversed interleave, leaving pages num_pages-3.. unused.
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t s = 0; s < max_pages; ++s)
          table[b * max_pages + s] = static_cast<int32_t>((max_pages - 1 - s) * batch + b);
      page_table = ints(table, {batch, max_pages});
    } else {
      kc = Buf(dtype, {batch, capacity, heads_kv, d}, kNaN);
      vc = Buf(dtype, {batch, capacity, heads_kv, dv}, kNaN);
    }
    // Values at positions < seqlens[b]; NaN beyond (never read).
    std::mt19937_64 g(seed + 7);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < (use_seqlens ? seqlens[b] : capacity); ++t)
        for (int64_t h = 0; h < heads_kv; ++h) {
          for (int64_t c = 0; c < d; ++c) kc.set(kv_off(kc, b, t, h, c), u(g));
          for (int64_t c = 0; c < dv; ++c) vc.set(kv_off(vc, b, t, h, c), u(g));
        }
    if (!sinks.empty()) {
      sink_t = Buf(DType::kFloat32, {static_cast<int64_t>(sinks.size())});
      for (size_t h = 0; h < sinks.size(); ++h) sink_t.set(static_cast<int64_t>(h), sinks[h]);
    }
    o = Buf(dtype, {batch, seqlen_q, heads_q, dv}, 12345.0);
    lse = Buf(DType::kFloat32, {batch, heads_q, seqlen_q}, 12345.0);
    seqlens_t = ints(seqlens);
    if (seqlen_new > 0) {
      k_new = Buf(dtype, {batch, seqlen_new, heads_kv, d});
      v_new = Buf(dtype, {batch, seqlen_new, heads_kv, dv});
      k_new.random(seed + 11);
      v_new.random(seed + 13);
    }
    if (rotary_dim > 0) {
      const int64_t ro = capacity + seqlen_q;
      cos = Buf(DType::kFloat32, {ro, rotary_dim / 2});
      sin = Buf(DType::kFloat32, {ro, rotary_dim / 2});
      for (int64_t t = 0; t < ro; ++t)
        for (int64_t c = 0; c < rotary_dim / 2; ++c) {
          const double a = t * std::pow(10000.0, -2.0 * c / rotary_dim);
          cos.set(t * (rotary_dim / 2) + c, std::cos(a));
          sin.set(t * (rotary_dim / 2) + c, std::sin(a));
        }
    }
  }
  int64_t kv_off(const Buf& c, int64_t b, int64_t t, int64_t h, int64_t x) const {
    if (page_size > 0) {
      const int32_t page = reinterpret_cast<const int32_t*>(page_table.bytes.data())[b * max_pages + t / page_size];
      return c.off({page, t % page_size, h, x});
    }
    return c.off({b, t, h, x});
  }
  fl::KvCacheProblem problem() {
    fl::KvCacheProblem p;
    p.q = q.view();
    p.k_cache = kc.view();
    p.v_cache = vc.view();
    p.o = o.view();
    p.lse = lse.view();
    if (use_seqlens) p.cache_seqlens = seqlens_t.view();
    if (page_size > 0) p.page_table = page_table.view();
    if (seqlen_new > 0) {
      p.k_new = k_new.view();
      p.v_new = v_new.view();
    }
    if (rotary_dim > 0) {
      p.rotary_cos = cos.view();
      p.rotary_sin = sin.view();
      p.rotary_interleaved = interleaved;
    }
    if (!sinks.empty()) p.learnable_sink = sink_t.view();
    p.mask = mask;
    p.window_left = wl;
    p.window_right = wr;
    p.softcap = softcap;
    return p;
  }
};

fl::Request cpu_strict() { return {fl::Backend::kReferenceCpu, true}; }

/// Independent check: gather the cache (after the call) into a dense [batch, cap, hkv, d]
/// problem with seqused_k = seqlens + seqlen_new, apply rotary to q separately, and run forward().
void expect_matches_forward(Case& c, double tol) {
  const int64_t cap = c.capacity;
  Buf k(DType::kFloat64, {c.batch, cap, c.heads_kv, c.d}), v(DType::kFloat64, {c.batch, cap, c.heads_kv, c.dv});
  Buf q(DType::kFloat64, {c.batch, c.seqlen_q, c.heads_q, c.d});
  std::vector<int32_t> used;
  for (int64_t b = 0; b < c.batch; ++b) {
    const int64_t cached = c.use_seqlens ? c.seqlens[b] : cap;
    used.push_back(static_cast<int32_t>(cached + c.seqlen_new));
    for (int64_t t = 0; t < used.back(); ++t)
      for (int64_t h = 0; h < c.heads_kv; ++h) {
        for (int64_t x = 0; x < c.d; ++x) k.set(k.off({b, t, h, x}), c.kc.get(c.kv_off(c.kc, b, t, h, x)));
        for (int64_t x = 0; x < c.dv; ++x) v.set(v.off({b, t, h, x}), c.vc.get(c.kv_off(c.vc, b, t, h, x)));
      }
    const bool consecutive = c.mask != fl::MaskType::kNoMask || c.wl >= 0 || c.wr >= 0;
    for (int64_t i = 0; i < c.seqlen_q; ++i)
      for (int64_t h = 0; h < c.heads_q; ++h) {
        std::vector<double> x(static_cast<size_t>(c.d));
        for (int64_t j = 0; j < c.d; ++j) x[j] = c.q.get(c.q.off({b, i, h, j}));
        if (c.rotary_dim > 0) {
          const int64_t pos = cached + (consecutive ? i : 0), half = c.rotary_dim / 2;
          std::vector<double> y = x;
          for (int64_t j = 0; j < half; ++j) {
            const double cs = c.cos.get(pos * half + j), sn = c.sin.get(pos * half + j);
            const int64_t a = c.interleaved ? 2 * j : j, bb = c.interleaved ? 2 * j + 1 : j + half;
            y[a] = x[a] * cs - x[bb] * sn;
            y[bb] = x[a] * sn + x[bb] * cs;
          }
          x = y;
        }
        for (int64_t j = 0; j < c.d; ++j) q.set(q.off({b, i, h, j}), x[j]);
      }
  }
  Buf used_t = ints(used);
  Buf o(DType::kFloat64, {c.batch, c.seqlen_q, c.heads_q, c.dv}), lse(DType::kFloat32, {c.batch, c.heads_q, c.seqlen_q});
  fl::AttentionProblem p;
  p.q = q.view();
  p.k = k.view();
  p.v = v.view();
  p.o = o.view();
  p.lse = lse.view();
  p.seqused_k = used_t.view();
  if (!c.sinks.empty()) p.learnable_sink = c.sink_t.view();
  p.mask = c.mask == fl::MaskType::kNoMask ? fl::MaskType::kNoMask : fl::MaskType::kCausalBottomRight;
  p.window_left = c.wl;
  p.window_right = c.wr;
  p.softcap = c.softcap;
  p.softmax_scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  // NaN beyond seqused_k in the gathered copy is zero here; forward never reads it anyway.
  ASSERT_TRUE(fl::forward(p, cpu_strict()).ok());
  for (int64_t i = 0; i < o.numel(); ++i) {
    ASSERT_FALSE(std::isnan(c.o.get(i))) << i;
    ASSERT_NEAR(c.o.get(i), o.get(i), tol) << i;
  }
  for (int64_t i = 0; i < lse.numel(); ++i) {
    if (std::isinf(lse.get(i))) {
      EXPECT_TRUE(std::isinf(c.lse.get(i)) && c.lse.get(i) < 0) << i;
    } else {
      ASSERT_NEAR(c.lse.get(i), lse.get(i), 1e-5) << i;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reference values.

TEST(KvCacheReference, DenseMatchesForwardOverTheCachePrefix) {
  for (int64_t sq : {1, 2, 4}) {
    Case c;
    c.seqlen_q = sq;
    c.build(sq);
    ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
    EXPECT_EQ(fl::last_receipt().runtime_mode, "decode");
    EXPECT_EQ(fl::last_receipt().actual_backend, "reference_cpu");
    expect_matches_forward(c, 1e-6);
  }
}

TEST(KvCacheReference, CausalWindowSoftcapGqa) {
  Case c;
  c.seqlen_q = 4;
  c.heads_q = 6;
  c.heads_kv = 2;
  c.seqlens = {2, 17};
  c.mask = fl::MaskType::kCausalBottomRight;
  c.wl = 3;
  c.softcap = 5.0;
  c.build(3);
  ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
  expect_matches_forward(c, 1e-6);
  // Sequence 0 has 2 keys and 4 query rows: the first two rows see nothing.
  EXPECT_EQ(c.lse.get(c.lse.off({0, 0, 0})), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(c.o.get(c.o.off({0, 0, 0, 0})), 0.0);
}

TEST(KvCacheReference, PagedEqualsDenseForSeveralPageSizes) {
  for (int64_t ps : {1, 3, 8, 24}) {
    Case dense, paged;
    dense.seqlens = paged.seqlens = {0, 24};
    paged.page_size = ps;
    dense.build(5);
    paged.build(5);
    // Copy the dense contents into the pages.
    for (int64_t b = 0; b < dense.batch; ++b)
      for (int64_t t = 0; t < dense.capacity; ++t)
        for (int64_t h = 0; h < dense.heads_kv; ++h)
          for (int64_t x = 0; x < dense.d; ++x) {
            paged.kc.set(paged.kv_off(paged.kc, b, t, h, x), dense.kc.get(dense.kv_off(dense.kc, b, t, h, x)));
            paged.vc.set(paged.kv_off(paged.vc, b, t, h, x), dense.vc.get(dense.kv_off(dense.vc, b, t, h, x)));
          }
    ASSERT_TRUE(fl::forward_kvcache(dense.problem(), cpu_strict()).ok());
    ASSERT_TRUE(fl::forward_kvcache(paged.problem(), cpu_strict()).ok()) << ps;
    EXPECT_EQ(fl::last_receipt().runtime_mode, "paged_decode");
    for (int64_t i = 0; i < dense.o.numel(); ++i) ASSERT_EQ(dense.o.get(i), paged.o.get(i)) << ps;
    // Sequence 0 is empty: O = 0 and LSE = -inf, never NaN.
    for (int64_t h = 0; h < dense.heads_q; ++h) {
      EXPECT_EQ(paged.lse.get(paged.lse.off({0, h, 0})), -std::numeric_limits<double>::infinity());
      EXPECT_EQ(paged.o.get(paged.o.off({0, 0, h, 0})), 0.0);
    }
  }
}

TEST(KvCacheReference, WithoutCacheSeqlensTheWholeCacheIsUsed) {
  Case c;
  c.use_seqlens = false;
  c.build(9);
  ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
  expect_matches_forward(c, 1e-6);
}

TEST(KvCacheReference, CacheBatchIdxSelectsCacheRows) {
  Case c;
  c.build(4);
  // A cache of 3 rows; sequence 0 -> row 2, sequence 1 -> row 0. Row 1 is NaN (never read).
  Buf big(c.dtype, {3, c.capacity, c.heads_kv, c.d}, kNaN), bigv(c.dtype, {3, c.capacity, c.heads_kv, c.dv}, kNaN);
  const int64_t row_elems = c.capacity * c.heads_kv * c.d;
  for (int64_t i = 0; i < row_elems; ++i) {
    big.set(2 * row_elems + i, c.kc.get(i));
    big.set(i, c.kc.get(row_elems + i));
    bigv.set(2 * row_elems + i, c.vc.get(i));
    bigv.set(i, c.vc.get(row_elems + i));
  }
  Buf idx = ints({2, 0});
  fl::KvCacheProblem p = c.problem();
  Buf o2(c.dtype, {c.batch, c.seqlen_q, c.heads_q, c.dv});
  ASSERT_TRUE(fl::forward_kvcache(p, cpu_strict()).ok());
  p.k_cache = big.view();
  p.v_cache = bigv.view();
  p.cache_batch_idx = idx.view();
  p.o = o2.view();
  ASSERT_TRUE(fl::forward_kvcache(p, cpu_strict()).ok());
  for (int64_t i = 0; i < o2.numel(); ++i) ASSERT_EQ(o2.get(i), c.o.get(i));
}

TEST(KvCacheReference, AppendWithRotaryBothModesAcrossAPageBoundary) {
  for (bool interleaved : {true, false}) {
    for (int64_t ps : {0, 4}) {
      Case c;
      c.page_size = ps;
      c.seqlens = {3, 6};  // with page_size 4, the appends cross into the next page
      c.seqlen_new = 3;
      c.seqlen_q = 2;
      c.rotary_dim = 8;  // < head_dim 16
      c.interleaved = interleaved;
      c.mask = fl::MaskType::kCausalBottomRight;
      c.build(21);
      Buf k_before = c.kc;
      ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
      EXPECT_EQ(fl::last_receipt().runtime_mode, "append_decode");
      // The appended keys are the rotated k_new rows; v_new rows land as they are.
      for (int64_t b = 0; b < c.batch; ++b)
        for (int64_t j = 0; j < c.seqlen_new; ++j)
          for (int64_t h = 0; h < c.heads_kv; ++h) {
            const int64_t pos = c.seqlens[b] + j, half = c.rotary_dim / 2;
            for (int64_t x = 0; x < c.d; ++x) {
              double want = c.k_new.get(c.k_new.off({b, j, h, x}));
              if (x < c.rotary_dim) {
                const int64_t pair = interleaved ? x / 2 : x % half;
                const bool first = interleaved ? x % 2 == 0 : x < half;
                const int64_t other = interleaved ? (first ? x + 1 : x - 1) : (first ? x + half : x - half);
                const double cs = c.cos.get(pos * half + pair), sn = c.sin.get(pos * half + pair);
                const double a = c.k_new.get(c.k_new.off({b, j, h, first ? x : other}));
                const double bb = c.k_new.get(c.k_new.off({b, j, h, first ? other : x}));
                want = first ? a * cs - bb * sn : a * sn + bb * cs;
              }
              ASSERT_NEAR(c.kc.get(c.kv_off(c.kc, b, pos, h, x)), want, 1e-6);
            }
            for (int64_t x = 0; x < c.dv; ++x)
              ASSERT_EQ(c.vc.get(c.kv_off(c.vc, b, pos, h, x)), c.v_new.get(c.v_new.off({b, j, h, x})));
          }
      // Nothing else of the cache changed (NaN bit patterns included).
      int64_t changed = 0;
      for (size_t i = 0; i < c.kc.bytes.size(); ++i) changed += c.kc.bytes[i] != k_before.bytes[i];
      EXPECT_LE(changed, c.batch * c.seqlen_new * c.heads_kv * c.d * 4);
      expect_matches_forward(c, 1e-6);
    }
  }
}

TEST(KvCacheReference, AppendRoundsToTheCacheDtype) {
  Case c;
  c.dtype = DType::kBFloat16;
  c.seqlen_new = 2;
  c.build(8);
  ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
  const double stored = c.kc.get(c.kv_off(c.kc, 1, c.seqlens[1], 0, 0));
  EXPECT_EQ(stored, fl::numeric::round_to(DType::kBFloat16, c.k_new.get(c.k_new.off({1, 0, 0, 0}))));
  expect_matches_forward(c, 1e-2);
}

TEST(KvCacheReference, EmptyCacheWithoutNewKeysWritesZeroAndMinusInf) {
  Case c;
  c.seqlens = {0, 0};
  c.build(2);
  ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
  for (int64_t i = 0; i < c.o.numel(); ++i) EXPECT_EQ(c.o.get(i), 0.0);
  for (int64_t i = 0; i < c.lse.numel(); ++i) EXPECT_EQ(c.lse.get(i), -std::numeric_limits<double>::infinity());
}

// Attention sinks: the KV-cache reference with learnable_sink equals forward() with the same sinks
// over the gathered cache (dense, paged, GQA with causal window and softcap, append with rotary),
// and rows without a visible key give O = 0, LSE = sink.
TEST(KvCacheReference, SinksMatchForwardOverTheCachePrefix) {
  for (int variant = 0; variant < 4; ++variant) {
    Case c;
    c.seqlen_q = 3;
    c.sinks = {0.5f, -1.25f, 2.0f, 3.5f};
    if (variant == 1) c.page_size = 4;
    if (variant == 2) {
      c.heads_q = 6;
      c.heads_kv = 2;
      c.sinks = {0.5f, -1.25f, 2.0f, 3.5f, 0.0f, 1.0f};
      c.seqlens = {1, 17};  // sequence 0: 1 key for 3 rows, the first two rows see nothing
      c.mask = fl::MaskType::kCausalBottomRight;
      c.wl = 3;
      c.softcap = 1.5;  // below most sinks: a capped sink would show
    }
    if (variant == 3) {
      c.page_size = 4;
      c.seqlens = {3, 6};
      c.seqlen_new = 2;
      c.rotary_dim = 8;
      c.mask = fl::MaskType::kCausalBottomRight;
    }
    SCOPED_TRACE("variant " + std::to_string(variant));
    c.build(40 + variant);
    fl::ProblemInfo info;
    ASSERT_TRUE(fl::validate_kvcache(c.problem(), &info).ok());
    EXPECT_TRUE(info.has_sink);
    ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
    expect_matches_forward(c, 1e-6);
    if (variant == 2) {
      for (int64_t h = 0; h < c.heads_q; ++h) {
        for (int64_t i = 0; i < 2; ++i) {
          EXPECT_EQ(c.lse.get(c.lse.off({0, h, i})), static_cast<double>(c.sinks[h]));
          for (int64_t x = 0; x < c.dv; ++x) EXPECT_EQ(c.o.get(c.o.off({0, i, h, x})), 0.0);
        }
      }
    }
  }
}

TEST(KvCacheReference, EmptyCacheWithSinksWritesZeroAndTheSink) {
  Case c;
  c.seqlens = {0, 0};
  c.sinks = {0.25f, -3.0f, 1.5f, 7.0f};
  c.build(2);
  ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
  for (int64_t i = 0; i < c.o.numel(); ++i) EXPECT_EQ(c.o.get(i), 0.0);
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t h = 0; h < c.heads_q; ++h)
      EXPECT_EQ(c.lse.get(c.lse.off({b, h, 0})), static_cast<double>(c.sinks[h]));
}

// ---------------------------------------------------------------------------------------------
// Validation: stable codes, nothing written.

namespace {
struct Bad {
  const char* what;
  ErrorCode code;
  void (*mutate)(Case&, fl::KvCacheProblem&);
};

// Buffers a mutation points views at (kept alive for the call).
Buf g_tmp, g_tmp2;
}  // namespace

TEST(KvCacheValidation, CodesAndNothingWritten) {
  const Bad cases[] = {
      {"page entry out of range", ErrorCode::kPageTableInvalid,
       [](Case& c, fl::KvCacheProblem&) {
         reinterpret_cast<int32_t*>(c.page_table.bytes.data())[1] = static_cast<int32_t>(c.num_pages);
       }},
      {"negative page entry", ErrorCode::kPageTableInvalid,
       [](Case& c, fl::KvCacheProblem&) { reinterpret_cast<int32_t*>(c.page_table.bytes.data())[0] = -1; }},
      {"cache_seqlens negative", ErrorCode::kCacheSeqlensInvalid,
       [](Case& c, fl::KvCacheProblem&) { reinterpret_cast<int32_t*>(c.seqlens_t.bytes.data())[0] = -1; }},
      {"cache_seqlens above capacity", ErrorCode::kCacheSeqlensInvalid,
       [](Case& c, fl::KvCacheProblem&) { reinterpret_cast<int32_t*>(c.seqlens_t.bytes.data())[1] = 25; }},
      {"append overflows", ErrorCode::kCacheOverflow,
       [](Case& c, fl::KvCacheProblem&) { reinterpret_cast<int32_t*>(c.seqlens_t.bytes.data())[1] = 23; }},
      {"rotary shapes differ", ErrorCode::kRotaryInvalid,
       [](Case&, fl::KvCacheProblem& p) { p.rotary_sin.shape[1] = 2; }},
      {"rotary_dim above head_dim", ErrorCode::kRotaryInvalid,
       [](Case&, fl::KvCacheProblem& p) {
         g_tmp = Buf(DType::kFloat32, {40, 9});
         g_tmp2 = Buf(DType::kFloat32, {40, 9});
         p.rotary_cos = g_tmp.view();
         p.rotary_sin = g_tmp2.view();
       }},
      {"seqlen_ro too short", ErrorCode::kRotaryInvalid,
       [](Case&, fl::KvCacheProblem& p) { p.rotary_cos.shape[0] = p.rotary_sin.shape[0] = 8; }},
      {"rotary without k_new", ErrorCode::kInvalidArgument,
       [](Case&, fl::KvCacheProblem& p) { p.k_new = p.v_new = TensorView{}; }},
      {"k_new without v_new", ErrorCode::kInvalidArgument,
       [](Case&, fl::KvCacheProblem& p) { p.v_new = TensorView{}; }},
      {"k_new without cache_seqlens", ErrorCode::kInvalidArgument,
       [](Case&, fl::KvCacheProblem& p) { p.cache_seqlens = TensorView{}; }},
      {"cache_batch_idx with page_table", ErrorCode::kInvalidArgument,
       [](Case& c, fl::KvCacheProblem& p) { p.cache_batch_idx = c.seqlens_t.view(); }},
      {"top-left causal", ErrorCode::kInvalidArgument,
       [](Case&, fl::KvCacheProblem& p) { p.mask = fl::MaskType::kCausal; }},
      {"negative num_splits", ErrorCode::kInvalidArgument,
       [](Case&, fl::KvCacheProblem& p) { p.num_splits = -1; }},
      {"page_table int64 dtype", ErrorCode::kPageTableInvalid,
       [](Case&, fl::KvCacheProblem& p) { p.page_table.dtype = DType::kFloat32; }},
      {"page_table wrong batch", ErrorCode::kPageTableInvalid,
       [](Case&, fl::KvCacheProblem& p) { p.page_table.shape[0] = 1; }},
      {"append shares a page", ErrorCode::kPageTableInvalid,
       [](Case& c, fl::KvCacheProblem&) {
         // Sequence 1 appends at positions 11 and 12 (slots 2 and 3 of page_size 4); make its
         // slot 2 the page sequence 0 reads at slot 0.
         auto* t = reinterpret_cast<int32_t*>(c.page_table.bytes.data());
         t[1 * c.max_pages + 2] = t[0];
       }},
      {"heads not divisible", ErrorCode::kHeadsNotDivisible,
       [](Case&, fl::KvCacheProblem& p) { p.q.shape[2] = 3; p.o.shape[2] = 3; p.lse.shape[1] = 3; }},
      {"k_new heads", ErrorCode::kShapeMismatch, [](Case&, fl::KvCacheProblem& p) { p.k_new.shape[2] = 1; }},
      {"lse dtype", ErrorCode::kUnsupportedDType,
       [](Case&, fl::KvCacheProblem& p) { p.lse.dtype = DType::kFloat16; }},
  };
  for (const Bad& bad : cases) {
    Case c;
    c.page_size = 4;
    c.seqlen_new = 2;
    c.rotary_dim = 8;
    c.build(3);
    fl::KvCacheProblem p = c.problem();
    bad.mutate(c, p);
    const Buf k0 = c.kc, v0 = c.vc, o0 = c.o, l0 = c.lse;
    const fl::Status st = fl::forward_kvcache(p, cpu_strict());
    EXPECT_EQ(st.code(), bad.code) << bad.what << ": " << st.to_string();
    EXPECT_FALSE(st.message().empty()) << bad.what;
    EXPECT_EQ(c.kc.bytes, k0.bytes) << bad.what;
    EXPECT_EQ(c.vc.bytes, v0.bytes) << bad.what;
    EXPECT_EQ(c.o.bytes, o0.bytes) << bad.what;
    EXPECT_EQ(c.lse.bytes, l0.bytes) << bad.what;
    EXPECT_EQ(fl::last_receipt().status, fl::error_code_name(bad.code)) << bad.what;
    EXPECT_EQ(fl::last_receipt().runtime_mode, fl::kvcache_runtime_mode(p)) << bad.what;
  }
}

// The runtime_mode names: appending wins over a page table; the problem overload and the
// (append, paged) overload agree.
TEST(KvCacheValidation, RuntimeModeNames) {
  EXPECT_STREQ(fl::kvcache_runtime_mode(false, false), "decode");
  EXPECT_STREQ(fl::kvcache_runtime_mode(false, true), "paged_decode");
  EXPECT_STREQ(fl::kvcache_runtime_mode(true, false), "append_decode");
  EXPECT_STREQ(fl::kvcache_runtime_mode(true, true), "append_decode");
  const fl::KvCacheProblem none;
  EXPECT_STREQ(fl::kvcache_runtime_mode(none), "decode");
}

// learnable_sink: float32 [heads_q], stride 1, on q's device; each fault its code, nothing
// written.
TEST(KvCacheValidation, SinkCodesAndNothingWritten) {
  struct SinkBad {
    const char* what;
    ErrorCode code;
    const char* needle;
    void (*mutate)(TensorView&);
  };
  const SinkBad cases[] = {
      {"null data", ErrorCode::kNullPointer, "learnable_sink: data pointer is null",
       [](TensorView& t) { t.data = nullptr; }},
      {"on a CUDA device", ErrorCode::kDeviceMismatch, "learnable_sink.device = cuda:0",
       [](TensorView& t) { t.device = fl::Device::cuda(0); }},
      {"float16", ErrorCode::kUnsupportedDType, "learnable_sink.dtype = float16",
       [](TensorView& t) { t.dtype = DType::kFloat16; }},
      {"float64", ErrorCode::kUnsupportedDType, "learnable_sink.dtype = float64",
       [](TensorView& t) { t.dtype = DType::kFloat64; }},
      {"rank 2", ErrorCode::kRankMismatch, "learnable_sink.rank = 2",
       [](TensorView& t) { t = TensorView::contiguous(t.data, DType::kFloat32, {2, 2}, fl::Device{}); }},
      {"heads_kv entries", ErrorCode::kShapeMismatch, "learnable_sink.shape[0] = 2",
       [](TensorView& t) { t.shape[0] = 2; }},
      {"negative length", ErrorCode::kShapeMismatch, "learnable_sink.shape[0] = -4",
       [](TensorView& t) { t.shape[0] = -4; }},
      {"stride 2", ErrorCode::kNotContiguous, "learnable_sink.stride[0] = 2",
       [](TensorView& t) { t.stride[0] = 2; }},
  };
  for (const SinkBad& bad : cases) {
    Case c;
    c.sinks = {0.5f, 1.0f, 1.5f, 2.0f};
    c.seqlen_new = 1;
    c.build(5);
    fl::KvCacheProblem p = c.problem();
    bad.mutate(p.learnable_sink);
    const Buf k0 = c.kc, v0 = c.vc, o0 = c.o, l0 = c.lse;
    const fl::Status st = fl::forward_kvcache(p, cpu_strict());
    EXPECT_EQ(st.code(), bad.code) << bad.what << ": " << st.to_string();
    EXPECT_NE(st.message().find(bad.needle), std::string::npos) << bad.what << ": " << st.to_string();
    EXPECT_EQ(c.kc.bytes, k0.bytes) << bad.what;
    EXPECT_EQ(c.vc.bytes, v0.bytes) << bad.what;
    EXPECT_EQ(c.o.bytes, o0.bytes) << bad.what;
    EXPECT_EQ(c.lse.bytes, l0.bytes) << bad.what;
  }
  Case ok;
  ok.sinks = {0.5f, 1.0f, 1.5f, 2.0f};
  ok.build(5);
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate_kvcache(ok.problem(), &info).ok());
  EXPECT_TRUE(info.has_sink);
  EXPECT_FALSE(info.has_dsink);
  Case none;
  none.build(5);
  ASSERT_TRUE(fl::validate_kvcache(none.problem(), &info).ok());
  EXPECT_FALSE(info.has_sink);
}

TEST(KvCacheValidation, DenseSpecifics) {
  Case c;
  c.seqlen_new = 1;
  c.build(1);
  Buf idx = ints({1, 1});
  fl::KvCacheProblem p = c.problem();
  p.cache_batch_idx = idx.view();
  fl::Status st = fl::validate_kvcache(p, nullptr);
  EXPECT_EQ(st.code(), ErrorCode::kCacheBatchIdxInvalid) << st.to_string();  // repeated, appending
  Buf idx2 = ints({0, 2});
  p.cache_batch_idx = idx2.view();
  st = fl::validate_kvcache(p, nullptr);
  EXPECT_EQ(st.code(), ErrorCode::kCacheBatchIdxInvalid) << st.to_string();  // out of range
  p.cache_batch_idx = TensorView{};
  p.k_cache.shape[0] = p.v_cache.shape[0] = 1;
  st = fl::validate_kvcache(p, nullptr);
  EXPECT_EQ(st.code(), ErrorCode::kShapeMismatch) << st.to_string();
  // Repeated rows are fine when nothing is appended.
  Case r;
  r.build(1);
  fl::KvCacheProblem q = r.problem();
  Buf same = ints({1, 1});
  q.cache_batch_idx = same.view();
  EXPECT_TRUE(fl::validate_kvcache(q, nullptr).ok());
}

TEST(KvCacheValidation, InfoDescribesTheCall) {
  Case c;
  c.page_size = 8;
  c.seqlen_new = 2;
  c.rotary_dim = 16;
  c.build(1);
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate_kvcache(c.problem(), &info).ok());
  EXPECT_TRUE(info.is_decode());
  EXPECT_EQ(info.kv_layout, fl::KvLayout::kPaged);
  EXPECT_EQ(info.page_size, 8);
  EXPECT_EQ(info.max_pages_per_seq, 3);
  EXPECT_EQ(info.cache_capacity, 24);
  EXPECT_EQ(info.seqlen_new, 2);
  EXPECT_EQ(info.rotary_dim, 16);
  EXPECT_TRUE(info.has_append);
  // The forward validation refuses the decode direction.
  EXPECT_EQ(fl::validate(fl::AttentionProblem{}, fl::Direction::kDecode, nullptr).code(),
            ErrorCode::kInvalidArgument);
}

// A small fuzz: random single-field corruptions of a valid paged append call never crash, always
// give a validation code, and never write.
TEST(KvCacheValidation, FuzzNeverWritesOnError) {
  std::mt19937_64 g(1234);
  for (int iter = 0; iter < 300; ++iter) {
    Case c;
    c.page_size = 1 + static_cast<int64_t>(g() % 6);
    c.capacity = c.page_size * 4;
    c.seqlens = {static_cast<int32_t>(g() % 3), static_cast<int32_t>(g() % 3)};
    c.seqlen_new = 1;
    c.rotary_dim = 8;
    c.build(iter);
    fl::KvCacheProblem p = c.problem();
    auto* table = reinterpret_cast<int32_t*>(c.page_table.bytes.data());
    auto* lens = reinterpret_cast<int32_t*>(c.seqlens_t.bytes.data());
    switch (g() % 6) {
      case 0: table[g() % (c.batch * c.max_pages)] = static_cast<int32_t>(g() % 64) - 8; break;
      case 1: lens[g() % 2] = static_cast<int32_t>(g() % 40) - 10; break;
      case 2: p.rotary_cos.shape[0] = static_cast<int64_t>(g() % 8); break;
      case 3: p.k_new.shape[1] = static_cast<int64_t>(g() % 30); p.v_new.shape[1] = p.k_new.shape[1]; break;
      case 4: p.window_left = static_cast<int64_t>(g() % 5) - 3; break;
      default: p.page_table.shape[1] = static_cast<int64_t>(g() % 6); break;
    }
    const Buf k0 = c.kc, o0 = c.o;
    const fl::Status st = fl::forward_kvcache(p, cpu_strict());
    if (st.ok()) continue;
    const int code = static_cast<int>(st.code());
    EXPECT_TRUE(code >= 100 && code <= 121) << st.to_string();
    EXPECT_EQ(c.kc.bytes, k0.bytes) << st.to_string();
    EXPECT_EQ(c.o.bytes, o0.bytes) << st.to_string();
  }
}

// ---------------------------------------------------------------------------------------------
// Dispatcher truth.

TEST(KvCacheDispatch, AutoRunsReferenceCpuAndListsTheSkipped) {
  Case c;
  c.build(1);
  ASSERT_TRUE(fl::forward_kvcache(c.problem()).ok());
  const fl::Receipt& r = fl::last_receipt();
  EXPECT_EQ(r.actual_backend, "reference_cpu");
  EXPECT_EQ(r.runtime_mode, "decode");
  EXPECT_EQ(r.surface, "decode");  // the catalog's id
  EXPECT_EQ(r.variant, "reference_cpu_f64acc");
  ASSERT_EQ(r.skipped.size(), 2u);
  EXPECT_EQ(r.skipped[0].backend, "sm90");
  EXPECT_EQ(r.skipped[1].backend, "reference_cuda");
  EXPECT_FALSE(r.fallback_reason.empty());
}

TEST(KvCacheDispatch, StrictRequestsFailClosedWithTags) {
  Case c;
  c.build(1);
  for (fl::Backend b : {fl::Backend::kSm90, fl::Backend::kReferenceCuda, fl::Backend::kSm100,
                        fl::Backend::kCudnn}) {
    const Buf o0 = c.o;
    const fl::Status st = fl::forward_kvcache(c.problem(), {b, true});
    EXPECT_EQ(st.code(), ErrorCode::kBackendInapplicable) << fl::backend_name(b);
    EXPECT_FALSE(st.reason_tag().empty());
    EXPECT_EQ(st.reason_tag().rfind(std::string(fl::backend_name(b)) + ".", 0), 0u) << st.reason_tag();
    EXPECT_EQ(fl::last_receipt().error_reason, st.reason_tag());
    EXPECT_EQ(fl::last_receipt().actual_backend, "");
    EXPECT_EQ(c.o.bytes, o0.bytes);
  }
}

namespace {
/// The first failing sm90 rule of a decode problem, judged without the device rows.
std::string sm90_tag_without_device(const fl::ProblemInfo& info_in) {
  fl::ProblemInfo info = info_in;
  info.device = fl::Device::cuda(0);
  info.dtype = DType::kBFloat16;
  const fl::DeviceInfo dev;
  const fl::detail::RuleContext ctx{info, dev};
  const fl::detail::Rule* r = fl::detail::first_failing_rule(fl::Backend::kSm90, ctx, true);
  return r ? r->tag : "";
}
}  // namespace

/// True when this build compiled the sm90 kernels of `head_dim` (FLASHLANE_SM90_HEAD_DIMS).
bool sm90_head_dim_built(int64_t head_dim) {
  const std::string list = std::string(",") + FLASHLANE_TEST_SM90_HEAD_DIMS + ",";
  return list.find("," + std::to_string(head_dim) + ",") != std::string::npos;
}

TEST(KvCacheDispatch, Sm90DecodeRowsNameTheReason) {
  Case c;
  c.page_size = 8;
  c.build(1);
  fl::ProblemInfo info;
  ASSERT_TRUE(fl::validate_kvcache(c.problem(), &info).ok());
#if FLASHLANE_TEST_HAS_SM90
  // head_dim 16 has no decode kernel.
  EXPECT_EQ(sm90_tag_without_device(info), "sm90.decode_head_dim_unsupported");
  info.head_dim = info.head_dim_v = 128;
  if (sm90_head_dim_built(128)) {
    // Any page size and rotary dim: the paged gather moves single key rows.
    EXPECT_EQ(sm90_tag_without_device(info), "");
    info.rotary_dim = 8;
    EXPECT_EQ(sm90_tag_without_device(info), "");
    info.batch = 70000;  // rides grid dimension z
    EXPECT_EQ(sm90_tag_without_device(info), "sm90.decode_grid_too_large");
    info.batch = 2;
  }
  info.head_dim_v = 64;
  EXPECT_EQ(sm90_tag_without_device(info), "sm90.decode_head_dim_unsupported");
  // A forward problem is not touched by the decode rows.
  info.direction = fl::Direction::kForward;
  info.kv_layout = fl::KvLayout::kDense;
  info.rotary_dim = 0;
  info.head_dim = info.head_dim_v = 128;
  EXPECT_EQ(sm90_tag_without_device(info), sm90_head_dim_built(128) ? "" : "sm90.head_dim_unsupported");
#else
  EXPECT_EQ(sm90_tag_without_device(info), "sm90.not_compiled");
#endif
}

// ---------------------------------------------------------------------------------------------
// Serving plan.

TEST(ServingPlan, RefusesAtConstructionWithTheTag) {
  fl::ServingConfig cfg;
  cfg.prefill_backend = fl::Backend::kSm90;
  cfg.decode_backend = fl::Backend::kSm90;
  cfg.kv_layout = fl::KvLayout::kPaged;
  cfg.page_size = 8;
  cfg.head_dim = 96;  // a forward head dim without a decode kernel
  fl::ServingPlan plan;
  fl::Status st = fl::ServingPlan::create(cfg, &plan);
  EXPECT_EQ(st.code(), ErrorCode::kBackendInapplicable) << st.to_string();
#if FLASHLANE_TEST_HAS_SM90
  EXPECT_EQ(st.reason_tag(), "sm90.decode_head_dim_unsupported") << st.to_string();
  cfg.head_dim = 128;
  st = fl::ServingPlan::create(cfg, &plan);
  if (sm90_head_dim_built(128)) {
    EXPECT_TRUE(st.ok()) << st.to_string();  // page_size 8: any page size is served
  } else {
    EXPECT_EQ(st.reason_tag(), "sm90.head_dim_unsupported") << st.to_string();
  }
  cfg.head_dim = 96;
#else
  EXPECT_EQ(st.reason_tag(), "sm90.not_compiled") << st.to_string();
#endif
  // reference_cuda has decode code: judged without the device rows, the plan holds.
  cfg.decode_backend = fl::Backend::kReferenceCuda;
  st = fl::ServingPlan::create(cfg, &plan);
#if FLASHLANE_TEST_HAS_SM90
  EXPECT_TRUE(st.ok()) << st.to_string();
#endif
  // A prefill backend every build accepts, so that the decode backend's own tag is the answer.
  cfg.prefill_backend = fl::Backend::kReferenceCpu;
  cfg.decode_backend = fl::Backend::kSm100;
  EXPECT_EQ(fl::ServingPlan::create(cfg, &plan).reason_tag(), "sm100.not_implemented");
}

TEST(ServingPlan, ReferenceCpuPlanIsAcceptedAndDescribed) {
  fl::ServingConfig cfg;
  cfg.prefill_backend = fl::Backend::kReferenceCpu;
  cfg.decode_backend = fl::Backend::kReferenceCpu;
  cfg.kv_layout = fl::KvLayout::kPaged;
  cfg.page_size = 8;
  cfg.heads_q = 32;
  cfg.heads_kv = 4;
  cfg.window_left = 128;
  cfg.softcap = 30.0;
  cfg.rotary_dim = 64;
  fl::ServingPlan plan;
  ASSERT_TRUE(fl::ServingPlan::create(cfg, &plan).ok());
  EXPECT_EQ(plan.prefill_mode(), "varlen_fwd");
  EXPECT_EQ(plan.decode_mode(), "append_decode");
  const std::string j = plan.to_json();
  EXPECT_NE(j.find("\"decode_backend\":\"reference_cpu\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"page_size\":8"), std::string::npos) << j;
  // With the device rows the host backend still applies (its tensors live on the host).
  cfg.check_device = true;
  EXPECT_TRUE(fl::ServingPlan::create(cfg, &plan).ok());
}

TEST(ServingPlan, BadConfigurations) {
  fl::ServingConfig cfg;
  cfg.prefill_backend = fl::Backend::kReferenceCpu;
  cfg.decode_backend = fl::Backend::kReferenceCpu;
  fl::ServingPlan plan;
  fl::ServingConfig c = cfg;
  c.decode_backend = fl::Backend::kAuto;
  EXPECT_EQ(fl::ServingPlan::create(c, &plan).code(), ErrorCode::kInvalidArgument);
  c = cfg;
  c.page_size = 0;
  EXPECT_EQ(fl::ServingPlan::create(c, &plan).code(), ErrorCode::kPageTableInvalid);
  c = cfg;
  c.heads_q = 6;
  c.heads_kv = 4;
  EXPECT_EQ(fl::ServingPlan::create(c, &plan).code(), ErrorCode::kHeadsNotDivisible);
  c = cfg;
  c.head_dim = 100;
  EXPECT_EQ(fl::ServingPlan::create(c, &plan).code(), ErrorCode::kHeadDimInvalid);
  c = cfg;
  c.rotary_dim = 7;
  EXPECT_EQ(fl::ServingPlan::create(c, &plan).code(), ErrorCode::kRotaryInvalid);
  c = cfg;
  c.window_right = 4;  // causal allows only -1 or 0
  EXPECT_EQ(fl::ServingPlan::create(c, &plan).code(), ErrorCode::kWindowInvalid);
}

namespace {

/// The runtime_mode the receipt of one reference_cpu forward with sinks says: dense q/k/v
/// [1, 3, heads_q, d], or the same tokens packed (cu_seqlens [0, 3]) when varlen.
std::string sinks_forward_mode(bool varlen, int64_t heads_q, int64_t heads_kv, int64_t d) {
  const std::vector<int64_t> q_shape = varlen ? std::vector<int64_t>{3, heads_q, d}
                                              : std::vector<int64_t>{1, 3, heads_q, d};
  const std::vector<int64_t> kv_shape = varlen ? std::vector<int64_t>{3, heads_kv, d}
                                               : std::vector<int64_t>{1, 3, heads_kv, d};
  Buf q(DType::kFloat32, q_shape), k(DType::kFloat32, kv_shape), v(DType::kFloat32, kv_shape);
  Buf o(DType::kFloat32, q_shape), sinks(DType::kFloat32, {heads_q}, 0.5);
  Buf cu = ints({0, 3});
  q.random(1);
  k.random(2);
  v.random(3);
  fl::AttentionProblem p;
  p.q = q.view();
  p.k = k.view();
  p.v = v.view();
  p.o = o.view();
  p.learnable_sink = sinks.view();
  p.mask = fl::MaskType::kCausalBottomRight;
  if (varlen) {
    p.cu_seqlens_q = cu.view();
    p.cu_seqlens_k = cu.view();
  }
  const fl::Status st = fl::forward(p, cpu_strict());
  EXPECT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(fl::last_receipt().actual_backend, "reference_cpu");
  return fl::last_receipt().runtime_mode;
}

}  // namespace

// A plan with learnable_sink asks the table about calls with sinks and names the modes the
// receipts of such calls say: the forward's (sinks_varlen_fwd / sinks_fwd, checked against real
// reference_cpu calls) and the KV-cache call's (unchanged by sinks: append_decode, paged_decode).
TEST(ServingPlan, SinksPlanNamesTheModesTheCallsRecord) {
  fl::ServingConfig cfg;
  cfg.prefill_backend = fl::Backend::kReferenceCpu;
  cfg.decode_backend = fl::Backend::kReferenceCpu;
  cfg.kv_layout = fl::KvLayout::kPaged;
  cfg.page_size = 4;
  cfg.heads_q = 4;
  cfg.heads_kv = 2;
  cfg.head_dim = 16;
  cfg.dtype = DType::kFloat32;
  cfg.learnable_sink = true;
  fl::ServingPlan plan;
  fl::Status st = fl::ServingPlan::create(cfg, &plan);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_TRUE(plan.config().learnable_sink);
  EXPECT_EQ(plan.prefill_mode(), "sinks_varlen_fwd");
  EXPECT_EQ(plan.decode_mode(), "append_decode");
  EXPECT_EQ(plan.prefill_mode(), sinks_forward_mode(true, 4, 2, 16));
  const std::string j = plan.to_json();
  EXPECT_NE(j.find("\"learnable_sink\":true"), std::string::npos) << j;
  EXPECT_NE(j.find("\"prefill_mode\":\"sinks_varlen_fwd\""), std::string::npos) << j;

  // The decode call the plan describes, with sinks: a paged append of one token.
  Case c;
  c.page_size = 4;
  c.seqlen_new = 1;
  c.seqlens = {5, 11};
  c.mask = fl::MaskType::kCausalBottomRight;
  c.sinks = {0.5f, -1.25f, 2.0f, 3.5f};
  c.build(90);
  ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
  EXPECT_EQ(fl::last_receipt().runtime_mode, plan.decode_mode());

  cfg.prefill_varlen = false;
  cfg.append = false;
  ASSERT_TRUE(fl::ServingPlan::create(cfg, &plan).ok());
  EXPECT_EQ(plan.prefill_mode(), "sinks_fwd");
  EXPECT_EQ(plan.prefill_mode(), sinks_forward_mode(false, 4, 2, 16));
  EXPECT_EQ(plan.decode_mode(), "paged_decode");
  c.seqlen_new = 0;
  c.build(91);
  ASSERT_TRUE(fl::forward_kvcache(c.problem(), cpu_strict()).ok());
  EXPECT_EQ(fl::last_receipt().runtime_mode, plan.decode_mode());

  // Without sinks the same plan names the plain modes, and to_json says so.
  cfg.learnable_sink = false;
  ASSERT_TRUE(fl::ServingPlan::create(cfg, &plan).ok());
  EXPECT_EQ(plan.prefill_mode(), "fwd");
  EXPECT_NE(plan.to_json().find("\"learnable_sink\":false"), std::string::npos);
}

// Sinks do not lift a refusal: backends that execute nothing are refused with their own tag, and
// sm90 (which implements sinks in its forward and decode kernels) is judged as without sinks.
TEST(ServingPlan, SinksPlanRefusedWithTheBackendsTag) {
  fl::ServingConfig cfg;
  cfg.prefill_backend = fl::Backend::kCudnn;
  cfg.decode_backend = fl::Backend::kReferenceCpu;
  cfg.learnable_sink = true;
  fl::ServingPlan plan;
  fl::Status st = fl::ServingPlan::create(cfg, &plan);
  EXPECT_EQ(st.code(), ErrorCode::kBackendInapplicable) << st.to_string();
  EXPECT_EQ(st.reason_tag(), "cudnn.not_implemented");
  cfg.prefill_backend = fl::Backend::kReferenceCpu;
  cfg.decode_backend = fl::Backend::kSm100;
  EXPECT_EQ(fl::ServingPlan::create(cfg, &plan).reason_tag(), "sm100.not_implemented");

  cfg.prefill_backend = fl::Backend::kSm90;
  cfg.decode_backend = fl::Backend::kSm90;
  st = fl::ServingPlan::create(cfg, &plan);
  fl::ServingConfig plain = cfg;
  plain.learnable_sink = false;
  fl::ServingPlan plain_plan;
  const fl::Status plain_st = fl::ServingPlan::create(plain, &plain_plan);
  EXPECT_EQ(st.code(), plain_st.code()) << st.to_string();
  EXPECT_EQ(st.reason_tag(), plain_st.reason_tag()) << st.to_string();
#if !FLASHLANE_TEST_HAS_SM90
  EXPECT_EQ(st.reason_tag(), "sm90.not_compiled") << st.to_string();
#endif
}
