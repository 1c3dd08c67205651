// decode_test_util.h: KV-cache (decode) cases for the GPU tests (header-only), shared by
// test_sm90_decode.cpp and test_reference_cuda_kvcache.cpp.
//
//   DecodeSpec      one case as a table row: dtype, heads, head dim, per-sequence cache lengths,
//                   dense / cache_batch_idx / paged layout, append, rotary, mask, window,
//                   softcap, LSE, num_splits.
//   HostDecode      the host buffers of the call, built from a spec:
//                     q, k_new, v_new, and the cache positions below cache_seqlens[b]: seeded
//                     normal(0, 1) values rounded to the dtype (bench::make_inputs, the
//                     project's generator);
//                     every other cache element is NaN: positions at or beyond cache_seqlens[b]
//                     (the append writes some of them before any read), dense rows no
//                     cache_batch_idx entry names, pages no used page_table entry names (the
//                     page table is a shuffled permutation of the pages; entries past a
//                     sequence's last used page name NaN pages too);
//                     o all bytes 0xff (NaN), lse the same;
//                     rotary_cos / rotary_sin: RoPE angles pos * 10000^(-2c / rotary_dim);
//                     learnable_sink float32 [heads_q]: the spec's values (when given).
//   DeviceDecode    device copies of every buffer and the KvCacheProblem over them.
//   Reference       what the call must produce, on host copies:
//                     ref64    reference_cpu_kvcache with float64 O and LSE outputs (the append
//                              stores in the cache dtype, as the call's; then float64 attention);
//                     ref_lowp per sequence, the post-append K/V gathered into a dense batch-1
//                              AttentionProblem (same mask, window, softcap and scale: the
//                              bottom-right alignment of kvcache.h is problem.h's for kNoMask
//                              windows and kCausalBottomRight), q rotated in float64 and rounded
//                              to the dtype as a kernel does, reference_cpu_forward
//                              ReferenceNumerics::kLowPrecision (sinks passed through);
//                     the cache after the reference's append.
//   check_outputs_fa_rule / check_cache / check_empty_sequences: the assertions.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "core/numeric.h"
#include "dispatch/backends.h"
#include "flashlane/flashlane.h"

namespace flashlane::test_support {

inline constexpr double kDecodeNaN = std::numeric_limits<double>::quiet_NaN();

/// One KV-cache case. batch = cache_seqlens.size().
struct DecodeSpec {
  DType dtype = DType::kBFloat16;
  int64_t heads_q = 8, heads_kv = 8, head_dim = 128;
  int64_t seqlen_q = 1;
  std::vector<int32_t> cache_seqlens = {64};  // keys in the cache before the call
  int64_t capacity = 0;     // keys one sequence can hold; 0: max(cache_seqlens) + seqlen_new + 5
  int64_t page_size = 0;    // > 0: paged cache (capacity rounded up to whole pages)
  int64_t extra_pages = 3;  // paged: pages no entry names
  int64_t batch_cache = 0;  // dense: > 0 gives cache_batch_idx (a shuffled choice of rows)
  int64_t seqlen_new = 0;   // appended keys per sequence
  int64_t rotary_dim = 0;   // > 0: rotary on q and k_new
  bool rotary_interleaved = true;
  DType rotary_dtype = DType::kFloat32;
  MaskType mask = MaskType::kNoMask;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  bool with_lse = true;
  int64_t num_splits = 0;
  std::vector<float> learnable_sink;  // attention sinks, one per query head; empty: none
  /// Sequences 0 .. check_sequences - 1 are checked on the CPU (0: all). Only without append.
  int64_t check_sequences = 0;
  uint64_t seed = 1;

