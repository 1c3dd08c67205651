// reference_cpu.cpp: the float64-accumulating CPU reference of attention, forward and backward.
// It is the ground truth of the test suites and the fallback backend without a GPU, so it is
// written for obvious correctness first and speed second.
//
// Algorithm sources:
//   Forward: scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You Need",
//     eq. 1), one query row at a time: raw_j = scale * q.k_j; softcap c > 0 (Gemma 2):
//     s_j = c * tanh(raw_j / c); keys outside MaskRule::visible are skipped entirely (never
//     read, never multiplied by a zero weight, so NaN in unused K/V cannot leak); softmax with
//     max subtraction; O = sum_j p_j v_j; LSE = m + log(sum_j exp(s_j - m)) (natural log, as
//     FlashAttention-2 stores it). A row with no visible key writes O = 0 and LSE = -inf.
//   Attention sinks (gpt-oss's learnable per-head sink logit; FlashAttention-4's
//     learnable_sink; include/flashlane/problem.h): the sink joins the row's softmax as one more
//     logit without a value: m = max(sink, max_j s_j), l = exp(sink - m) + sum_j exp(s_j - m),
//     O = sum_j exp(s_j - m) v_j / l, LSE = m + log(l). A row with no visible key writes O = 0 and
//     LSE = sink.
//   Backward: FlashAttention-2 (Dao 2023, arXiv:2307.08691), section 3.2, the standard softmax
//     backward with P recomputed from the caller's LSE: P_ij = exp(s_ij - lse_i),
//     D_i = dout_i . o_i, dV_j += P_ij dout_i, dP_ij = dout_i . v_j, dS_ij = P_ij (dP_ij - D_i);
//     softcap chain rule dS_raw = dS * (1 - tanh^2(raw / c)); dQ_i += scale dS_raw k_j,
//     dK_j += scale dS_raw q_i. GQA: dK/dV of a kv head sum over the query heads of its group.
//     Rows with lse = -inf (fully masked) contribute nothing; their dQ is 0. Keys beyond
//     seqused_k get dK = dV = 0.
//   Sink gradient: the sink's column of dS with dP = 0 (it has no value),
//     dsink_h = -sum_{b, i} exp(sink_h - lse_i) D_i over every query row of head h (rows with
//     lse = -inf contribute nothing); dQ, dK, dV are unchanged given the LSE, which includes the
//     sink. Each (batch, kv head) task writes its per-(batch, head) partial sums into its own
//     slots; they are summed over the batch in index order afterwards, so dlearnable_sink does
//     not depend on the thread count or the schedule.
//   Note: the accuracy of the backward is bounded by the float32 LSE it is given (about 1e-7
//   relative in P), not by the float64 accumulation.
//   Low precision (ReferenceNumerics::kLowPrecision, the "ref_lowp" of FlashAttention's test
//   rule; FlashAttention's tests/test_util.py, attention_ref with upcast=False): the forward
//   rounds scores and P to fp32 and P to the input dtype before P V; the backward emulates a
//   fused kernel (FlashAttention-2/3): fp32 scores, P, D, dP and dS, P and dS rounded once to the
//   input dtype before the dV / dK / dQ products, wide (float64) sums, softmax_scale applied to
//   dQ and dK once at the end. The sink is one more fp32 term of the row statistics, as a fused
//   kernel keeps them (fp32 row max and row sum): exp(sink - m) rounded to fp32 joins the row
//   sum before its rounding; in the backward, the sink's probability f32(exp(f32(sink - lse)))
//   times the fp32 D.
//
// Parallelism: std::thread over (batch, query head) for the forward and over (batch, kv head)
// for the backward, so every output element is written by exactly one thread (no races, and
// results do not depend on the thread count). Small problems run on the calling thread. A
// problem without query rows (and, in the backward, without key rows) has no task to run: an
// empty problem may claim any number of heads or sequences, and costs nothing for it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "core/attention_rules.h"
#include "core/numeric.h"
#include "core/problem_tensors.h"
#include "dispatch/backends.h"

