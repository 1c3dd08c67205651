// host_problem.h: owns the host buffers of one attention problem for tests (header-only).
//
// HostProblem allocates q, k, v, o, lse, dout, dq, dk, dv (bshd or varlen layout, see
// include/flashlane/problem.h) of one dtype, fills the inputs q, k, v, dout with uniform random
// values from a seeded std::mt19937_64 (mapped to [-value_scale, value_scale) by integer
// arithmetic, so the values are the same with every standard library), fills the outputs
// o, lse, dq, dk, dv with a poison value, and returns an AttentionProblem of TensorViews into
// those buffers.
//
// Layout options, to test stride handling and out-of-bounds reads:
//   pad_dim / pad_heads / pad_tokens   extra elements after each head row, after each token and
//       tokens after each sequence (bshd only; varlen tensors keep total rows and get pad_tokens
//       rows after the end). The padding of every buffer holds pad_value (NaN by default), so a
//       kernel that reads outside its view sees NaN; count_padding_changed() tells whether a
//       kernel wrote outside its view.
//   heads_major   memory order [batch, heads, seqlen, dim] (bshd) or [heads, tokens, dim]
//       (varlen) behind the usual [.., seqlen, heads, dim] view (what torch's transpose gives).
//   nan_unused_kv  write NaN into the K/V rows at or beyond seqused_k[b] (they are never used).
//   lse [batch, heads_q, seqlen_q] / [heads_q, total_q] gets pad_tokens after each row.
// Attention sinks: a non-empty learnable_sink (one value per query head) allocates the float32
// [heads_q] input learnable_sink with those values and, with with_grads, the output
// dlearnable_sink (poisoned like the other outputs); both contiguous, without padding.
// CUDA tensors must have 16-byte aligned strides: keep pad_dim * element size and
// pad_heads * element size multiples of 16 for problems meant for the GPU.
//
// Inputs get the same values for the same seed whatever direction or output options are
// chosen (one generator per tensor, seeded from `seed` and the tensor's name), so a forward and
// a backward problem with the same config share q, k, v.
//
// For GPU tests: HostTensor::bytes holds the whole buffer (padding included) and
// HostTensor::view_at(ptr, device) gives the same view over a device copy of those bytes; copy
// the bytes of the outputs back into a HostTensor to use count_poisoned() and friends. Two
// HostProblems built from one config hold identical inputs: run the reference on one and the
// kernel under test on the other, then compare element by element with for_each_offset().
//
// Example (forward on the CPU reference):
//   HostProblemConfig cfg;  cfg.dtype = DType::kBFloat16;  cfg.batch = 2;  cfg.seqlen_q = 128;
//   cfg.seqlen_k = 256;  cfg.heads_q = 8;  cfg.heads_kv = 2;  cfg.head_dim = 128;
//   cfg.mask = MaskType::kCausalBottomRight;  cfg.seed = 42;
//   HostProblem hp(cfg);
//   ProblemInfo info;  ASSERT_TRUE(validate(hp.problem(), Direction::kForward, &info).ok());
//   ASSERT_TRUE(detail::reference_cpu_forward(hp.problem(), info).ok());
//   EXPECT_EQ(hp.o.count_poisoned(), 0);
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/numeric.h"
#include "flashlane/problem.h"
#include "flashlane/tensor.h"

namespace flashlane::test_support {

/// What to build. Sizes of a bshd problem are batch/seqlen_q/seqlen_k; a varlen problem is
/// selected by giving seqlens_q (and seqlens_k, same length): batch = seqlens_q.size().
struct HostProblemConfig {
  DType dtype = DType::kFloat32;
  int64_t batch = 1;
  int64_t seqlen_q = 1, seqlen_k = 1;       // bshd
  std::vector<int32_t> seqlens_q, seqlens_k;  // varlen (non-empty selects it)
  std::vector<int32_t> seqused_k;             // optional, one entry per sequence
  int64_t heads_q = 1, heads_kv = 1;
  int64_t head_dim = 64;
  int64_t head_dim_v = 0;  // 0: same as head_dim

  MaskType mask = MaskType::kNoMask;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  std::optional<double> softmax_scale;
  bool deterministic = false;