  int64_t batch() const { return static_cast<int64_t>(cache_seqlens.size()); }
  bool paged() const { return page_size > 0; }
  int64_t checked() const { return check_sequences > 0 ? std::min(check_sequences, batch()) : batch(); }
  std::string describe() const {
    std::ostringstream s;
    s << dtype_name(dtype) << " heads=" << heads_q << "/" << heads_kv << " d=" << head_dim
      << " seqlen_q=" << seqlen_q << " cache_seqlens=[";
    for (size_t i = 0; i < cache_seqlens.size(); ++i) {
      if (i == 8 && cache_seqlens.size() > 10) {
        s << ",... (" << cache_seqlens.size() << ")";
        break;
      }
      s << (i ? "," : "") << cache_seqlens[i];
    }
    s << "]";
    if (paged()) s << " paged(page_size=" << page_size << ")";
    if (batch_cache > 0) s << " cache_batch_idx(batch_cache=" << batch_cache << ")";
    if (seqlen_new > 0) s << " append=" << seqlen_new;
    if (rotary_dim > 0) {
      s << " rotary=" << rotary_dim << (rotary_interleaved ? "(interleaved," : "(neox,")
        << dtype_name(rotary_dtype) << ")";
    }
    s << " mask=" << mask_type_name(mask) << " window=(" << window_left << "," << window_right
      << ")";
    if (softcap > 0) s << " softcap=" << softcap;
    if (!learnable_sink.empty()) {
      s << " learnable_sink=[";
      for (size_t h = 0; h < learnable_sink.size(); ++h) s << (h ? "," : "") << learnable_sink[h];
      s << "]";
    }
    s << (with_lse ? " lse" : " no_lse") << " num_splits=" << num_splits << " seed=" << seed;
    return s.str();
  }
};

/// An owned host tensor (contiguous, row-major).
struct DecodeTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;

  DecodeTensor() = default;
  DecodeTensor(DType dt, std::vector<int64_t> s) : dtype(dt), shape(std::move(s)) {
    bytes.assign(static_cast<size_t>(numel() * dtype_size(dt)), 0);
  }
  bool defined() const { return !shape.empty(); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return shape.empty() ? 0 : n;
  }
  double get(int64_t i) const { return numeric::load(bytes.data(), dtype, i); }
  void set(int64_t i, double v) { numeric::store(bytes.data(), dtype, i, v); }
  int32_t* ints() { return reinterpret_cast<int32_t*>(bytes.data()); }
  const int32_t* ints() const { return reinterpret_cast<const int32_t*>(bytes.data()); }
  std::vector<double> values() const {
    std::vector<double> v(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) v[static_cast<size_t>(i)] = get(i);
    return v;
  }
  TensorView view(void* ptr, Device device) const {
    return defined() ? TensorView::contiguous(ptr, dtype, shape, device) : TensorView{};
  }
  TensorView view() { return view(bytes.data(), Device::cpu()); }
};