namespace flashlane::detail {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

/// Geometry of one sequence of the batch.
struct Sequence {
  int64_t q_start = 0;   // token offset of query 0 (varlen: cu_seqlens_q[b]; bshd: 0)
  int64_t seqlen_q = 0;
  int64_t k_start = 0;   // token offset of key 0
  int64_t seqlen_k = 0;  // keys in the sequence (tensor rows)
  int64_t used_k = 0;    // keys used: seqused_k[b] when given, else seqlen_k
};

int32_t read_i32(const TensorView& t, int64_t index) {
  return static_cast<const int32_t*>(t.data)[index * t.stride[0]];
}

/// Index arithmetic shared by forward and backward (all offsets in elements, 64-bit).
class Layout {
 public:
  Layout(const AttentionProblem& p, const ProblemInfo& info) : p_(p), info_(info) {}

  Sequence sequence(int64_t b) const {
    Sequence s;
    if (info_.varlen) {
      s.q_start = read_i32(p_.cu_seqlens_q, b);
      s.seqlen_q = read_i32(p_.cu_seqlens_q, b + 1) - s.q_start;
      s.k_start = read_i32(p_.cu_seqlens_k, b);
      s.seqlen_k = read_i32(p_.cu_seqlens_k, b + 1) - s.k_start;
    } else {
      s.seqlen_q = info_.seqlen_q;
      s.seqlen_k = info_.seqlen_k;
    }
    s.seqlen_q = std::max<int64_t>(s.seqlen_q, 0);
    s.seqlen_k = std::max<int64_t>(s.seqlen_k, 0);
    s.used_k = s.seqlen_k;
    if (info_.has_seqused_k && p_.seqused_k.defined()) {
      s.used_k = std::clamp<int64_t>(read_i32(p_.seqused_k, b), 0, s.seqlen_k);
    }
    return s;
  }

  /// Offset of the row (batch b, token t, head h) of a q/k/v/o-shaped tensor; for varlen, t is
  /// the packed token index.
  int64_t row(const TensorView& t, int64_t b, int64_t token, int64_t h) const {
    if (info_.varlen) return token * t.stride[0] + h * t.stride[1];
    return b * t.stride[0] + token * t.stride[1] + h * t.stride[2];
  }
  /// Offset of lse[b, h, token] (bshd) or lse[h, token] (varlen, packed token index).
  int64_t lse(int64_t b, int64_t h, int64_t token) const {
    const TensorView& t = p_.lse;
    if (info_.varlen) return h * t.stride[0] + token * t.stride[1];
    return b * t.stride[0] + h * t.stride[1] + token * t.stride[2];
  }
  /// Tokens of a packed (varlen) tensor beyond the last sequence: [cu[batch], rows).
  int64_t covered_q() const { return info_.varlen ? read_i32(p_.cu_seqlens_q, info_.batch) : 0; }
  int64_t covered_k() const { return info_.varlen ? read_i32(p_.cu_seqlens_k, info_.batch) : 0; }

 private:
  const AttentionProblem& p_;
  const ProblemInfo& info_;
};

void load_row(const TensorView& t, int64_t offset, int64_t n, double* dst) {
  const void* base = t.data;
  switch (t.dtype) {
    case DType::kFloat64: {
      const double* src = static_cast<const double*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = src[d];
      break;
    }
    case DType::kFloat32: {
      const float* src = static_cast<const float*>(base) + offset;
      for (int64_t d = 0; d < n; ++d) dst[d] = src[d];
      break;
    }
    default:
      for (int64_t d = 0; d < n; ++d) dst[d] = numeric::load(base, t.dtype, offset + d);
  }
}

void store_row(const TensorView& t, int64_t offset, int64_t n, const double* src) {
  for (int64_t d = 0; d < n; ++d) numeric::store(t.data, t.dtype, offset + d, src[d]);
}

void zero_row(const TensorView& t, int64_t offset, int64_t n) {
  for (int64_t d = 0; d < n; ++d) numeric::store(t.data, t.dtype, offset + d, 0.0);
}

void store_lse(const TensorView& t, int64_t offset, double value) {
  numeric::store(t.data, t.dtype, offset, value);
}

/// Dot product with four partial sums (lets the compiler vectorize without -ffast-math).
inline double dot(const double* a, const double* b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t d = 0;
  for (; d + 4 <= n; d += 4) {
    s0 += a[d] * b[d];
    s1 += a[d + 1] * b[d + 1];
    s2 += a[d + 2] * b[d + 2];
    s3 += a[d + 3] * b[d + 3];
  }
  for (; d < n; ++d) s0 += a[d] * b[d];
  return (s0 + s1) + (s2 + s3);
}

/// y += alpha * x
inline void axpy(double alpha, const double* x, double* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

/// Runs fn(task) for task in [0, tasks) on up to hardware_concurrency threads (the calling
/// thread included). `work` (a rough FLOP count) keeps small problems on the calling thread.
/// Exceptions (e.g. std::bad_alloc) are turned into a kInternal Status.
template <class Fn>
Status parallel_for(int64_t tasks, double work, Fn&& fn) {
  if (tasks <= 0) return Status::Ok();
  int64_t threads = std::max<unsigned>(1u, std::thread::hardware_concurrency());
  threads = std::min<int64_t>(threads, tasks);
  constexpr double kWorkPerThread = 4.0e6;  // below this, thread start-up costs more than it saves
  threads = std::min<int64_t>(threads, std::max<int64_t>(1, static_cast<int64_t>(work / kWorkPerThread)));

  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;
  auto worker = [&]() {
    try {
      for (int64_t t = next.fetch_add(1); t < tasks && !failed.load(); t = next.fetch_add(1)) fn(t);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!failed.exchange(true)) error = e.what();
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!failed.exchange(true)) error = "unknown exception";
    }
  };
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < threads; ++i) {
    try {
      pool.emplace_back(worker);
    } catch (const std::system_error&) {
      break;  // run with the threads we have
    }
  }
  worker();
  for (auto& th : pool) th.join();
  if (failed.load()) return Status(ErrorCode::kInternal, "reference_cpu: " + error);
  return Status::Ok();
}