  bool with_lse = true;    // allocate lse (forward output / backward input)
  bool with_grads = true;  // allocate dout, dq, dk, dv (and dlearnable_sink with sinks)
  std::vector<float> learnable_sink;  // empty: no sinks; else heads_q logits

  uint64_t seed = 0;
  double value_scale = 1.0;  // inputs uniform in [-value_scale, value_scale)
  double poison = std::numeric_limits<double>::quiet_NaN();    // initial value of outputs
  double pad_value = std::numeric_limits<double>::quiet_NaN();  // value of padding elements

  int64_t pad_dim = 0, pad_heads = 0, pad_tokens = 0;
  bool heads_major = false;
  bool nan_unused_kv = false;
};

/// One owned buffer and the view over it. `view.data` points into `bytes`.
struct HostTensor {
  std::vector<unsigned char> bytes;
  TensorView view;
  std::vector<unsigned char> poison_bits;  // encoding of the poison/pad value in view.dtype
  std::vector<unsigned char> pad_bits;

  bool defined() const { return view.defined(); }
  int64_t element_size() const { return dtype_size(view.dtype); }
  /// Number of elements of the buffer (view elements plus padding).
  int64_t buffer_elements() const {
    return view.data ? static_cast<int64_t>(bytes.size()) / element_size() : 0;
  }
  /// Element offset of a multi-index of the view.
  int64_t offset(std::initializer_list<int64_t> idx) const {
    int64_t off = 0;
    int d = 0;
    for (int64_t i : idx) off += i * view.stride[d++];
    return off;
  }
  double get(int64_t offset) const { return numeric::load(view.data, view.dtype, offset); }
  void set(int64_t offset, double value) { numeric::store(view.data, view.dtype, offset, value); }
  double at(std::initializer_list<int64_t> idx) const { return get(offset(idx)); }

  /// Calls fn(offset) for every element of the view, in row-major index order.
  template <class Fn>
  void for_each_offset(Fn&& fn) const {
    if (!view.defined() || view.numel() == 0) return;
    std::array<int64_t, TensorView::kMaxRank> idx{};
    while (true) {
      int64_t off = 0;
      for (int d = 0; d < view.rank; ++d) off += idx[d] * view.stride[d];
      fn(off);
      int d = view.rank - 1;
      for (; d >= 0; --d) {
        if (++idx[d] < view.shape[d]) break;
        idx[d] = 0;
      }
      if (d < 0) return;
    }
  }
  /// Elements of the view still holding the poison bit pattern (i.e. never written).
  int64_t count_poisoned() const {
    int64_t n = 0;
    const int64_t es = element_size();
    for_each_offset([&](int64_t off) {
      if (std::memcmp(bytes.data() + off * es, poison_bits.data(), es) == 0) ++n;
    });
    return n;
  }
  /// Elements outside the view whose bits differ from pad_value (i.e. written out of bounds).
  int64_t count_padding_changed() const {
    if (!view.data) return 0;
    const int64_t es = element_size();
    std::vector<char> inside(static_cast<size_t>(buffer_elements()), 0);
    for_each_offset([&](int64_t off) { inside[off] = 1; });
    int64_t n = 0;
    for (int64_t e = 0; e < buffer_elements(); ++e) {
      if (!inside[e] && std::memcmp(bytes.data() + e * es, pad_bits.data(), es) != 0) ++n;
    }
    return n;
  }
  /// The same view over another copy of `bytes` (e.g. on a device).
  TensorView view_at(void* data, Device device) const {
    TensorView t = view;
    t.data = data;
    t.device = device;
    return t;
  }
};

class HostProblem {
 public:
  explicit HostProblem(const HostProblemConfig& cfg) : cfg_(cfg) { build(); }
  HostProblem(const HostProblem&) = delete;  // views point into our own buffers
  HostProblem& operator=(const HostProblem&) = delete;