/// normal(0, 1) values rounded to `dtype` from the project's generator (bench::make_inputs),
/// `stream` selecting an independent sequence for the same seed.
inline std::vector<double> normal_values(int64_t n, DType dtype, uint64_t seed, uint64_t stream) {
  bench::ProblemSpec s;
  s.batch = 1;
  s.seqlen_q = n;
  s.seqlen_k = 0;
  s.heads_q = s.heads_kv = 1;
  s.head_dim = 1;
  s.dtype = dtype;
  s.seed = seed * 1000003ull + stream;
  return bench::make_inputs(s, false).q;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// The tensors of one call, in a fixed order (DeviceDecode mirrors it).
enum DecodeSlot : int {
  kSlotQ, kSlotKCache, kSlotVCache, kSlotO, kSlotLse, kSlotCacheSeqlens, kSlotCacheBatchIdx,
  kSlotPageTable, kSlotKNew, kSlotVNew, kSlotCos, kSlotSin, kSlotSink, kSlotCount
};

/// The KV-cache problem over the given buffers (nullptr / undefined slots stay undefined).
inline KvCacheProblem make_kvcache_problem(const DecodeSpec& spec,
                                           const std::array<DecodeTensor, kSlotCount>& t,
                                           const std::array<void*, kSlotCount>& ptr,
                                           Device device) {
  KvCacheProblem p;
  TensorView* views[kSlotCount] = {&p.q,          &p.k_cache,         &p.v_cache,
                                   &p.o,          &p.lse,             &p.cache_seqlens,
                                   &p.cache_batch_idx, &p.page_table, &p.k_new,
                                   &p.v_new,      &p.rotary_cos,      &p.rotary_sin,
                                   &p.learnable_sink};
  for (int i = 0; i < kSlotCount; ++i) {
    if (t[i].defined() && ptr[i] != nullptr) *views[i] = t[i].view(ptr[i], device);
  }
  p.rotary_interleaved = spec.rotary_interleaved;
  p.mask = spec.mask;
  p.window_left = spec.window_left;
  p.window_right = spec.window_right;
  p.softcap = spec.softcap;
  p.num_splits = spec.num_splits;
  return p;
}

/// Host buffers of one case (see the header comment for what each holds).
struct HostDecode {
  DecodeSpec spec;
  int64_t capacity = 0, max_pages = 0, num_pages = 0, seqlen_ro = 0;
  std::array<DecodeTensor, kSlotCount> t;

  explicit HostDecode(const DecodeSpec& s) : spec(s) { build(); }

  DecodeTensor& operator[](DecodeSlot i) { return t[i]; }
  const DecodeTensor& operator[](DecodeSlot i) const { return t[i]; }
  int64_t batch() const { return spec.batch(); }
  int64_t cached(int64_t b) const { return t[kSlotCacheSeqlens].ints()[b]; }
  int64_t seqlen_k(int64_t b) const { return cached(b) + spec.seqlen_new; }
  bool q_consecutive() const {
    return spec.mask != MaskType::kNoMask || spec.window_left >= 0 || spec.window_right >= 0;
  }

  /// Element offset of (position pos, kv head h, feature 0) of sequence b in a cache tensor.
  int64_t cache_offset(const DecodeTensor& c, int64_t b, int64_t pos, int64_t h) const {
    const int64_t hk = spec.heads_kv, f = c.shape[3];
    if (spec.paged()) {
      const int64_t page = t[kSlotPageTable].ints()[b * max_pages + pos / spec.page_size];
      return ((page * spec.page_size + pos % spec.page_size) * hk + h) * f;
    }
    const int64_t row = spec.batch_cache > 0 ? t[kSlotCacheBatchIdx].ints()[b] : b;
    return ((row * capacity + pos) * hk + h) * f;
  }

  /// Sets the per-sequence lengths (same shapes; for CUDA graph replays) and refills the cache
  /// with fresh values below them and NaN elsewhere; q, k_new, v_new are drawn again from `seed`.
  void refill(const std::vector<int32_t>& lens, uint64_t seed) {
    spec.cache_seqlens = lens;
    spec.seed = seed;
    fill();
  }

  KvCacheProblem host_problem() {
    std::array<void*, kSlotCount> ptr{};
    for (int i = 0; i < kSlotCount; ++i) ptr[i] = t[i].defined() ? t[i].bytes.data() : nullptr;
    return make_kvcache_problem(spec, t, ptr, Device::cpu());
  }

 private:
  void build() {
    const DecodeSpec& s = spec;
    const int64_t B = s.batch(), d = s.head_dim;
    int64_t need = 0;
    for (int32_t c : s.cache_seqlens) need = std::max<int64_t>(need, c + s.seqlen_new);
    capacity = s.capacity > 0 ? s.capacity : need + 5;
    if (s.paged()) {
      max_pages = ceil_div(capacity, s.page_size);
      capacity = max_pages * s.page_size;
      num_pages = B * max_pages + s.extra_pages;
    }
    const DType dt = s.dtype;
    t[kSlotQ] = DecodeTensor(dt, {B, s.seqlen_q, s.heads_q, d});
    if (s.paged()) {
      t[kSlotKCache] = DecodeTensor(dt, {num_pages, s.page_size, s.heads_kv, d});
      t[kSlotVCache] = DecodeTensor(dt, {num_pages, s.page_size, s.heads_kv, d});
      t[kSlotPageTable] = DecodeTensor(DType::kInt32, {B, max_pages});
    } else {
      const int64_t rows = s.batch_cache > 0 ? s.batch_cache : B;
      t[kSlotKCache] = DecodeTensor(dt, {rows, capacity, s.heads_kv, d});
      t[kSlotVCache] = DecodeTensor(dt, {rows, capacity, s.heads_kv, d});
      if (s.batch_cache > 0) t[kSlotCacheBatchIdx] = DecodeTensor(DType::kInt32, {B});
    }
    t[kSlotO] = DecodeTensor(dt, {B, s.seqlen_q, s.heads_q, d});
    if (s.with_lse) t[kSlotLse] = DecodeTensor(DType::kFloat32, {B, s.heads_q, s.seqlen_q});
    t[kSlotCacheSeqlens] = DecodeTensor(DType::kInt32, {B});
    if (!s.learnable_sink.empty()) {
      t[kSlotSink] = DecodeTensor(DType::kFloat32, {s.heads_q});
      for (int64_t hh = 0; hh < s.heads_q; ++hh) {
        t[kSlotSink].set(hh, s.learnable_sink[static_cast<size_t>(hh)]);
      }
    }
    if (s.seqlen_new > 0) {
      t[kSlotKNew] = DecodeTensor(dt, {B, s.seqlen_new, s.heads_kv, d});
      t[kSlotVNew] = DecodeTensor(dt, {B, s.seqlen_new, s.heads_kv, d});
    }
    if (s.rotary_dim > 0) {
      seqlen_ro = capacity + std::max(s.seqlen_q, s.seqlen_new);
      t[kSlotCos] = DecodeTensor(s.rotary_dtype, {seqlen_ro, s.rotary_dim / 2});
      t[kSlotSin] = DecodeTensor(s.rotary_dtype, {seqlen_ro, s.rotary_dim / 2});
      for (int64_t pos = 0; pos < seqlen_ro; ++pos) {
        for (int64_t c = 0; c < s.rotary_dim / 2; ++c) {
          const double a = pos * std::pow(10000.0, -2.0 * c / s.rotary_dim);
          t[kSlotCos].set(pos * (s.rotary_dim / 2) + c, std::cos(a));
          t[kSlotSin].set(pos * (s.rotary_dim / 2) + c, std::sin(a));
        }
      }
    }
    fill();
  }

  void fill() {
    const DecodeSpec& s = spec;
    const int64_t B = s.batch(), d = s.head_dim, hk = s.heads_kv;
    std::mt19937_64 g(s.seed * 7919 + 17);
    std::memcpy(t[kSlotCacheSeqlens].ints(), s.cache_seqlens.data(), B * sizeof(int32_t));
    if (s.paged()) {
      std::vector<int32_t> pages(static_cast<size_t>(num_pages));
      std::iota(pages.begin(), pages.end(), 0);
      std::shuffle(pages.begin(), pages.end(), g);
      // Entries past a sequence's last used page name pages nobody uses (NaN): a kernel that
      // follows them reads NaN, never memory outside the cache.
      std::memcpy(t[kSlotPageTable].ints(), pages.data(), B * max_pages * sizeof(int32_t));
    } else if (s.batch_cache > 0) {
      std::vector<int32_t> rows(static_cast<size_t>(s.batch_cache));
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), g);
      std::memcpy(t[kSlotCacheBatchIdx].ints(), rows.data(), B * sizeof(int32_t));
    }
    auto poison = [](DecodeTensor& x) {  // NaN in x's dtype, element by element as bytes
      const size_t es = static_cast<size_t>(dtype_size(x.dtype));
      unsigned char nan_bits[8];
      numeric::store(nan_bits, x.dtype, 0, kDecodeNaN);
      for (size_t at = 0; at + es <= x.bytes.size(); at += es) std::memcpy(&x.bytes[at], nan_bits, es);
    };
    poison(t[kSlotKCache]);
    poison(t[kSlotVCache]);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = cached(b) * hk * d;
      const std::vector<double> kv = normal_values(n, s.dtype, s.seed, 100 + 2 * b);
      const std::vector<double> vv = normal_values(n, s.dtype, s.seed, 101 + 2 * b);
      for (int64_t pos = 0; pos < cached(b); ++pos) {
        for (int64_t h = 0; h < hk; ++h) {
          const int64_t ko = cache_offset(t[kSlotKCache], b, pos, h);
          const int64_t vo = cache_offset(t[kSlotVCache], b, pos, h);
          for (int64_t c = 0; c < d; ++c) {
            t[kSlotKCache].set(ko + c, kv[static_cast<size_t>((pos * hk + h) * d + c)]);
            t[kSlotVCache].set(vo + c, vv[static_cast<size_t>((pos * hk + h) * d + c)]);
          }
        }
      }
    }
    auto random = [&](DecodeSlot slot, uint64_t stream) {
      DecodeTensor& x = t[slot];
      if (!x.defined()) return;
      const std::vector<double> v = normal_values(x.numel(), s.dtype, s.seed, stream);
      for (int64_t i = 0; i < x.numel(); ++i) x.set(i, v[static_cast<size_t>(i)]);
    };
    random(kSlotQ, 1);
    random(kSlotKNew, 2);
    random(kSlotVNew, 3);
    for (DecodeSlot out : {kSlotO, kSlotLse}) {
      if (t[out].defined()) std::fill(t[out].bytes.begin(), t[out].bytes.end(), 0xff);
    }
  }
};