/// Every tensor the direction reads or writes is on the host (validation ignores the gradient
/// tensors of a forward call, so they are not checked there either).
Status check_host(const AttentionProblem& p, Direction direction) {
  const bool backward = direction == Direction::kBackward;
  for (const TensorView* t : problem_tensors(p)) {
    if (!backward && is_gradient_tensor(p, t)) continue;
    if (t->defined() && t->device.kind != DeviceKind::kCPU) {
      return Status(ErrorCode::kInternal, "reference_cpu called with a tensor not on the host");
    }
  }
  return Status::Ok();
}

MaskRule mask_rule(const ProblemInfo& info) {
  MaskRule rule;
  rule.window_left = info.window_left;
  rule.window_right = info.window_right;
  rule.bottom_right = info.bottom_right;
  return rule;
}

/// Score of a raw scaled product after the optional softcap.
inline double capped(double raw, double softcap) {
  return softcap > 0.0 ? softcap * std::tanh(raw / softcap) : raw;
}

/// learnable_sink[h] (float32 [heads_q]), or -inf without sinks: a logit that adds nothing.
double sink_logit(const AttentionProblem& p, const ProblemInfo& info, int64_t h) {
  if (!info.has_sink || !p.learnable_sink.defined()) return kNegInf;
  const TensorView& t = p.learnable_sink;
  return numeric::load(t.data, t.dtype, h * t.stride[0]);
}

}  // namespace

Status reference_cpu_forward(const AttentionProblem& p, const ProblemInfo& info) {
  return reference_cpu_forward(p, info, ReferenceNumerics::kFloat64);
}