  const HostProblemConfig& config() const { return cfg_; }
  bool varlen() const { return !cfg_.seqlens_q.empty(); }
  int64_t batch() const { return varlen() ? static_cast<int64_t>(cfg_.seqlens_q.size()) : cfg_.batch; }
  int64_t head_dim_v() const { return cfg_.head_dim_v > 0 ? cfg_.head_dim_v : cfg_.head_dim; }
  int64_t total_q() const { return cu_q_.empty() ? cfg_.batch * cfg_.seqlen_q : cu_q_.back(); }
  int64_t total_k() const { return cu_k_.empty() ? cfg_.batch * cfg_.seqlen_k : cu_k_.back(); }
  /// Query / key count of sequence b and the packed offset of its first token (0 for bshd).
  int64_t seqlen_q(int64_t b) const { return varlen() ? cu_q_[b + 1] - cu_q_[b] : cfg_.seqlen_q; }
  int64_t seqlen_k(int64_t b) const { return varlen() ? cu_k_[b + 1] - cu_k_[b] : cfg_.seqlen_k; }
  int64_t q_start(int64_t b) const { return varlen() ? cu_q_[b] : 0; }
  int64_t k_start(int64_t b) const { return varlen() ? cu_k_[b] : 0; }
  /// Keys used by sequence b (seqused_k[b] when given).
  int64_t used_k(int64_t b) const {
    return cfg_.seqused_k.empty() ? seqlen_k(b) : cfg_.seqused_k[static_cast<size_t>(b)];
  }
  /// Element offset of (b, token i of the sequence, head h) in a q/k/v/o-shaped tensor.
  int64_t row_offset(const HostTensor& t, int64_t b, int64_t i, int64_t h, bool is_k) const {
    if (varlen()) return (( is_k ? k_start(b) : q_start(b)) + i) * t.view.stride[0] + h * t.view.stride[1];
    return b * t.view.stride[0] + i * t.view.stride[1] + h * t.view.stride[2];
  }
  /// Element offset of lse for (b, query i of the sequence, head h).
  int64_t lse_offset(int64_t b, int64_t i, int64_t h) const {
    if (varlen()) return h * lse.view.stride[0] + (q_start(b) + i) * lse.view.stride[1];
    return b * lse.view.stride[0] + h * lse.view.stride[1] + i * lse.view.stride[2];
  }

  /// The problem over the owned buffers (host device).
  AttentionProblem problem() const {
    AttentionProblem p;
    p.q = q.view; p.k = k.view; p.v = v.view; p.o = o.view; p.lse = lse.view;
    p.dout = dout.view; p.dq = dq.view; p.dk = dk.view; p.dv = dv.view;
    p.learnable_sink = learnable_sink.view;
    p.dlearnable_sink = dlearnable_sink.view;
    if (varlen()) {
      p.cu_seqlens_q = TensorView::contiguous(const_cast<int32_t*>(cu_q_.data()), DType::kInt32,
                                              {static_cast<int64_t>(cu_q_.size())}, Device::cpu());
      p.cu_seqlens_k = TensorView::contiguous(const_cast<int32_t*>(cu_k_.data()), DType::kInt32,
                                              {static_cast<int64_t>(cu_k_.size())}, Device::cpu());
      p.max_seqlen_q = *std::max_element(cfg_.seqlens_q.begin(), cfg_.seqlens_q.end());
      p.max_seqlen_k = *std::max_element(cfg_.seqlens_k.begin(), cfg_.seqlens_k.end());
    }
    if (!cfg_.seqused_k.empty()) {
      p.seqused_k = TensorView::contiguous(const_cast<int32_t*>(cfg_.seqused_k.data()), DType::kInt32,
                                           {static_cast<int64_t>(cfg_.seqused_k.size())}, Device::cpu());
    }
    p.softmax_scale = cfg_.softmax_scale;
    p.mask = cfg_.mask;
    p.window_left = cfg_.window_left;
    p.window_right = cfg_.window_right;
    p.softcap = cfg_.softcap;
    p.deterministic = cfg_.deterministic;
    return p;
  }

  /// Writes the poison value into every element (view and padding stay distinguishable) of the
  /// outputs again, e.g. before a second run.
  void poison_outputs() {
    for (HostTensor* t : {&o, &lse, &dq, &dk, &dv, &dlearnable_sink}) poison_view(*t);
  }
  void poison_forward_outputs() { poison_view(o); poison_view(lse); }
  void poison_backward_outputs() {
    for (HostTensor* t : {&dq, &dk, &dv, &dlearnable_sink}) poison_view(*t);
  }