/// Device copies of every buffer of a HostDecode, and the problem over them.
class DeviceDecode {
 public:
  explicit DeviceDecode(const HostDecode& h) : spec_(h.spec) {
    for (int i = 0; i < kSlotCount; ++i) {
      t_[i].dtype = h.t[i].dtype;
      t_[i].shape = h.t[i].shape;
      bytes_[i] = h.t[i].bytes.size();
      if (!t_[i].defined()) continue;
      if (cudaMalloc(&ptr_[i], std::max<size_t>(bytes_[i], 16)) != cudaSuccess) {
        error_ = "cudaMalloc failed";
        return;
      }
    }
    upload(h, nullptr);
  }
  ~DeviceDecode() {
    for (void* p : ptr_) {
      if (p != nullptr) cudaFree(p);
    }
  }
  DeviceDecode(const DeviceDecode&) = delete;
  DeviceDecode& operator=(const DeviceDecode&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  void* ptr(DecodeSlot i) const { return ptr_[i]; }

  KvCacheProblem problem(bool check_metadata_values = true) const {
    KvCacheProblem p = make_kvcache_problem(spec_, t_, ptr_, Device::cuda(0));
    p.check_metadata_values = check_metadata_values;
    return p;
  }
  /// Copies every buffer of `h` (same shapes) to the device, asynchronously on `stream`.
  void upload(const HostDecode& h, cudaStream_t stream) {
    for (int i = 0; i < kSlotCount; ++i) {
      if (ptr_[i] == nullptr || h.t[i].bytes.size() != bytes_[i]) continue;
      if (cudaMemcpyAsync(ptr_[i], h.t[i].bytes.data(), bytes_[i],
                          cudaMemcpyHostToDevice, stream) != cudaSuccess) {
        error_ = "cudaMemcpyAsync failed";
      }
    }
    if (cudaStreamSynchronize(stream) != cudaSuccess) error_ = "upload: cudaStreamSynchronize failed";
  }
  /// O and LSE poisoned again (all bytes 0xff).
  void poison_outputs(cudaStream_t stream) {
    for (DecodeSlot s : {kSlotO, kSlotLse}) {
      if (ptr_[s] != nullptr) cudaMemsetAsync(ptr_[s], 0xff, bytes_[s], stream);
    }
  }
  /// The device contents of one buffer (after synchronizing the device).
  DecodeTensor download(DecodeSlot i) const {
    DecodeTensor out = t_[i];
    out.bytes.resize(bytes_[i]);
    if (ptr_[i] == nullptr) return out;
    if (cudaDeviceSynchronize() != cudaSuccess ||
        cudaMemcpy(out.bytes.data(), ptr_[i], out.bytes.size(), cudaMemcpyDeviceToHost) !=
            cudaSuccess) {
      ADD_FAILURE() << "download of slot " << i << " failed: " << cudaGetErrorString(cudaGetLastError());
    }
    return out;
  }

 private:
  DecodeSpec spec_;
  std::array<DecodeTensor, kSlotCount> t_;  // shapes and dtypes only (no host bytes)
  std::array<size_t, kSlotCount> bytes_{};
  std::array<void*, kSlotCount> ptr_{};
  std::string error_;
};

/// One KV-cache call on device tensors and what it left: its status and receipt, O, LSE and
/// the cache after the append.
struct DecodeRun {
  Status status;
  Receipt receipt;
  DecodeTensor o, lse, k_cache, v_cache;
};

/// Poisons o / lse, runs forward_kvcache with `request` on `stream`, and downloads the results.
inline DecodeRun run_kvcache(DeviceDecode& dev, const Request& request,
                             cudaStream_t stream = nullptr) {
  DecodeRun r;
  dev.poison_outputs(stream);
  r.status = forward_kvcache(dev.problem(), request, stream);
  r.receipt = last_receipt();
  r.o = dev.download(kSlotO);
  r.lse = dev.download(kSlotLse);
  r.k_cache = dev.download(kSlotKCache);
  r.v_cache = dev.download(kSlotVCache);
  return r;
}

/// Rotates the first rotary_dim features of x (float64) at position pos, as kvcache.h says.
inline void rotate_row(const HostDecode& h, int64_t pos, double* x) {
  const int64_t rd = h.spec.rotary_dim, half = rd / 2;
  for (int64_t c = 0; c < half; ++c) {
    const double cs = h[kSlotCos].get(pos * half + c), sn = h[kSlotSin].get(pos * half + c);
    const int64_t i1 = h.spec.rotary_interleaved ? 2 * c : c;
    const int64_t i2 = h.spec.rotary_interleaved ? 2 * c + 1 : c + half;
    const double x1 = x[i1], x2 = x[i2];
    x[i1] = x1 * cs - x2 * sn;
    x[i2] = x1 * sn + x2 * cs;
  }
}

/// What a call must produce, for sequences 0 .. batch - 1 (spec.checked()).
struct DecodeReference {
  int64_t batch = 0;
  std::vector<double> o64, lse64;      // ref64: [batch, seqlen_q, heads_q, d], [batch, heads_q, seqlen_q]
  std::vector<double> o_lowp, lse_lowp;  // ref_lowp, same layouts
  DecodeTensor k_cache, v_cache;       // the caches after the reference's append
};

/// The attention of sequences 0 .. n - 1 recomputed as dense batch-1 forwards
/// (reference_cpu_forward with `numerics`) over the given post-append caches: q rotated in
/// float64 (when rotary is on) and stored as `as` (a kernel's rounding for a 16-bit `as`, none
/// for kFloat64), K / V gathered from the caches (exact in either), the mask, window, softcap
/// and scale of the call (kNoMask windows and kCausalBottomRight are bottom-right aligned in
/// problem.h as in kvcache.h), and the sinks. O [n, seqlen_q, heads_q, d] and LSE
/// [n, heads_q, seqlen_q] as double; sequences without keys get O = 0 and LSE = -inf (the sink
/// with sinks).
inline Status gather_forward(const HostDecode& h, const DecodeTensor& k_cache,
                             const DecodeTensor& v_cache, DType as,
                             detail::ReferenceNumerics numerics, int64_t n,
                             std::vector<double>* o_out, std::vector<double>* lse_out) {
  const DecodeSpec& s = h.spec;
  const int64_t d = s.head_dim, hq = s.heads_q, hk = s.heads_kv, sq = s.seqlen_q;
  o_out->assign(static_cast<size_t>(n * sq * hq * d), 0.0);
  lse_out->assign(static_cast<size_t>(n * hq * sq), -std::numeric_limits<double>::infinity());
  const bool sinks = h[kSlotSink].defined();
  if (sinks) {
    for (int64_t e = 0; e < n * hq * sq; ++e) {
      (*lse_out)[static_cast<size_t>(e)] = h[kSlotSink].get(e / sq % hq);  // e = (b hq + h) sq + i
    }
  }
  std::vector<double> row(static_cast<size_t>(d));
  for (int64_t b = 0; b < n; ++b) {
    const int64_t sk = h.seqlen_k(b);
    if (sk == 0) continue;  // no key: O = 0, LSE = -inf or the sink (as set above)
    DecodeTensor q(as, {1, sq, hq, d}), k(as, {1, sk, hk, d}), v(as, {1, sk, hk, d});
    DecodeTensor o(as, {1, sq, hq, d}), lse(DType::kFloat32, {1, hq, sq});
    for (int64_t i = 0; i < sq; ++i) {
      for (int64_t hh = 0; hh < hq; ++hh) {
        const int64_t src = ((b * sq + i) * hq + hh) * d, dst = (i * hq + hh) * d;
        for (int64_t c = 0; c < d; ++c) row[c] = h[kSlotQ].get(src + c);
        if (s.rotary_dim > 0) rotate_row(h, h.cached(b) + (h.q_consecutive() ? i : 0), row.data());
        for (int64_t c = 0; c < d; ++c) q.set(dst + c, row[c]);  // rounded to `as`
      }
    }
    for (int64_t pos = 0; pos < sk; ++pos) {
      for (int64_t hh = 0; hh < hk; ++hh) {
        const int64_t ko = h.cache_offset(k_cache, b, pos, hh);
        const int64_t vo = h.cache_offset(v_cache, b, pos, hh);
        const int64_t dst = (pos * hk + hh) * d;
        for (int64_t c = 0; c < d; ++c) {
          k.set(dst + c, k_cache.get(ko + c));
          v.set(dst + c, v_cache.get(vo + c));
        }
      }
    }
    AttentionProblem a;
    a.q = q.view();
    a.k = k.view();
    a.v = v.view();
    a.o = o.view();
    a.lse = lse.view();
    a.mask = s.mask;
    a.window_left = s.window_left;
    a.window_right = s.window_right;
    a.softcap = s.softcap;
    if (sinks) {
      void* sink_data = const_cast<unsigned char*>(h[kSlotSink].bytes.data());
      a.learnable_sink = TensorView::contiguous(sink_data, DType::kFloat32, {hq}, Device::cpu());
    }
    a.softmax_scale = 1.0 / std::sqrt(static_cast<double>(d));  // kvcache.h's default
    ProblemInfo fi;
    if (Status st = validate(a, Direction::kForward, &fi); !st.ok()) return st;
    if (Status st = detail::reference_cpu_forward(a, fi, numerics); !st.ok()) return st;
    for (int64_t e = 0; e < sq * hq * d; ++e) (*o_out)[static_cast<size_t>(b * sq * hq * d + e)] = o.get(e);
    for (int64_t e = 0; e < hq * sq; ++e) (*lse_out)[static_cast<size_t>(b * hq * sq + e)] = lse.get(e);
  }
  return Status::Ok();
}

/// ref64 and ref_lowp of a case (HostDecode as built, before any call), on host copies.
inline Status compute_reference(const HostDecode& h, DecodeReference* r) {
  const DecodeSpec& s = h.spec;
  const int64_t n = s.checked(), d = s.head_dim, hq = s.heads_q, sq = s.seqlen_q;
  if (n < s.batch() && s.seqlen_new > 0) {
    return Status(ErrorCode::kInvalidArgument, "a checked subset of sequences needs no append");
  }
  r->batch = n;
  // ref64: reference_cpu_kvcache on a host copy, the batch cut to the checked sequences.
  HostDecode copy = h;
  KvCacheProblem p = copy.host_problem();
  for (TensorView* v : {&p.q, &p.o, &p.lse, &p.cache_seqlens, &p.page_table, &p.k_new, &p.v_new,
                        &p.cache_batch_idx}) {
    if (v->defined()) v->shape[0] = n;
  }
  if (!s.paged() && s.batch_cache == 0) {
    p.k_cache.shape[0] = n;
    p.v_cache.shape[0] = n;
  }
  DecodeTensor lse_host(DType::kFloat32, {n, hq, sq});
  p.lse = lse_host.view();  // LSE always computed by the reference
  ProblemInfo info;
  if (Status st = validate_kvcache(p, &info); !st.ok()) return st;
  // Float64 outputs: the reference stores through the view's dtype (validation wants q's).
  DecodeTensor o64(DType::kFloat64, {n, sq, hq, d}), lse64(DType::kFloat64, {n, hq, sq});
  p.o = o64.view();
  p.lse = lse64.view();
  if (Status st = detail::reference_cpu_kvcache(p, info); !st.ok()) return st;
  r->o64 = o64.values();
  r->lse64 = lse64.values();
  r->k_cache = copy[kSlotKCache];
  r->v_cache = copy[kSlotVCache];

  // ref_lowp: per sequence, a dense batch-1 forward over the post-append cache.
  return gather_forward(h, r->k_cache, r->v_cache, s.dtype, detail::ReferenceNumerics::kLowPrecision,
                        n, &r->o_lowp, &r->lse_lowp);
}

/// The first `n` entries of v.
inline std::vector<double> head_of(const std::vector<double>& v, size_t n) {
  return std::vector<double>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(std::min(n, v.size())));
}