Status reference_cpu_forward(const AttentionProblem& p, const ProblemInfo& info,
                             ReferenceNumerics numerics) {
  if (Status st = check_host(p, Direction::kForward); !st.ok()) return st;
  // kLowPrecision mirrors what a fused kernel does (FlashAttention's attention_ref with
  // upcast=False): fp32 scores and softmax, P rounded to the input dtype before P V, fp32 sums.
  const bool emulate = numerics == ReferenceNumerics::kLowPrecision;
  const auto f32 = [](double x) { return static_cast<double>(static_cast<float>(x)); };
  const Layout layout(p, info);
  const MaskRule rule = mask_rule(info);
  const int64_t d = info.head_dim, dv = info.head_dim_v;
  const int64_t group = info.heads_q / std::max<int64_t>(info.heads_kv, 1);
  const double scale = info.softmax_scale, softcap = info.softcap;
  const bool write_lse = p.lse.defined() && p.lse.data != nullptr;

  const double work = 2.0 * static_cast<double>(info.total_q) * static_cast<double>(info.heads_q) *
                      static_cast<double>(std::max<int64_t>(info.seqlen_k, 1)) *
                      static_cast<double>(d + dv);
  const int64_t tasks = info.total_q > 0 ? info.batch * info.heads_q : 0;
  Status st = parallel_for(tasks, work, [&](int64_t task) {
    const int64_t b = task / info.heads_q, h = task % info.heads_q, hk = h / group;
    const Sequence s = layout.sequence(b);
    if (s.seqlen_q == 0) return;
    const double sink = sink_logit(p, info, h);  // -inf without sinks
    // Rows of the used keys only: keys at or beyond used_k are never read.
    std::vector<double> kbuf(static_cast<size_t>(s.used_k * d)), vbuf(static_cast<size_t>(s.used_k * dv));
    for (int64_t j = 0; j < s.used_k; ++j) {
      load_row(p.k, layout.row(p.k, b, s.k_start + j, hk), d, &kbuf[j * d]);
      load_row(p.v, layout.row(p.v, b, s.k_start + j, hk), dv, &vbuf[j * dv]);
    }
    std::vector<double> qrow(d), orow(dv), scores(static_cast<size_t>(s.used_k));
    for (int64_t i = 0; i < s.seqlen_q; ++i) {
      const int64_t token = s.q_start + i;
      const int64_t o_off = layout.row(p.o, b, token, h);
      int64_t first = 0, last = 0;
      rule.key_range(i, s.seqlen_q, s.used_k, &first, &last);
      if (first >= last) {  // only the sink (if any) in the softmax: O = 0, LSE = sink
        zero_row(p.o, o_off, dv);
        if (write_lse) store_lse(p.lse, layout.lse(b, h, token), sink);
        continue;
      }
      load_row(p.q, layout.row(p.q, b, token, h), d, qrow.data());
      double m = sink;  // the sink takes part in the row maximum
      for (int64_t j = first; j < last; ++j) {
        double sc = capped(scale * dot(qrow.data(), &kbuf[j * d], d), softcap);
        if (emulate) sc = f32(sc);
        scores[j] = sc;
        m = std::max(m, sc);
      }
      double l = 0.0;
      std::fill(orow.begin(), orow.end(), 0.0);
      for (int64_t j = first; j < last; ++j) {
        if (!emulate) {
          const double pj = std::exp(scores[j] - m);
          l += pj;
          axpy(pj, &vbuf[j * dv], orow.data(), dv);
          continue;
        }
        // fp32 probabilities; the row sum itself is an accurate reduction (as torch's
        // softmax/logsumexp on 16-bit inputs), rounded to fp32 once below.
        const double pj = f32(std::exp(static_cast<float>(scores[j] - m)));
        l += pj;
        const double pj_lowp = numeric::round_to(info.dtype, pj);
        for (int64_t c = 0; c < dv; ++c) orow[c] = f32(orow[c] + pj_lowp * vbuf[j * dv + c]);
      }
      if (sink != kNegInf) {
        l += emulate ? f32(std::exp(static_cast<float>(sink - m))) : std::exp(sink - m);
      }
      if (emulate) l = f32(l);
      const double inv_l = 1.0 / l;
      for (int64_t c = 0; c < dv; ++c) orow[c] *= inv_l;
      store_row(p.o, o_off, dv, orow.data());
      if (write_lse) store_lse(p.lse, layout.lse(b, h, token), m + std::log(l));
    }
  });
  if (!st.ok()) return st;

  // Varlen: packed rows after the last sequence belong to no query; write them as fully masked.
  if (info.varlen) {
    for (int64_t token = layout.covered_q(); token < p.q.shape[0] && token < p.o.shape[0]; ++token) {
      for (int64_t h = 0; h < info.heads_q; ++h) {
        zero_row(p.o, layout.row(p.o, 0, token, h), dv);
        if (write_lse && token < p.lse.shape[1]) {
          store_lse(p.lse, layout.lse(0, h, token), sink_logit(p, info, h));
        }
      }
    }
  }
  return Status::Ok();
}

Status reference_cpu_backward(const AttentionProblem& p, const ProblemInfo& info) {
  return reference_cpu_backward(p, info, ReferenceNumerics::kFloat64);
}