  const std::vector<int32_t>& cu_seqlens_q() const { return cu_q_; }
  const std::vector<int32_t>& cu_seqlens_k() const { return cu_k_; }

  HostTensor q, k, v, o, lse, dout, dq, dk, dv;
  HostTensor learnable_sink, dlearnable_sink;  // defined only with cfg.learnable_sink

 private:
  static uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  static uint64_t name_hash(const char* s) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (; *s; ++s) h = (h ^ static_cast<unsigned char>(*s)) * 1099511628211ull;
    return h;
  }
  static std::vector<unsigned char> encode(DType dtype, double value) {
    std::vector<unsigned char> bits(static_cast<size_t>(dtype_size(dtype)));
    numeric::store(bits.data(), dtype, 0, value);
    return bits;
  }

  /// Allocates a tensor of logical shape [outer..., rows, heads, dim] where `outer` is the batch
  /// for bshd (rank 4) and absent for varlen (rank 3). `rows` per batch entry (bshd) or in total.
  void make_qkv_like(HostTensor& t, DType dtype, int64_t rows, int64_t heads, int64_t dim) {
    const bool packed = varlen();
    const int64_t nb = packed ? 1 : cfg_.batch;
    const int64_t row_pitch = dim + cfg_.pad_dim;  // elements between two head rows
    int64_t s_head, s_tok, s_batch, elems;
    if (!cfg_.heads_major) {
      s_head = row_pitch;
      s_tok = heads * row_pitch + cfg_.pad_heads;
      s_batch = (rows + cfg_.pad_tokens) * s_tok;
      elems = nb * s_batch;
    } else {
      s_tok = row_pitch;
      s_head = (rows + cfg_.pad_tokens) * row_pitch + cfg_.pad_heads;
      s_batch = heads * s_head;
      elems = nb * s_batch;
    }
    elems = std::max<int64_t>(elems, 1);
    allocate(t, dtype, elems);
    if (packed) {
      t.view = TensorView::strided(t.bytes.data(), dtype, {rows, heads, dim}, {s_tok, s_head, 1},
                                   Device::cpu());
    } else {
      t.view = TensorView::strided(t.bytes.data(), dtype, {nb, rows, heads, dim},
                                   {s_batch, s_tok, s_head, 1}, Device::cpu());
    }
  }

  void make_lse() {
    const int64_t pad = cfg_.pad_tokens;
    if (varlen()) {
      const int64_t tq = total_q();
      allocate(lse, DType::kFloat32, std::max<int64_t>(cfg_.heads_q * (tq + pad), 1));
      lse.view = TensorView::strided(lse.bytes.data(), DType::kFloat32, {cfg_.heads_q, tq},
                                     {tq + pad, 1}, Device::cpu());
    } else {
      const int64_t s = cfg_.seqlen_q;
      allocate(lse, DType::kFloat32, std::max<int64_t>(cfg_.batch * cfg_.heads_q * (s + pad), 1));
      lse.view = TensorView::strided(lse.bytes.data(), DType::kFloat32, {cfg_.batch, cfg_.heads_q, s},
                                     {cfg_.heads_q * (s + pad), s + pad, 1}, Device::cpu());
    }
  }

  void allocate(HostTensor& t, DType dtype, int64_t elements) {
    t.bytes.assign(static_cast<size_t>(elements * dtype_size(dtype)), 0);
    t.pad_bits = encode(dtype, cfg_.pad_value);
    t.poison_bits = encode(dtype, cfg_.poison);
    for (int64_t e = 0; e < elements; ++e) std::memcpy(t.bytes.data() + e * dtype_size(dtype), t.pad_bits.data(), t.pad_bits.size());
  }

  void fill_random(HostTensor& t, const char* name) {
    std::mt19937_64 rng(splitmix(cfg_.seed ^ name_hash(name)));
    const double s = cfg_.value_scale;
    t.for_each_offset([&](int64_t off) {
      const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
      t.set(off, s * (2.0 * u - 1.0));
    });
  }