/// FlashAttention's rule on O (and LSE when the case has it), over the checked sequences:
///   max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5.
inline void check_outputs_fa_rule(const HostDecode& h, const DecodeReference& r,
                                  const DecodeTensor& o, const DecodeTensor& lse) {
  const size_t no = r.o64.size(), nl = r.lse64.size();
  const bench::ErrorFigure fo =
      bench::compare_tensor("o", head_of(o.values(), no), r.o64, r.o_lowp);
  EXPECT_TRUE(fo.pass) << "O: max|out - ref64| = " << fo.max_abs_diff << ", tolerance "
                       << fo.tolerance << " (max|ref_lowp - ref64| = " << fo.ref_max_abs_diff
                       << "), non-finite " << fo.nan_count << " of " << fo.count;
  if (!h.spec.with_lse) return;
  const bench::ErrorFigure fl =
      bench::compare_tensor("lse", head_of(lse.values(), nl), r.lse64, r.lse_lowp);
  EXPECT_TRUE(fl.pass) << "LSE: max|out - ref64| = " << fl.max_abs_diff << ", tolerance "
                       << fl.tolerance << " (max|ref_lowp - ref64| = " << fl.ref_max_abs_diff
                       << "), non-finite " << fl.nan_count << " of " << fl.count;
}