Status reference_cpu_backward(const AttentionProblem& p, const ProblemInfo& info,
                              ReferenceNumerics numerics) {
  if (Status st = check_host(p, Direction::kBackward); !st.ok()) return st;
  // kLowPrecision emulates a fused backward (FlashAttention-2/3) on 16-bit inputs, per visible
  // (i, j), f32(x) = x rounded to float once:
  //   raw = f32(scale q_i.k_j); softcap: t = f32(tanh(raw / c)), score = f32(c t),
  //   dcap = f32(1 - t t), else score = raw, dcap = 1;  P = f32(exp(f32(score - lse_i)));
  //   D_i = f32(dout_i.o_i);  dP = f32(dout_i.v_j);  dS = f32(P (dP - D_i) dcap) (the product
  //   computed in double and rounded once; fp32 arithmetic would differ in the last fp32 bits);
  //   dV_j += round_to(dtype, P) dout_i;  dK_j += round_to(dtype, dS) q_i;
  //   dQ_i += round_to(dtype, dS) k_j, summed in double (tensor cores accumulate in fp32 with
  //   wide internal sums), dQ and dK times softmax_scale once at the end, as the kernel does.
  // fp32 / fp64 inputs: nothing to round to, so the float64 path.
  const bool emulate = numerics == ReferenceNumerics::kLowPrecision &&
                       (info.dtype == DType::kBFloat16 || info.dtype == DType::kFloat16);
  const auto f32 = [](double x) { return static_cast<double>(static_cast<float>(x)); };
  const Layout layout(p, info);
  const MaskRule rule = mask_rule(info);
  const int64_t d = info.head_dim, dv = info.head_dim_v;
  const int64_t heads_kv = std::max<int64_t>(info.heads_kv, 1);
  const int64_t group = info.heads_q / heads_kv;
  const double scale = info.softmax_scale, softcap = info.softcap;
  // float64 path: dS carries the scale (dS_raw); emulation: dS without it, the sums scaled once.
  const double ds_scale = emulate ? 1.0 : scale;
  const double end_scale = emulate ? scale : 1.0;

  const double work = 5.0 * static_cast<double>(info.total_q) * static_cast<double>(info.heads_q) *
                      static_cast<double>(std::max<int64_t>(info.seqlen_k, 1)) *
                      static_cast<double>(d + dv);
  // Sink gradient partials: dsink_part[b * heads_q + h] = sum_i exp(sink_h - lse_i) D_i over the
  // rows of sequence b, written only by the task (b, h / group).
  const bool want_dsink = info.has_dsink && p.dlearnable_sink.defined();
  std::vector<double> dsink_part;
  try {
    if (want_dsink && info.total_q > 0) {
      dsink_part.assign(static_cast<size_t>(info.batch * info.heads_q), 0.0);
    }
  } catch (const std::exception& e) {  // std::bad_alloc, std::length_error
    return Status(ErrorCode::kInternal,
                  std::string("reference_cpu: sink-gradient partial sums: ") + e.what());
  }
  const int64_t tasks = info.total_q > 0 || info.total_k > 0 ? info.batch * heads_kv : 0;
  Status st = parallel_for(tasks, work, [&](int64_t task) {
    const int64_t b = task / heads_kv, hk = task % heads_kv;
    const Sequence s = layout.sequence(b);
    const size_t nk = static_cast<size_t>(s.used_k);
    std::vector<double> kbuf(nk * d), vbuf(nk * dv), dkacc(nk * d, 0.0), dvacc(nk * dv, 0.0);
    for (int64_t j = 0; j < s.used_k; ++j) {
      load_row(p.k, layout.row(p.k, b, s.k_start + j, hk), d, &kbuf[j * d]);
      load_row(p.v, layout.row(p.v, b, s.k_start + j, hk), dv, &vbuf[j * dv]);
    }
    std::vector<double> qrow(d), dqrow(d), dorow(dv), orow(dv);
    for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      const double sink = want_dsink ? sink_logit(p, info, h) : kNegInf;
      double dsink_sum = 0.0;  // sum_i exp(sink - lse_i) D_i over this sequence's rows
      for (int64_t i = 0; i < s.seqlen_q; ++i) {
        const int64_t token = s.q_start + i;
        const int64_t dq_off = layout.row(p.dq, b, token, h);
        int64_t first = 0, last = 0;
        rule.key_range(i, s.seqlen_q, s.used_k, &first, &last);
        const double lse = numeric::load(p.lse.data, p.lse.dtype, layout.lse(b, h, token));
        // Fully masked row (or one the forward marked as such): no dS term, dQ = 0.
        const bool masked = first >= last || lse == kNegInf;
        const bool sink_term = want_dsink && lse != kNegInf;  // every row the sink is part of
        if (masked) zero_row(p.dq, dq_off, d);
        if (masked && !sink_term) continue;
        load_row(p.dout, layout.row(p.dout, b, token, h), dv, dorow.data());
        load_row(p.o, layout.row(p.o, b, token, h), dv, orow.data());
        double D = dot(dorow.data(), orow.data(), dv);
        if (emulate) D = f32(D);
        if (sink_term) {
          const double p_sink = emulate ? f32(std::exp(f32(sink - lse))) : std::exp(sink - lse);
          dsink_sum += p_sink * D;
        }
        if (masked) continue;
        load_row(p.q, layout.row(p.q, b, token, h), d, qrow.data());
        std::fill(dqrow.begin(), dqrow.end(), 0.0);
        for (int64_t j = first; j < last; ++j) {
          const double* kj = &kbuf[j * d];
          const double* vj = &vbuf[j * dv];
          double raw = scale * dot(qrow.data(), kj, d);
          if (emulate) raw = f32(raw);
          double score = raw, dcap = 1.0;
          if (softcap > 0.0) {
            double t = std::tanh(raw / softcap);
            if (emulate) t = f32(t);
            score = softcap * t;
            dcap = 1.0 - t * t;
            if (emulate) {
              score = f32(score);
              dcap = f32(dcap);
            }
          }
          double pij = emulate ? f32(std::exp(f32(score - lse))) : std::exp(score - lse);
          double dp = dot(dorow.data(), vj, dv);
          if (emulate) dp = f32(dp);
          double ds = pij * (dp - D) * dcap * ds_scale;
          if (emulate) {
            // The operands of the gradient products, rounded once to the input dtype.
            pij = numeric::round_to(info.dtype, pij);
            ds = numeric::round_to(info.dtype, f32(ds));
          }
          axpy(pij, dorow.data(), &dvacc[j * dv], dv);
          axpy(ds, kj, dqrow.data(), d);
          axpy(ds, qrow.data(), &dkacc[j * d], d);
        }
        for (double& x : dqrow) x *= end_scale;
        store_row(p.dq, dq_off, d, dqrow.data());
      }
      if (!dsink_part.empty()) dsink_part[static_cast<size_t>(b * info.heads_q + h)] = dsink_sum;
    }
    for (double& x : dkacc) x *= end_scale;
    for (int64_t j = 0; j < s.seqlen_k; ++j) {
      const int64_t dk_off = layout.row(p.dk, b, s.k_start + j, hk);
      const int64_t dv_off = layout.row(p.dv, b, s.k_start + j, hk);
      if (j < s.used_k) {
        store_row(p.dk, dk_off, d, &dkacc[j * d]);
        store_row(p.dv, dv_off, dv, &dvacc[j * dv]);
      } else {
        zero_row(p.dk, dk_off, d);
        zero_row(p.dv, dv_off, dv);
      }
    }
  });
  if (!st.ok()) return st;

  // dsink_h = -sum over the batch, in index order, of the tasks' partial sums (0 without rows).
  if (want_dsink) {
    const TensorView& t = p.dlearnable_sink;
    const int64_t batches = dsink_part.empty() ? 0 : info.batch;
    for (int64_t h = 0; h < info.heads_q; ++h) {
      double sum = 0.0;
      for (int64_t b = 0; b < batches; ++b) {
        sum += dsink_part[static_cast<size_t>(b * info.heads_q + h)];
      }
      numeric::store(t.data, t.dtype, h * t.stride[0], -sum);
    }
  }

  // Varlen: packed rows after the last sequence belong to no sequence; their gradients are 0.
  if (info.varlen) {
    for (int64_t token = layout.covered_q(); token < p.dq.shape[0]; ++token) {
      for (int64_t h = 0; h < info.heads_q; ++h) zero_row(p.dq, layout.row(p.dq, 0, token, h), d);
    }
    for (int64_t token = layout.covered_k(); token < p.dk.shape[0] && token < p.dv.shape[0]; ++token) {
      for (int64_t h = 0; h < info.heads_kv; ++h) {
        zero_row(p.dk, layout.row(p.dk, 0, token, h), d);
        zero_row(p.dv, layout.row(p.dv, 0, token, h), dv);
      }
    }
  }
  return Status::Ok();
}

}  // namespace flashlane::detail