  void poison_view(HostTensor& t) {
    if (!t.view.data) return;
    const int64_t es = t.element_size();
    t.for_each_offset([&](int64_t off) { std::memcpy(t.bytes.data() + off * es, t.poison_bits.data(), es); });
  }

  void build() {
    if (varlen()) {
      if (cfg_.seqlens_k.size() != cfg_.seqlens_q.size()) {
        throw std::invalid_argument("HostProblemConfig: seqlens_q and seqlens_k differ in length");
      }
      cu_q_.assign(1, 0);
      cu_k_.assign(1, 0);
      for (size_t b = 0; b < cfg_.seqlens_q.size(); ++b) {
        cu_q_.push_back(cu_q_.back() + cfg_.seqlens_q[b]);
        cu_k_.push_back(cu_k_.back() + cfg_.seqlens_k[b]);
      }
    }
    if (!cfg_.seqused_k.empty() && static_cast<int64_t>(cfg_.seqused_k.size()) != batch()) {
      throw std::invalid_argument("HostProblemConfig: seqused_k needs one entry per sequence");
    }
    const DType dt = cfg_.dtype;
    const int64_t rows_q = varlen() ? total_q() : cfg_.seqlen_q;
    const int64_t rows_k = varlen() ? total_k() : cfg_.seqlen_k;
    const int64_t dv_ = head_dim_v();
    make_qkv_like(q, dt, rows_q, cfg_.heads_q, cfg_.head_dim);
    make_qkv_like(k, dt, rows_k, cfg_.heads_kv, cfg_.head_dim);
    make_qkv_like(v, dt, rows_k, cfg_.heads_kv, dv_);
    make_qkv_like(o, dt, rows_q, cfg_.heads_q, dv_);
    if (cfg_.with_lse) make_lse();
    if (cfg_.with_grads) {
      make_qkv_like(dout, dt, rows_q, cfg_.heads_q, dv_);
      make_qkv_like(dq, dt, rows_q, cfg_.heads_q, cfg_.head_dim);
      make_qkv_like(dk, dt, rows_k, cfg_.heads_kv, cfg_.head_dim);
      make_qkv_like(dv, dt, rows_k, cfg_.heads_kv, dv_);
    }
    if (!cfg_.learnable_sink.empty()) {
      if (static_cast<int64_t>(cfg_.learnable_sink.size()) != cfg_.heads_q) {
        throw std::invalid_argument("HostProblemConfig: learnable_sink needs one entry per query head");
      }
      for (HostTensor* t : {&learnable_sink, &dlearnable_sink}) {
        if (t == &dlearnable_sink && !cfg_.with_grads) continue;
        allocate(*t, DType::kFloat32, cfg_.heads_q);
        t->view = TensorView::contiguous(t->bytes.data(), DType::kFloat32, {cfg_.heads_q}, Device::cpu());
      }
      for (int64_t h = 0; h < cfg_.heads_q; ++h) learnable_sink.set(h, cfg_.learnable_sink[static_cast<size_t>(h)]);
    }
    fill_random(q, "q");
    fill_random(k, "k");
    fill_random(v, "v");
    if (cfg_.with_grads) fill_random(dout, "dout");
    poison_outputs();
    if (cfg_.nan_unused_kv && !cfg_.seqused_k.empty()) {
      const double nan = std::numeric_limits<double>::quiet_NaN();
      for (int64_t b = 0; b < batch(); ++b) {
        for (int64_t j = used_k(b); j < seqlen_k(b); ++j) {
          for (int64_t h = 0; h < cfg_.heads_kv; ++h) {
            for (int64_t c = 0; c < cfg_.head_dim; ++c) k.set(row_offset(k, b, j, h, true) + c, nan);
            for (int64_t c = 0; c < dv_; ++c) v.set(row_offset(v, b, j, h, true) + c, nan);
          }
        }
      }
    }
  }

  HostProblemConfig cfg_;
  std::vector<int32_t> cu_q_, cu_k_;
};

}  // namespace flashlane::test_support