/// Sequences with no key at all (cache_seqlens[b] = 0, no append): O == 0 and LSE == -inf
/// (with sinks: LSE == learnable_sink[h]) exactly, for every row.
inline void check_empty_sequences(const HostDecode& h, const DecodeTensor& o,
                                  const DecodeTensor& lse) {
  const DecodeSpec& s = h.spec;
  const int64_t per_o = s.seqlen_q * s.heads_q * s.head_dim, per_l = s.heads_q * s.seqlen_q;
  for (int64_t b = 0; b < s.batch(); ++b) {
    if (h.seqlen_k(b) != 0) continue;
    int64_t bad_o = 0, bad_l = 0;
    for (int64_t e = 0; e < per_o; ++e) bad_o += o.get(b * per_o + e) != 0.0;
    if (s.with_lse) {
      for (int64_t e = 0; e < per_l; ++e) {
        const double x = lse.get(b * per_l + e);
        if (h[kSlotSink].defined()) {
          bad_l += !(x == h[kSlotSink].get(e / s.seqlen_q));  // e = head * seqlen_q + row
        } else {
          bad_l += !(std::isinf(x) && x < 0);
        }
      }
    }
    EXPECT_EQ(bad_o, 0) << "sequence " << b << " has no key: O must be exactly 0";
    EXPECT_EQ(bad_l, 0) << "sequence " << b << " has no key: LSE must be "
                        << (h[kSlotSink].defined() ? "the sink" : "-inf");
  }
}

/// One ulp of |v| in a 16-bit (or wider) dtype.
inline double ulp_of(DType dtype, double v) {
  v = std::fabs(v);
  int e = 0;
  if (v > 0) {
    std::frexp(v, &e);
    e -= 1;  // floor(log2 v)
  }
  switch (dtype) {
    case DType::kBFloat16: return std::ldexp(1.0, std::max(e, -126) - 7);
    case DType::kFloat16: return std::ldexp(1.0, std::max(e, -14) - 10);
    case DType::kFloat32: return std::ldexp(1.0, std::max(e, -126) - 23);
    default: return std::ldexp(1.0, std::max(e, -1022) - 52);
  }
}

/// The caches after a call (`k`, `v`) against `before` (the HostDecode as uploaded) and the
/// reference's append: appended v entries and, without rotary, appended k entries bit-exact with
/// the reference; with rotary, appended k within 1 ulp of the dtype; every other element
/// (NaN poison included) bit-exact with `before`.
inline void check_cache(const HostDecode& before, const DecodeReference& r, const DecodeTensor& k,
                        const DecodeTensor& v) {
  const DecodeSpec& s = before.spec;
  const int64_t es = dtype_size(s.dtype), d = s.head_dim;
  std::vector<char> appended(static_cast<size_t>(k.numel()), 0);
  int64_t k_bits = 0, k_ulp = 0, v_bits = 0;
  double worst_k = 0.0;
  for (int64_t b = 0; b < s.batch(); ++b) {
    for (int64_t j = 0; j < s.seqlen_new; ++j) {
      for (int64_t hh = 0; hh < s.heads_kv; ++hh) {
        const int64_t off = before.cache_offset(k, b, before.cached(b) + j, hh);
        for (int64_t c = 0; c < d; ++c) {
          const int64_t e = off + c;
          appended[static_cast<size_t>(e)] = 1;
          if (std::memcmp(&v.bytes[e * es], &r.v_cache.bytes[e * es], es) != 0) ++v_bits;
          if (s.rotary_dim == 0) {
            if (std::memcmp(&k.bytes[e * es], &r.k_cache.bytes[e * es], es) != 0) ++k_bits;
          } else {
            const double got = k.get(e), want = r.k_cache.get(e);
            const double diff = std::fabs(got - want);
            if (!(diff <= ulp_of(s.dtype, std::max(std::fabs(got), std::fabs(want))))) ++k_ulp;
            if (std::isfinite(diff)) worst_k = std::max(worst_k, diff);
          }
        }
      }
    }
  }
  EXPECT_EQ(k_bits, 0) << "appended K entries differ from the reference's (no rotary: bit-exact)";
  EXPECT_EQ(k_ulp, 0) << "appended K entries more than 1 ulp from the reference's (rotary); "
                      << "largest finite difference " << worst_k;
  EXPECT_EQ(v_bits, 0) << "appended V entries differ from the reference's (bit-exact)";
  int64_t touched_k = 0, touched_v = 0;
  for (int64_t e = 0; e < k.numel(); ++e) {
    if (appended[static_cast<size_t>(e)]) continue;
    touched_k += std::memcmp(&k.bytes[e * es], &before[kSlotKCache].bytes[e * es], es) != 0;
    touched_v += std::memcmp(&v.bytes[e * es], &before[kSlotVCache].bytes[e * es], es) != 0;
  }
  EXPECT_EQ(touched_k, 0) << "K cache elements outside the appended positions changed";
  EXPECT_EQ(touched_v, 0) << "V cache elements outside the appended positions changed";
}

}  // namespace flashlane::test_support
