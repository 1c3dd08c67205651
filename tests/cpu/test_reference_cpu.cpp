// test_reference_cpu.cpp: checks the CPU reference (src/reference/reference_cpu.cpp) against
// independent formulations written here:
//   - forward: the full score matrix per (batch, head), a mask matrix from the definition of
//     include/flashlane/problem.h written out directly (not MaskRule), softmax, O = P V, LSE
//     (Vaswani et al. 2017, eq. 1; LSE as FlashAttention-2 stores it);
//   - backward: the matrix form of the softmax backward (FlashAttention-2, Dao 2023,
//     arXiv:2307.08691, section 3.2: dV = P^T dO, dP = dO V^T, D = rowsum(dO o O),
//     dS = P o (dP - D), dQ = scale dS K, dK = scale dS^T Q, plus the tanh chain rule of softcap),
//     and central finite differences of L = sum(dout * O) through the reference forward;
//   - low-precision backward (ReferenceNumerics::kLowPrecision): the same matrix form with a
//     fused kernel's roundings written out (fp32 S, P, D, dP, dS; P and dS rounded to the input
//     dtype before dV = P^T dO, dK = scale dS^T Q, dQ = scale dS K), as FlashAttention's
//     ref_lowp (attention_ref with upcast=False, tests/test_util.py of flash-attention) does;
//   - attention sinks: the forward as gpt-oss's eager attention writes it (the visible scores and
//     the sink concatenated into one logit vector, a softmax over all of it, the sink's column
//     dropped before P V, LSE = logsumexp of the vector); dQ/dK/dV by the matrix backward above
//     (unchanged given the LSE), dsink by the formula of problem.h and by central finite
//     differences of L = sum(dout * O) in the float32 sink.
// Every test poisons the outputs first (NaN) and checks that every output element was written.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/attention_rules.h"
#include "core/numeric.h"
#include "dispatch/backends.h"
#include "flashlane/problem.h"
#include "support/host_problem.h"

namespace {

using flashlane::AttentionProblem;
using flashlane::Direction;
using flashlane::DType;
using flashlane::ErrorCode;
using flashlane::MaskType;
using flashlane::ProblemInfo;
using flashlane::Status;
using flashlane::detail::ReferenceNumerics;
using flashlane::test_support::HostProblem;
using flashlane::test_support::HostProblemConfig;
using flashlane::test_support::HostTensor;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr MaskType kMasks[] = {MaskType::kNoMask, MaskType::kCausal, MaskType::kCausalBottomRight};
struct Window { int64_t left, right; };
constexpr Window kWindows[] = {{-1, -1}, {3, -1}, {-1, 2}, {4, 0}, {0, 0}};

std::string join(const std::vector<int32_t>& v) {
  std::string s;
  for (int32_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return "{" + s + "}";
}

std::string describe(const HostProblemConfig& c) {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "dtype=%s mask=%s window=(%lld,%lld) sq=%lld sk=%lld hq=%lld hkv=%lld softcap=%g "
                "varlen=%d seqused=%d",
                flashlane::dtype_name(c.dtype), flashlane::mask_type_name(c.mask),
                static_cast<long long>(c.window_left), static_cast<long long>(c.window_right),
                static_cast<long long>(c.seqlen_q), static_cast<long long>(c.seqlen_k),
                static_cast<long long>(c.heads_q), static_cast<long long>(c.heads_kv), c.softcap,
                static_cast<int>(!c.seqlens_q.empty()), static_cast<int>(!c.seqused_k.empty()));
  std::string out = buf;
  if (!c.seqlens_q.empty()) out += " seqlens_q=" + join(c.seqlens_q) + " seqlens_k=" + join(c.seqlens_k);
  if (!c.seqused_k.empty()) out += " seqused_k=" + join(c.seqused_k);
  if (!c.learnable_sink.empty()) {
    out += " learnable_sink={";
    for (size_t h = 0; h < c.learnable_sink.size(); ++h)
      out += (h ? "," : "") + std::to_string(c.learnable_sink[h]);
    out += "}";
  }
  return out;
}

bool causal_with_right_window(const HostProblemConfig& c) {
  return c.mask != MaskType::kNoMask && c.window_right > 0;
}

/// ProblemInfo from validate(). A causal mask with window_right > 0 is rejected by validation
/// (kWindowInvalid): then nullopt, and the caller skips the case. Any other failure fails the test.
std::optional<ProblemInfo> info_for(const HostProblem& hp, Direction dir) {
  ProblemInfo info;
  const Status st = flashlane::validate(hp.problem(), dir, &info);
  if (!st.ok() && st.code() == ErrorCode::kWindowInvalid && causal_with_right_window(hp.config())) {
    return std::nullopt;
  }
  EXPECT_TRUE(st.ok()) << st.to_string() << " for " << describe(hp.config());
  if (!st.ok()) return std::nullopt;
  return info;
}

// ---------------------------------------------------------------------------------------------
// Independent definitions.

/// Visibility of key j from query i, written from the text of problem.h.
bool bf_visible(MaskType mask, int64_t wl, int64_t wr, int64_t i, int64_t j, int64_t sq,
                int64_t sk_used) {
  if (j < 0 || j >= sk_used) return false;
  const int64_t diag = mask == MaskType::kCausal ? i : i + sk_used - sq;
  if (mask != MaskType::kNoMask && j > diag) return false;
  if (wl >= 0 && j < diag - wl) return false;
  if (wr >= 0 && j > diag + wr) return false;
  return true;
}

double scale_of(const HostProblemConfig& c) {
  return c.softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
}

/// Dense per-(b, h) matrices read from the host tensors.
struct Head {
  int64_t sq = 0, sk = 0, used = 0, d = 0, dv = 0;
  std::vector<double> q, k, v;     // sq x d, sk x d, sk x dv (only rows < used are read)
  std::vector<double> raw, score;  // sq x used: scale q.k and after softcap
  std::vector<char> vis;           // sq x used
};

Head read_head(const HostProblem& hp, int64_t b, int64_t h) {
  const HostProblemConfig& c = hp.config();
  Head m;
  m.sq = hp.seqlen_q(b);
  m.sk = hp.seqlen_k(b);
  m.used = hp.used_k(b);
  m.d = c.head_dim;
  m.dv = hp.head_dim_v();
  const int64_t hk = h / (c.heads_q / c.heads_kv);
  m.q.assign(m.sq * m.d, 0);
  m.k.assign(m.used * m.d, 0);
  m.v.assign(m.used * m.dv, 0);
  for (int64_t i = 0; i < m.sq; ++i)
    for (int64_t x = 0; x < m.d; ++x) m.q[i * m.d + x] = hp.q.get(hp.row_offset(hp.q, b, i, h, false) + x);
  for (int64_t j = 0; j < m.used; ++j) {
    for (int64_t x = 0; x < m.d; ++x) m.k[j * m.d + x] = hp.k.get(hp.row_offset(hp.k, b, j, hk, true) + x);
    for (int64_t x = 0; x < m.dv; ++x) m.v[j * m.dv + x] = hp.v.get(hp.row_offset(hp.v, b, j, hk, true) + x);
  }
  const double scale = scale_of(c);
  m.raw.assign(m.sq * m.used, 0);
  m.score.assign(m.sq * m.used, 0);
  m.vis.assign(m.sq * m.used, 0);
  for (int64_t i = 0; i < m.sq; ++i) {
    for (int64_t j = 0; j < m.used; ++j) {
      double s = 0;
      for (int64_t x = 0; x < m.d; ++x) s += m.q[i * m.d + x] * m.k[j * m.d + x];
      s *= scale;
      m.raw[i * m.used + j] = s;
      m.score[i * m.used + j] = c.softcap > 0 ? c.softcap * std::tanh(s / c.softcap) : s;
      m.vis[i * m.used + j] = bf_visible(c.mask, c.window_left, c.window_right, i, j, m.sq, m.used);
    }
  }
  return m;
}

/// Expected forward outputs, indexed by element offsets of hp.o / hp.lse.
struct ForwardRef {
  std::vector<double> o, lse;
  int64_t masked_rows = 0;
};

ForwardRef brute_forward(const HostProblem& hp) {
  const HostProblemConfig& c = hp.config();
  ForwardRef r;
  r.o.assign(hp.o.buffer_elements(), std::nan(""));
  r.lse.assign(hp.lse.buffer_elements(), std::nan(""));
  for (int64_t b = 0; b < hp.batch(); ++b) {
    for (int64_t h = 0; h < c.heads_q; ++h) {
      const Head m = read_head(hp, b, h);
      for (int64_t i = 0; i < m.sq; ++i) {
        double mx = -kInf;
        for (int64_t j = 0; j < m.used; ++j)
          if (m.vis[i * m.used + j]) mx = std::max(mx, m.score[i * m.used + j]);
        const int64_t o_off = hp.row_offset(hp.o, b, i, h, false);
        if (mx == -kInf) {
          for (int64_t x = 0; x < m.dv; ++x) r.o[o_off + x] = 0.0;
          if (hp.lse.defined()) r.lse[hp.lse_offset(b, i, h)] = -kInf;
          ++r.masked_rows;
          continue;
        }
        std::vector<double> p(m.used, 0.0);
        double sum = 0;
        for (int64_t j = 0; j < m.used; ++j) {
          if (!m.vis[i * m.used + j]) continue;
          p[j] = std::exp(m.score[i * m.used + j] - mx);
          sum += p[j];
        }
        for (int64_t x = 0; x < m.dv; ++x) {
          double acc = 0;
          for (int64_t j = 0; j < m.used; ++j)
            if (m.vis[i * m.used + j]) acc += p[j] / sum * m.v[j * m.dv + x];
          r.o[o_off + x] = acc;
        }
        if (hp.lse.defined()) r.lse[hp.lse_offset(b, i, h)] = mx + std::log(sum);
      }
    }
  }
  return r;
}

/// Expected gradients (indexed by offsets of hp.dq / hp.dk / hp.dv) from the matrix backward,
/// using the o and lse currently in hp (the backward's inputs).
struct BackwardRef {
  std::vector<double> dq, dk, dv;
};

/// lowp: the fused kernel's roundings, f32(x) = x rounded to float once:
///   S = f32(scale Q K^T); softcap: T = f32(tanh(S / c)), S' = f32(c T), dcap = f32(1 - T^2);
///   P = f32(exp(f32(S' - lse))); D = f32(rowsum(dO o O)); dP = f32(dO V^T);
///   dS = f32(P o (dP - D) o dcap) (the product in double, rounded once);
///   then P and dS rounded to the input dtype before the three products (double sums).
BackwardRef brute_backward(const HostProblem& hp, bool lowp = false) {
  const HostProblemConfig& c = hp.config();
  const double scale = scale_of(c);
  const auto r32 = [lowp](double x) { return lowp ? static_cast<double>(static_cast<float>(x)) : x; };
  const auto r16 = [lowp, &c](double x) { return lowp ? flashlane::numeric::round_to(c.dtype, x) : x; };
  const int64_t group = c.heads_q / c.heads_kv;
  BackwardRef r;
  r.dq.assign(hp.dq.buffer_elements(), std::nan(""));
  r.dk.assign(hp.dk.buffer_elements(), std::nan(""));
  r.dv.assign(hp.dv.buffer_elements(), std::nan(""));
  for (int64_t b = 0; b < hp.batch(); ++b) {
    for (int64_t hk = 0; hk < c.heads_kv; ++hk) {
      const int64_t sk = hp.seqlen_k(b), d = c.head_dim, dv = hp.head_dim_v();
      std::vector<double> dK(sk * d, 0.0), dV(sk * dv, 0.0);
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const Head m = read_head(hp, b, h);
        const int64_t n = m.used;
        std::vector<double> dO(m.sq * dv), O(m.sq * dv), lse(m.sq), P(m.sq * n, 0.0), dP(m.sq * n, 0.0),
            dS(m.sq * n, 0.0), Drow(m.sq, 0.0);
        for (int64_t i = 0; i < m.sq; ++i) {
          for (int64_t x = 0; x < dv; ++x) {
            dO[i * dv + x] = hp.dout.get(hp.row_offset(hp.dout, b, i, h, false) + x);
            O[i * dv + x] = hp.o.get(hp.row_offset(hp.o, b, i, h, false) + x);
            Drow[i] += dO[i * dv + x] * O[i * dv + x];
          }
          Drow[i] = r32(Drow[i]);
          lse[i] = hp.lse.get(hp.lse_offset(b, i, h));
        }
        for (int64_t i = 0; i < m.sq; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            if (!m.vis[i * n + j] || lse[i] == -kInf) continue;
            const double raw = r32(m.raw[i * n + j]);
            double score = raw, dcap = 1.0;
            if (c.softcap > 0) {
              const double t = r32(std::tanh(raw / c.softcap));
              score = r32(c.softcap * t);
              dcap = r32(1.0 - t * t);
            }
            P[i * n + j] = r32(std::exp(r32(score - lse[i])));
            for (int64_t x = 0; x < dv; ++x) dP[i * n + j] += dO[i * dv + x] * m.v[j * dv + x];
            dP[i * n + j] = r32(dP[i * n + j]);
            dS[i * n + j] = r16(r32(P[i * n + j] * (dP[i * n + j] - Drow[i]) * dcap));
            P[i * n + j] = r16(P[i * n + j]);  // only dV reads P from here on
          }
        }
        // dQ = scale dS K
        for (int64_t i = 0; i < m.sq; ++i) {
          const int64_t off = hp.row_offset(hp.dq, b, i, h, false);
          for (int64_t x = 0; x < d; ++x) {
            double acc = 0;
            for (int64_t j = 0; j < n; ++j)
              if (m.vis[i * n + j]) acc += dS[i * n + j] * m.k[j * d + x];
            r.dq[off + x] = scale * acc;
          }
        }
        // dK += scale dS^T Q, dV += P^T dO
        for (int64_t j = 0; j < n; ++j) {
          for (int64_t i = 0; i < m.sq; ++i) {
            if (!m.vis[i * n + j]) continue;
            for (int64_t x = 0; x < d; ++x) dK[j * d + x] += scale * dS[i * n + j] * m.q[i * d + x];
            for (int64_t x = 0; x < dv; ++x) dV[j * dv + x] += P[i * n + j] * dO[i * dv + x];
          }
        }
      }
      for (int64_t j = 0; j < sk; ++j) {
        for (int64_t x = 0; x < d; ++x) r.dk[hp.row_offset(hp.dk, b, j, hk, true) + x] = dK[j * d + x];
        for (int64_t x = 0; x < dv; ++x) r.dv[hp.row_offset(hp.dv, b, j, hk, true) + x] = dV[j * dv + x];
      }
    }
  }
  return r;
}

/// Forward with attention sinks as gpt-oss's eager attention computes it: per row, the logit
/// vector z = [visible scores..., sink_h], w = softmax(z), O = sum over the keys of w_j v_j (the
/// sink's weight has no value), LSE = logsumexp(z). A row without visible keys needs no special
/// case: z = [sink_h], so O = 0 and LSE = sink_h.
ForwardRef concat_forward(const HostProblem& hp) {
  const HostProblemConfig& c = hp.config();
  ForwardRef r;
  r.o.assign(hp.o.buffer_elements(), std::nan(""));
  r.lse.assign(hp.lse.buffer_elements(), std::nan(""));
  for (int64_t b = 0; b < hp.batch(); ++b) {
    for (int64_t h = 0; h < c.heads_q; ++h) {
      const Head m = read_head(hp, b, h);
      const double sink = hp.learnable_sink.get(h);
      for (int64_t i = 0; i < m.sq; ++i) {
        std::vector<double> z;
        std::vector<int64_t> key;  // key index of z[t], t < key.size()
        for (int64_t j = 0; j < m.used; ++j) {
          if (!m.vis[i * m.used + j]) continue;
          z.push_back(m.score[i * m.used + j]);
          key.push_back(j);
        }
        z.push_back(sink);
        const double mx = *std::max_element(z.begin(), z.end());
        double sum = 0;
        for (double x : z) sum += std::exp(x - mx);
        const int64_t o_off = hp.row_offset(hp.o, b, i, h, false);
        for (int64_t x = 0; x < m.dv; ++x) {
          double acc = 0;
          for (size_t t = 0; t < key.size(); ++t) acc += std::exp(z[t] - mx) / sum * m.v[key[t] * m.dv + x];
          r.o[o_off + x] = acc;
        }
        if (hp.lse.defined()) r.lse[hp.lse_offset(b, i, h)] = mx + std::log(sum);
        r.masked_rows += key.empty();
      }
    }
  }
  return r;
}

/// dsink_h = -sum over the batch and the rows i of head h of exp(sink_h - lse_i) D_i,
/// D_i = dout_i . o_i, from the o and lse in hp (problem.h). lowp: D and exp(sink - lse) rounded
/// to float32 as a fused kernel keeps them. *magnitude receives sum |terms| per head, the scale
/// of the rounding of the sum.
std::vector<double> brute_dsink(const HostProblem& hp, bool lowp, std::vector<double>* magnitude) {
  const HostProblemConfig& c = hp.config();
  const auto r32 = [lowp](double x) { return lowp ? static_cast<double>(static_cast<float>(x)) : x; };
  std::vector<double> dsink(c.heads_q, 0.0);
  magnitude->assign(c.heads_q, 0.0);
  for (int64_t h = 0; h < c.heads_q; ++h) {
    const double sink = hp.learnable_sink.get(h);
    for (int64_t b = 0; b < hp.batch(); ++b) {
      for (int64_t i = 0; i < hp.seqlen_q(b); ++i) {
        double D = 0;
        for (int64_t x = 0; x < hp.head_dim_v(); ++x)
          D += hp.dout.get(hp.row_offset(hp.dout, b, i, h, false) + x) *
               hp.o.get(hp.row_offset(hp.o, b, i, h, false) + x);
        const double term = r32(std::exp(r32(sink - hp.lse.get(hp.lse_offset(b, i, h))))) * r32(D);
        dsink[h] -= term;
        (*magnitude)[h] += std::fabs(term);
      }
    }
  }
  return dsink;
}

// ---------------------------------------------------------------------------------------------
// Comparison helpers.

/// Unit roundoff 2^-p (p significant bits) of storing a double into `dtype`: the relative
/// error bound of one round-to-nearest. numeric::store rounds 16-bit formats through float
/// (double rounding), which can add one float ulp: 2^-24 more.
double unit_roundoff(DType dtype) {
  switch (dtype) {
    case DType::kFloat16: return std::ldexp(1.0, -11) + std::ldexp(1.0, -24);
    case DType::kBFloat16: return std::ldexp(1.0, -8) + std::ldexp(1.0, -24);
    case DType::kFloat32: return std::ldexp(1.0, -24);
    default: return 1e-12;  // float64: accumulation-order differences only
  }
}
/// Absolute floor: float64 noise of the double computations plus fp16 subnormal spacing.
double abs_floor(DType dtype) { return dtype == DType::kFloat16 ? std::ldexp(1.0, -25) + 1e-12 : 1e-12; }

struct Errors {
  double max_abs = 0;     // max |got - want|
  double max_excess = 0;  // max |got - want| / tol; must stay <= 1
  int64_t bad = 0;        // elements beyond tolerance (non-finite got included)
  int64_t poisoned = 0;   // elements never written
};

/// Compares every element of t's view with want[offset]; tol = rel * |want| + abs.
Errors compare(const HostTensor& t, const std::vector<double>& want, double rel, double abs) {
  Errors e;
  e.poisoned = t.count_poisoned();
  t.for_each_offset([&](int64_t off) {
    const double got = t.get(off), w = want[off];
    if (std::isinf(w) && got == w) return;  // LSE of a fully masked row
    const double err = std::fabs(got - w);
    const double tol = rel * std::fabs(w) + abs;
    if (!(err <= tol)) ++e.bad;
    if (std::isfinite(err)) {
      e.max_abs = std::max(e.max_abs, err);
      e.max_excess = std::max(e.max_excess, err / tol);
    } else {
      e.max_abs = kInf;
    }
  });
  return e;
}

/// Running maxima over a test, per dtype, printed at the end (the numbers of the report).
struct Summary {
  explicit Summary(std::string test_name) : name(std::move(test_name)) {}
  std::string name;
  std::map<DType, double> max_abs;  // O or gradients
  double lse_max_abs = 0;           // LSE (float32 output)
  double max_excess = 0;            // max error / tolerance over everything; must stay <= 1
  int64_t cases = 0, skipped = 0, masked_rows = 0;
  void add(const Errors& e, DType dtype) {
    max_abs[dtype] = std::max(max_abs[dtype], e.max_abs);
    max_excess = std::max(max_excess, e.max_excess);
  }
  void add_lse(const Errors& e) {
    lse_max_abs = std::max(lse_max_abs, e.max_abs);
    max_excess = std::max(max_excess, e.max_excess);
  }
  ~Summary() {
    std::string errs;
    for (const auto& [dt, err] : max_abs) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), " %s:%.3g", flashlane::dtype_name(dt), err);
      errs += buf;
    }
    std::printf("[ %s ] cases=%lld skipped=%lld fully_masked_rows=%lld max_abs_err{%s } "
                "lse_max_abs_err=%.3g max_err/tol=%.3g\n",
                name.c_str(), static_cast<long long>(cases), static_cast<long long>(skipped),
                static_cast<long long>(masked_rows), errs.c_str(), lse_max_abs, max_excess);
  }
};

#define EXPECT_CLEAN(errors, what, cfg)                                                      \
  do {                                                                                       \
    const Errors& e_ = (errors);                                                             \
    EXPECT_EQ(e_.poisoned, 0) << what << " elements never written, " << describe(cfg);      \
    EXPECT_EQ(e_.bad, 0) << what << " beyond tolerance (max abs err " << e_.max_abs << "), " \
                         << describe(cfg);                                                   \
  } while (0)

/// Runs the reference forward on hp and checks it against brute_forward. Returns false when
/// validation rejected the case (skipped).
bool check_forward(HostProblem& hp, Summary& sum) {
  const auto info = info_for(hp, Direction::kForward);
  if (!info) { ++sum.skipped; return false; }
  hp.poison_forward_outputs();
  const Status st = flashlane::detail::reference_cpu_forward(hp.problem(), *info);
  EXPECT_TRUE(st.ok()) << st.to_string();
  const ForwardRef want = hp.learnable_sink.defined() ? concat_forward(hp) : brute_forward(hp);
  const HostProblemConfig& c = hp.config();
  const Errors eo = compare(hp.o, want.o, unit_roundoff(c.dtype), abs_floor(c.dtype));
  // LSE is float32: one rounding of the float64 value.
  const Errors el = compare(hp.lse, want.lse, std::ldexp(1.0, -24), 1e-12);
  EXPECT_CLEAN(eo, "o", c);
  EXPECT_CLEAN(el, "lse", c);
  sum.add(eo, c.dtype);
  sum.add_lse(el);
  ++sum.cases;
  sum.masked_rows += want.masked_rows;
  return true;
}

/// Runs forward then backward on hp (both with `numerics`) and checks the gradients against
/// brute_backward (its low-precision form for kLowPrecision).
bool check_backward(HostProblem& hp, Summary& sum,
                    ReferenceNumerics numerics = ReferenceNumerics::kFloat64) {
  const auto fwd = info_for(hp, Direction::kForward);
  const auto bwd = info_for(hp, Direction::kBackward);
  if (!fwd || !bwd) { ++sum.skipped; return false; }
  hp.poison_outputs();
  Status st = flashlane::detail::reference_cpu_forward(hp.problem(), *fwd, numerics);
  EXPECT_TRUE(st.ok()) << st.to_string();
  st = flashlane::detail::reference_cpu_backward(hp.problem(), *bwd, numerics);
  EXPECT_TRUE(st.ok()) << st.to_string();
  const BackwardRef want = brute_backward(hp, numerics == ReferenceNumerics::kLowPrecision);
  const HostProblemConfig& c = hp.config();
  const double rel = unit_roundoff(c.dtype), abs = abs_floor(c.dtype);
  const Errors eq = compare(hp.dq, want.dq, rel, abs);
  const Errors ek = compare(hp.dk, want.dk, rel, abs);
  const Errors ev = compare(hp.dv, want.dv, rel, abs);
  EXPECT_CLEAN(eq, "dq", c);
  EXPECT_CLEAN(ek, "dk", c);
  EXPECT_CLEAN(ev, "dv", c);
  sum.add(eq, c.dtype);
  sum.add(ek, c.dtype);
  sum.add(ev, c.dtype);
  if (hp.dlearnable_sink.defined()) {
    // dlearnable_sink is float32: its final rounding, plus the rounding of the sum (the
    // emulation's float32 D may land one float32 ulp apart, summed in another order).
    const bool lowp = numerics == ReferenceNumerics::kLowPrecision &&
                      (c.dtype == DType::kBFloat16 || c.dtype == DType::kFloat16);
    std::vector<double> magnitude;
    const std::vector<double> want_dsink = brute_dsink(hp, lowp, &magnitude);
    Errors es;
    es.poisoned = hp.dlearnable_sink.count_poisoned();
    for (int64_t h = 0; h < c.heads_q; ++h) {
      const double got = hp.dlearnable_sink.get(h), w = want_dsink[h];
      const double tol = std::ldexp(1.0, -24) * std::fabs(w) +
                         (lowp ? std::ldexp(1.0, -22) : 1e-12) * magnitude[h] + 1e-12;
      const double err = std::fabs(got - w);
      es.bad += !(err <= tol);
      es.max_abs = std::max(es.max_abs, err);
      es.max_excess = std::max(es.max_excess, err / tol);
    }
    EXPECT_CLEAN(es, "dlearnable_sink", c);
    sum.add(es, DType::kFloat32);
  }
  ++sum.cases;
  return true;
}

HostProblemConfig small_config(DType dtype, MaskType mask, Window w, int64_t sq, int64_t sk,
                               int64_t heads_kv, double softcap, uint64_t seed) {
  HostProblemConfig c;
  c.dtype = dtype;
  c.batch = 2;
  c.seqlen_q = sq;
  c.seqlen_k = sk;
  c.heads_q = 4;
  c.heads_kv = heads_kv;
  c.head_dim = 16;
  c.mask = mask;
  c.window_left = w.left;
  c.window_right = w.right;
  c.softcap = softcap;
  c.value_scale = 2.0;  // scores of order 1 to 3: a peaked softmax
  if (heads_kv == 1) c.softmax_scale = 0.4;  // explicit scale on half the cases
  c.seed = seed;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Tests.

// The brute-force mask definition above and MaskRule (used by every backend) agree.
TEST(ReferenceCpu, MaskRuleAgreesWithProblemDefinition) {
  int64_t checked = 0;
  for (MaskType mask : kMasks) {
    for (int64_t wl = -1; wl <= 4; ++wl) {
      for (int64_t wr = -1; wr <= 4; ++wr) {
        if (mask != MaskType::kNoMask && wr > 0) continue;  // rejected by validation
        flashlane::MaskRule rule;
        rule.window_left = wl;
        rule.window_right = mask == MaskType::kNoMask ? wr : 0;
        rule.bottom_right = mask != MaskType::kCausal;
        for (int64_t sq = 0; sq <= 9; ++sq) {
          for (int64_t sk = 0; sk <= 9; ++sk) {
            for (int64_t i = 0; i < sq; ++i) {
              int64_t first = 0, last = 0;
              rule.key_range(i, sq, sk, &first, &last);
              for (int64_t j = -1; j <= sk; ++j) {
                const bool want = bf_visible(mask, wl, wr, i, j, sq, sk);
                ASSERT_EQ(rule.visible(i, j, sq, sk), want)
                    << "mask " << flashlane::mask_type_name(mask) << " window " << wl << "," << wr
                    << " i=" << i << " j=" << j << " sq=" << sq << " sk=" << sk;
                ASSERT_EQ(j >= first && j < last, want) << "key_range, i=" << i << " j=" << j;
                ++checked;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 100000);
}

// Every mask x window x (seqlen_q, seqlen_k) x GQA x softcap, float64, against the brute force
// with 1e-12 relative tolerance.
TEST(ReferenceCpu, ForwardFloat64MatchesBruteForce) {
  Summary sum{"ForwardFloat64"};
  const int64_t shapes[][2] = {{5, 9}, {9, 5}, {17, 17}};
  uint64_t seed = 1;
  for (MaskType mask : kMasks)
    for (Window w : kWindows)
      for (const auto& s : shapes)
        for (int64_t hkv : {1, 2})
          for (double cap : {0.0, 0.5}) {
            HostProblem hp(small_config(DType::kFloat64, mask, w, s[0], s[1], hkv, cap, seed++));
            check_forward(hp, sum);
          }
  EXPECT_EQ(sum.cases, 156);  // 180 minus the 24 causal cases with window_right > 0
  EXPECT_GT(sum.masked_rows, 0);
  EXPECT_LE(sum.max_excess, 1.0);
}

// bfloat16 / float16 / float32 inputs: the brute force on the same rounded inputs; the output
// may differ only by its final rounding.
TEST(ReferenceCpu, ForwardLowPrecisionMatchesBruteForce) {
  Summary sum{"ForwardLowPrecision"};
  uint64_t seed = 1000;
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (MaskType mask : kMasks)
      for (Window w : {Window{-1, -1}, Window{3, -1}, Window{4, 0}})
        for (double cap : {0.0, 0.5}) {
          HostProblem hp(small_config(dt, mask, w, 9, 17, 2, cap, seed++));
          check_forward(hp, sum);
        }
  EXPECT_EQ(sum.cases, 54);
  EXPECT_LE(sum.max_excess, 1.0);
}

HostProblemConfig varlen_config(DType dtype, MaskType mask, Window w, int64_t heads_kv,
                                double softcap, bool seqused, uint64_t seed) {
  HostProblemConfig c;
  c.dtype = dtype;
  // Sequences: q longer than k, k longer than q, equal, empty q, empty k.
  c.seqlens_q = {7, 3, 6, 0, 4};
  c.seqlens_k = {4, 9, 6, 5, 0};
  if (seqused) c.seqused_k = {2, 6, 0, 3, 0};
  c.nan_unused_kv = true;  // K/V rows beyond seqused_k hold NaN
  c.heads_q = 4;
  c.heads_kv = heads_kv;
  c.head_dim = 16;
  c.head_dim_v = 8;
  c.mask = mask;
  c.window_left = w.left;
  c.window_right = w.right;
  c.softcap = softcap;
  c.value_scale = 2.0;
  c.seed = seed;
  return c;
}

// Varlen, with and without seqused_k (NaN planted in the unused K/V rows), every mask and window,
// GQA and MQA, softcap, head_dim_v != head_dim.
TEST(ReferenceCpu, ForwardVarlenMatchesBruteForce) {
  Summary sum{"ForwardVarlen"};
  uint64_t seed = 2000;
  for (bool seqused : {false, true})
    for (MaskType mask : kMasks)
      for (Window w : kWindows)
        for (int64_t hkv : {1, 2})
          for (double cap : {0.0, 0.5}) {
            HostProblem hp(varlen_config(DType::kFloat64, mask, w, hkv, cap, seqused, seed++));
            if (check_forward(hp, sum)) {
              int64_t nonfinite = 0;
              hp.o.for_each_offset([&](int64_t off) { nonfinite += !std::isfinite(hp.o.get(off)); });
              EXPECT_EQ(nonfinite, 0) << describe(hp.config());
            }
          }
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    HostProblem hp(varlen_config(dt, MaskType::kCausalBottomRight, {3, -1}, 2, 0.5, true, seed++));
    check_forward(hp, sum);
  }
  EXPECT_EQ(sum.cases, 106);  // 122 minus the 16 causal cases with window_right > 0
  EXPECT_GT(sum.masked_rows, 0);
  EXPECT_LE(sum.max_excess, 1.0);
}

// Strided tensors: padding after each head row, each token and each sequence (bshd), and the
// heads-major memory order; all padding holds NaN, K/V beyond seqused_k hold NaN. The output
// must match, stay finite, and nothing outside the output views may change.
TEST(ReferenceCpu, ForwardStridedWithNaNPadding) {
  Summary sum{"ForwardStrided"};
  uint64_t seed = 3000;
  for (bool heads_major : {false, true})
    for (bool varlen : {false, true})
      for (MaskType mask : kMasks) {
        HostProblemConfig c = small_config(DType::kFloat64, mask, {5, -1}, 11, 13, 2, 0.0, seed++);
        c.pad_dim = 8;
        c.pad_heads = 3;
        c.pad_tokens = 2;
        c.heads_major = heads_major;
        c.nan_unused_kv = true;
        if (varlen) {
          c.seqlens_q = {11, 5, 8};
          c.seqlens_k = {13, 8, 3};
          c.seqused_k = {9, 8, 1};
        } else {
          c.seqused_k = {10, 4};
        }
        HostProblem hp(c);
        ASSERT_TRUE(check_forward(hp, sum));
        int64_t nonfinite = 0;
        hp.o.for_each_offset([&](int64_t off) { nonfinite += !std::isfinite(hp.o.get(off)); });
        EXPECT_EQ(nonfinite, 0) << describe(c);
        EXPECT_EQ(hp.o.count_padding_changed(), 0) << describe(c);
        EXPECT_EQ(hp.lse.count_padding_changed(), 0) << describe(c);
      }
  EXPECT_EQ(sum.cases, 12);
  EXPECT_LE(sum.max_excess, 1.0);
}

// Rows with no visible key: O = 0 and LSE = -inf exactly; their dQ is exactly 0, keys no query
// sees get dK = dV = 0 exactly, and nothing is NaN.
TEST(ReferenceCpu, FullyMaskedRowsAreZeroAndMinusInf) {
  struct Case { MaskType mask; Window w; int64_t sq, sk; std::vector<int32_t> used; };
  const Case cases[] = {
      {MaskType::kCausalBottomRight, {-1, -1}, 9, 5, {}},  // rows 0..3 see nothing
      {MaskType::kCausal, {0, 0}, 9, 5, {}},               // rows 5..8 see nothing
      {MaskType::kNoMask, {-1, -1}, 6, 6, {0, 3}},         // batch 0 uses no key at all
      {MaskType::kNoMask, {1, 0}, 4, 9, {9, 2}},           // window before the first key
      {MaskType::kCausal, {2, 0}, 6, 6, {0, 6}},
  };
  int64_t masked_total = 0;
  uint64_t seed = 4000;
  for (const Case& cs : cases) {
    HostProblemConfig c = small_config(DType::kFloat64, cs.mask, cs.w, cs.sq, cs.sk, 2, 0.5, seed++);
    c.seqused_k = cs.used;
    c.nan_unused_kv = true;
    HostProblem hp(c);
    const auto fwd = info_for(hp, Direction::kForward);
    const auto bwd = info_for(hp, Direction::kBackward);
    ASSERT_TRUE(fwd && bwd);
    ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), *fwd).ok());
    ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp.problem(), *bwd).ok());
    EXPECT_EQ(hp.o.count_poisoned() + hp.lse.count_poisoned() + hp.dq.count_poisoned() +
                  hp.dk.count_poisoned() + hp.dv.count_poisoned(), 0);
    int64_t masked = 0, seen_keys_zero_violations = 0, nonfinite = 0;
    for (int64_t b = 0; b < hp.batch(); ++b) {
      const int64_t used = hp.used_k(b);
      std::vector<char> key_seen(hp.seqlen_k(b), 0);
      for (int64_t i = 0; i < cs.sq; ++i) {
        bool any = false;
        for (int64_t j = 0; j < used; ++j) {
          if (bf_visible(c.mask, c.window_left, c.window_right, i, j, cs.sq, used)) {
            any = true;
            key_seen[j] = 1;
          }
        }
        for (int64_t h = 0; h < c.heads_q; ++h) {
          const double lse = hp.lse.get(hp.lse_offset(b, i, h));
          for (int64_t x = 0; x < c.head_dim; ++x) {
            const double ov = hp.o.get(hp.row_offset(hp.o, b, i, h, false) + x);
            const double dqv = hp.dq.get(hp.row_offset(hp.dq, b, i, h, false) + x);
            nonfinite += !std::isfinite(ov) + !std::isfinite(dqv);
            if (!any) {
              EXPECT_EQ(ov, 0.0);
              EXPECT_EQ(dqv, 0.0);
            }
          }
          if (!any) {
            EXPECT_EQ(lse, -kInf) << "b=" << b << " i=" << i;
            ++masked;
          } else {
            EXPECT_TRUE(std::isfinite(lse));
          }
        }
      }
      for (int64_t j = 0; j < hp.seqlen_k(b); ++j) {
        for (int64_t h = 0; h < c.heads_kv; ++h) {
          for (int64_t x = 0; x < c.head_dim; ++x) {
            const double dkv = hp.dk.get(hp.row_offset(hp.dk, b, j, h, true) + x);
            const double dvv = hp.dv.get(hp.row_offset(hp.dv, b, j, h, true) + x);
            nonfinite += !std::isfinite(dkv) + !std::isfinite(dvv);
            if (!key_seen[j]) seen_keys_zero_violations += (dkv != 0.0) + (dvv != 0.0);
          }
        }
      }
    }
    EXPECT_GT(masked, 0) << describe(c);
    EXPECT_EQ(nonfinite, 0) << describe(c);
    EXPECT_EQ(seen_keys_zero_violations, 0) << describe(c);
    masked_total += masked;
  }
  std::printf("[ FullyMasked ] fully masked (row, head) pairs checked: %lld\n",
              static_cast<long long>(masked_total));
}

// Backward, float64: every mask x window x shape x GQA x softcap against the matrix backward.
TEST(ReferenceCpu, BackwardFloat64MatchesBruteForce) {
  Summary sum{"BackwardFloat64"};
  const int64_t shapes[][2] = {{5, 9}, {9, 5}, {17, 17}};
  uint64_t seed = 5000;
  for (MaskType mask : kMasks)
    for (Window w : kWindows)
      for (const auto& s : shapes)
        for (int64_t hkv : {1, 2})
          for (double cap : {0.0, 0.5}) {
            HostProblem hp(small_config(DType::kFloat64, mask, w, s[0], s[1], hkv, cap, seed++));
            check_backward(hp, sum);
          }
  EXPECT_EQ(sum.cases, 156);
  EXPECT_LE(sum.max_excess, 1.0);
}

// Backward on varlen (with seqused_k and NaN in the unused K/V rows) and on strided tensors, and
// on bfloat16 / float16 inputs (matrix backward on the same rounded inputs, o and lse).
TEST(ReferenceCpu, BackwardVarlenStridedLowPrecisionMatchesBruteForce) {
  Summary sum{"BackwardVarlenStridedLowPrecision"};
  uint64_t seed = 6000;
  for (bool seqused : {false, true})
    for (MaskType mask : kMasks)
      for (Window w : kWindows)
        for (double cap : {0.0, 0.5}) {
          HostProblem hp(varlen_config(DType::kFloat64, mask, w, 2, cap, seqused, seed++));
          if (check_backward(hp, sum)) {
            int64_t nonfinite = 0;
            for (const HostTensor* t : {&hp.dq, &hp.dk, &hp.dv})
              t->for_each_offset([&](int64_t off) { nonfinite += !std::isfinite(t->get(off)); });
            EXPECT_EQ(nonfinite, 0) << describe(hp.config());
          }
        }
  for (bool heads_major : {false, true}) {
    HostProblemConfig c = small_config(DType::kFloat64, MaskType::kCausalBottomRight, {4, 0}, 11, 13,
                                       1, 0.5, seed++);
    c.pad_dim = 8;
    c.pad_heads = 3;
    c.pad_tokens = 2;
    c.heads_major = heads_major;
    c.seqused_k = {12, 5};
    c.nan_unused_kv = true;
    HostProblem hp(c);
    ASSERT_TRUE(check_backward(hp, sum));
    for (const HostTensor* t : {&hp.dq, &hp.dk, &hp.dv}) EXPECT_EQ(t->count_padding_changed(), 0);
  }
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (MaskType mask : kMasks)
      for (double cap : {0.0, 0.5}) {
        HostProblem hp(small_config(dt, mask, {6, -1}, 9, 17, 2, cap, seed++));
        check_backward(hp, sum);
      }
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    HostProblem hp(varlen_config(dt, MaskType::kCausal, {3, 0}, 1, 0.5, true, seed++));
    check_backward(hp, sum);
  }
  EXPECT_EQ(sum.cases, 74);
  EXPECT_LE(sum.max_excess, 1.0);
}

// Low-precision backward (ReferenceNumerics::kLowPrecision) on bfloat16 / float16 against the
// brute-force emulation of a fused kernel's roundings (brute_backward with lowp): softcap, causal
// GQA, and varlen with seqused_k (empty sequences, fully masked rows, NaN in the unused K/V rows).
// Both sum the same rounded terms in double (in different orders), so the stored gradients may
// differ from the emulation by their final rounding only, the tolerance of check_backward.
// Two cases use a softmax scale that is not a power of two, so that scaling dS before its
// rounding (instead of dQ and dK at the end) would show.
TEST(ReferenceCpu, BackwardLowPrecisionMatchesBruteForceEmulation) {
  Summary sum{"BackwardLowPrecisionEmulation"};
  uint64_t seed = 6500;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    {  // softcap, no mask, MHA
      HostProblemConfig c = small_config(dt, MaskType::kNoMask, {-1, -1}, 9, 17, 4, 1.5, seed++);
      c.softmax_scale = 0.3;
      HostProblem hp(c);
      ASSERT_TRUE(check_backward(hp, sum, ReferenceNumerics::kLowPrecision));
    }
    {  // causal (top-left), GQA 4/2, seqlen_q > seqlen_k
      HostProblemConfig c = small_config(dt, MaskType::kCausal, {-1, -1}, 17, 13, 2, 0.0, seed++);
      HostProblem hp(c);
      ASSERT_TRUE(check_backward(hp, sum, ReferenceNumerics::kLowPrecision));
    }
    {  // varlen + seqused_k, causal bottom-right with a window, GQA 4/2, softcap
      HostProblemConfig c = varlen_config(dt, MaskType::kCausalBottomRight, {3, -1}, 2, 2.0, true, seed++);
      c.softmax_scale = 0.35;
      HostProblem hp(c);
      ASSERT_TRUE(check_backward(hp, sum, ReferenceNumerics::kLowPrecision));
      int64_t nonfinite = 0;
      for (const HostTensor* t : {&hp.dq, &hp.dk, &hp.dv})
        t->for_each_offset([&](int64_t off) { nonfinite += !std::isfinite(t->get(off)); });
      EXPECT_EQ(nonfinite, 0) << describe(hp.config());
    }
  }
  EXPECT_EQ(sum.cases, 6);
  EXPECT_LE(sum.max_excess, 1.0);
}

// kLowPrecision is not the float64 path in disguise: on bfloat16 the gradients differ from
// kFloat64's (P and dS each carry one bf16 rounding, about 2^-9 relative, before the sums) by a
// nonzero amount of the order of the output rounding, below 1e-2 of the largest gradient; on
// float32 inputs (nothing to round to) the two modes are bitwise equal.
TEST(ReferenceCpu, BackwardLowPrecisionDiffersFromFloat64) {
  for (DType dt : {DType::kBFloat16, DType::kFloat32}) {
    HostProblemConfig c = small_config(dt, MaskType::kCausalBottomRight, {-1, -1}, 48, 64, 2, 0.0, 6600);
    c.head_dim = 32;
    HostProblem lowp(c), f64(c);
    const auto fwd = info_for(lowp, Direction::kForward);
    const auto bwd = info_for(lowp, Direction::kBackward);
    ASSERT_TRUE(fwd && bwd);
    // Same o and lse for both backward runs.
    ASSERT_TRUE(flashlane::detail::reference_cpu_forward(lowp.problem(), *fwd).ok());
    f64.o.bytes = lowp.o.bytes;
    f64.lse.bytes = lowp.lse.bytes;
    ASSERT_TRUE(flashlane::detail::reference_cpu_backward(lowp.problem(), *bwd,
                                                          ReferenceNumerics::kLowPrecision).ok());
    ASSERT_TRUE(flashlane::detail::reference_cpu_backward(f64.problem(), *bwd,
                                                          ReferenceNumerics::kFloat64).ok());
    if (dt == DType::kFloat32) {
      EXPECT_TRUE(lowp.dq.bytes == f64.dq.bytes && lowp.dk.bytes == f64.dk.bytes &&
                  lowp.dv.bytes == f64.dv.bytes);
      continue;
    }
    for (auto [a, b, name] : {std::tuple{&lowp.dq, &f64.dq, "dq"}, std::tuple{&lowp.dk, &f64.dk, "dk"},
                              std::tuple{&lowp.dv, &f64.dv, "dv"}}) {
      double gmax = 0, diff = 0;
      int64_t differing = 0, count = 0;
      b->for_each_offset([&](int64_t off) {
        gmax = std::max(gmax, std::fabs(b->get(off)));
        const double e = std::fabs(a->get(off) - b->get(off));
        diff = std::max(diff, e);
        differing += e > 0;
        ++count;
      });
      std::printf("[ LowpVsFloat64 ] %s: max|lowp - f64| = %.3g, max|f64| = %.3g, differing "
                  "elements %lld of %lld\n",
                  name, diff, gmax, static_cast<long long>(differing), static_cast<long long>(count));
      EXPECT_GT(gmax, 0.1) << name;
      EXPECT_GT(diff, 0.0) << name;
      EXPECT_LE(diff, 1e-2 * gmax) << name;
      EXPECT_GT(differing, count / 50) << name << ": the roundings should show in many elements";
    }
  }
}

// Random problems (fixed seed): bshd or varlen, random sequence lengths (some 0), seqused_k,
// mask, window, GQA ratio, head dims (head_dim_v != head_dim too), softcap, softmax scale,
// padded strides and heads-major memory order; forward and backward against the brute force.
TEST(ReferenceCpu, RandomProblemsMatchBruteForce) {
  Summary fsum{"RandomForward"}, bsum{"RandomBackward"};
  std::mt19937_64 rng(9000);
  auto pick = [&](int64_t lo, int64_t hi) {  // uniform integer in [lo, hi]
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  const int64_t heads[][2] = {{1, 1}, {2, 1}, {4, 2}, {6, 3}, {8, 1}, {3, 3}};
  for (int n = 0; n < 300; ++n) {
    HostProblemConfig c;
    c.dtype = n % 10 == 9 ? DType::kBFloat16 : DType::kFloat64;
    const auto& hh = heads[pick(0, 5)];
    c.heads_q = hh[0];
    c.heads_kv = hh[1];
    c.head_dim = 8 * pick(1, 4);
    c.head_dim_v = 8 * pick(1, 4);
    c.mask = kMasks[pick(0, 2)];
    c.window_left = pick(-1, 6);
    c.window_right = c.mask == MaskType::kNoMask ? pick(-1, 6) : pick(-1, 0);
    c.softcap = std::array<double, 3>{0.0, 0.5, 5.0}[pick(0, 2)];
    if (pick(0, 1)) c.softmax_scale = 0.05 * pick(1, 20);
    c.value_scale = 0.5 * pick(1, 6);
    c.seed = rng();
    const bool varlen = pick(0, 1);
    const int64_t batch = pick(1, 3);
    if (varlen) {
      for (int64_t b = 0; b < batch; ++b) {
        c.seqlens_q.push_back(static_cast<int32_t>(pick(0, 24)));
        c.seqlens_k.push_back(static_cast<int32_t>(pick(0, 24)));
      }
    } else {
      c.batch = batch;
      c.seqlen_q = pick(1, 24);
      c.seqlen_k = pick(1, 24);
    }
    if (pick(0, 2) == 0) {
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t len = varlen ? c.seqlens_k[b] : c.seqlen_k;
        c.seqused_k.push_back(static_cast<int32_t>(pick(0, len)));
      }
      c.nan_unused_kv = true;
    }
    if (pick(0, 1)) {
      c.pad_dim = 8 * pick(0, 2);
      c.pad_heads = pick(0, 5);
      c.pad_tokens = pick(0, 3);
      c.heads_major = pick(0, 1);
    }
    const bool forward_only = pick(0, 4) == 0;
    if (forward_only) {
      c.with_lse = pick(0, 1);
      c.with_grads = false;
    }
    HostProblem hp(c);
    if (forward_only) {
      ASSERT_TRUE(check_forward(hp, fsum)) << describe(c);
    } else {
      ASSERT_TRUE(check_forward(hp, fsum)) << describe(c);
      ASSERT_TRUE(check_backward(hp, bsum)) << describe(c);
    }
    for (const HostTensor* t : {&hp.o, &hp.lse, &hp.dq, &hp.dk, &hp.dv})
      EXPECT_EQ(t->count_padding_changed(), 0) << describe(c);
  }
  EXPECT_EQ(fsum.cases, 300);
  EXPECT_GT(bsum.cases, 200);
  EXPECT_GT(fsum.masked_rows, 0);
  EXPECT_LE(fsum.max_excess, 1.0);
  EXPECT_LE(bsum.max_excess, 1.0);
}

/// L = sum(dout * O) with O from the reference forward.
double loss(HostProblem& hp, const ProblemInfo& info) {
  EXPECT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), info).ok());
  double l = 0;
  hp.o.for_each_offset([&](int64_t off) { l += hp.dout.get(off) * hp.o.get(off); });
  return l;
}

// Backward against central finite differences of L = sum(dout * O) on float64 inputs.
// The backward recomputes P from the float32 LSE (as FlashAttention does), which bounds its
// agreement with the exact gradient at about 1e-7 relative; the tolerance is 1e-6 of the
// largest gradient.
TEST(ReferenceCpu, BackwardMatchesFiniteDifferences) {
  Summary sum{"BackwardFiniteDifferences"};
  struct Case { MaskType mask; Window w; int64_t hkv; double cap; bool varlen; };
  std::vector<Case> cases;
  for (MaskType mask : kMasks)
    for (double cap : {0.0, 0.5}) {
      cases.push_back({mask, {-1, -1}, 2, cap, false});
      cases.push_back({mask, {2, mask == MaskType::kNoMask ? 1 : 0}, 1, cap, false});
      cases.push_back({mask, {3, -1}, 2, cap, true});
    }
  uint64_t seed = 7000;
  const double h = 1e-6;
  for (const Case& cs : cases) {
    HostProblemConfig c;
    c.dtype = DType::kFloat64;
    c.heads_q = 4;
    c.heads_kv = cs.hkv;
    c.head_dim = 8;
    c.mask = cs.mask;
    c.window_left = cs.w.left;
    c.window_right = cs.w.right;
    c.softcap = cs.cap;
    c.softmax_scale = 0.5;
    c.value_scale = 1.5;
    c.seed = seed++;
    if (cs.varlen) {
      c.seqlens_q = {5, 3};
      c.seqlens_k = {4, 7};
      c.seqused_k = {4, 5};
      c.nan_unused_kv = true;
    } else {
      c.batch = 1;
      c.seqlen_q = 5;
      c.seqlen_k = 7;
    }
    HostProblem hp(c);
    const auto fwd = info_for(hp, Direction::kForward);
    const auto bwd = info_for(hp, Direction::kBackward);
    ASSERT_TRUE(fwd && bwd) << describe(c);
    ASSERT_EQ(hp.o.view.stride, hp.dout.view.stride);
    for (auto [x, g] : {std::pair{&hp.q, &hp.dq}, std::pair{&hp.k, &hp.dk}, std::pair{&hp.v, &hp.dv}})
      ASSERT_EQ(x->view.stride, g->view.stride);

    // Finite differences first (they overwrite o), then a clean forward + backward.
    std::vector<double> fd_q(hp.q.buffer_elements()), fd_k(hp.k.buffer_elements()),
        fd_v(hp.v.buffer_elements());
    for (auto [x, fd] : {std::pair{&hp.q, &fd_q}, std::pair{&hp.k, &fd_k}, std::pair{&hp.v, &fd_v}}) {
      x->for_each_offset([&](int64_t off) {
        const double x0 = x->get(off);
        x->set(off, x0 + h);
        const double lp = loss(hp, *fwd);
        x->set(off, x0 - h);
        const double lm = loss(hp, *fwd);
        x->set(off, x0);
        (*fd)[off] = std::isnan(x0) ? 0.0 : (lp - lm) / (2 * h);  // NaN rows: never read
      });
    }
    hp.poison_outputs();
    ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), *fwd).ok());
    ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp.problem(), *bwd).ok());
    double gmax = 0;
    for (const HostTensor* g : {&hp.dq, &hp.dk, &hp.dv})
      g->for_each_offset([&](int64_t off) { gmax = std::max(gmax, std::fabs(g->get(off))); });
    ASSERT_GT(gmax, 1e-3) << describe(c);
    const double tol = 1e-6 * gmax;
    for (auto [g, fd, name] : {std::tuple{&hp.dq, &fd_q, "dq"}, std::tuple{&hp.dk, &fd_k, "dk"},
                               std::tuple{&hp.dv, &fd_v, "dv"}}) {
      const Errors e = compare(*g, *fd, 0.0, tol);
      EXPECT_CLEAN(e, name, c);
      sum.add(e, c.dtype);
    }
    ++sum.cases;
  }
  EXPECT_EQ(sum.cases, 18);
  EXPECT_LE(sum.max_excess, 1.0);
}

// A problem large enough to run on several threads: deterministic (two runs bitwise equal) and
// spot-checked against the brute force; prints its time.
TEST(ReferenceCpu, ThreadedProblemIsDeterministicAndCorrect) {
  HostProblemConfig c;
  c.dtype = DType::kFloat32;
  c.batch = 2;
  c.seqlen_q = 192;
  c.seqlen_k = 160;
  c.heads_q = 6;
  c.heads_kv = 2;
  c.head_dim = 64;
  c.mask = MaskType::kCausalBottomRight;
  c.window_left = 100;
  c.softcap = 2.0;
  c.seed = 8000;
  HostProblem hp(c);
  const auto fwd = info_for(hp, Direction::kForward);
  const auto bwd = info_for(hp, Direction::kBackward);
  ASSERT_TRUE(fwd && bwd);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), *fwd).ok());
  ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp.problem(), *bwd).ok());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ Threaded ] forward+backward [2,192/160,6/2,64] float32: %.3f s\n", secs);
  const std::vector<unsigned char> o1 = hp.o.bytes, dq1 = hp.dq.bytes, dk1 = hp.dk.bytes, dv1 = hp.dv.bytes;
  hp.poison_outputs();
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), *fwd).ok());
  ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp.problem(), *bwd).ok());
  EXPECT_TRUE(o1 == hp.o.bytes && dq1 == hp.dq.bytes && dk1 == hp.dk.bytes && dv1 == hp.dv.bytes);

  Summary sum{"Threaded"};
  const ForwardRef fr = brute_forward(hp);
  const BackwardRef br = brute_backward(hp);
  const double rel = unit_roundoff(c.dtype);
  for (auto [t, want] : {std::pair{&hp.o, &fr.o}, std::pair{&hp.dq, &br.dq}, std::pair{&hp.dk, &br.dk},
                         std::pair{&hp.dv, &br.dv}}) {
    const Errors e = compare(*t, *want, rel, 1e-12);
    EXPECT_CLEAN(e, "output", c);
    sum.add(e, c.dtype);
  }
  ++sum.cases;
}

// ---------------------------------------------------------------------------------------------
// Attention sinks (learnable_sink / dlearnable_sink).

/// heads_q sink logits in [-2, 4), multiples of 2^-8 (exact in float32, and sink +- 2^-12 too, for
/// the finite differences), from `seed`. Several exceed the softcaps used here (0.5, 1.5).
std::vector<float> random_sinks(int64_t heads_q, uint64_t seed) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + 17);
  std::vector<float> s(static_cast<size_t>(heads_q));
  for (float& x : s) x = static_cast<float>(static_cast<int64_t>(rng() % 1536) - 512) / 256.0f;
  return s;
}

HostProblemConfig with_sinks(HostProblemConfig c) {
  c.learnable_sink = random_sinks(c.heads_q, c.seed);
  return c;
}

// Every mask x window x (seqlen_q, seqlen_k) x GQA/MQA x softcap, float64, against the
// concatenated softmax of gpt-oss; the sink is neither scaled (explicit and default scales) nor
// capped (sinks up to 4 with softcap 0.5).
TEST(ReferenceCpuSinks, ForwardFloat64MatchesConcatenatedSoftmax) {
  Summary sum{"SinkForwardFloat64"};
  const int64_t shapes[][2] = {{5, 9}, {9, 5}, {17, 17}};
  uint64_t seed = 11000;
  for (MaskType mask : kMasks)
    for (Window w : kWindows)
      for (const auto& s : shapes)
        for (int64_t hkv : {1, 2})
          for (double cap : {0.0, 0.5}) {
            HostProblem hp(with_sinks(small_config(DType::kFloat64, mask, w, s[0], s[1], hkv, cap, seed++)));
            check_forward(hp, sum);
          }
  EXPECT_EQ(sum.cases, 156);
  EXPECT_GT(sum.masked_rows, 0);
  EXPECT_LE(sum.max_excess, 1.0);
}

// Varlen with empty sequences, seqused_k with NaN beyond it, head_dim_v != head_dim; and
// bfloat16 / float16 / float32 inputs (the output may differ only by its final rounding).
TEST(ReferenceCpuSinks, ForwardVarlenAndLowPrecisionInputsMatchConcatenatedSoftmax) {
  Summary sum{"SinkForwardVarlenLowPrecision"};
  uint64_t seed = 12000;
  for (bool seqused : {false, true})
    for (MaskType mask : kMasks)
      for (Window w : kWindows)
        for (int64_t hkv : {1, 2}) {
          HostProblem hp(with_sinks(varlen_config(DType::kFloat64, mask, w, hkv, 0.5 * hkv - 0.5, seqused, seed++)));
          check_forward(hp, sum);
        }
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32})
    for (MaskType mask : kMasks)
      for (double cap : {0.0, 0.5}) {
        HostProblem hp(with_sinks(small_config(dt, mask, {3, -1}, 9, 17, 2, cap, seed++)));
        check_forward(hp, sum);
      }
  EXPECT_EQ(sum.cases, 52 + 18);
  EXPECT_GT(sum.masked_rows, 0);
  EXPECT_LE(sum.max_excess, 1.0);
}

// With sinks, O is the sink-free O scaled by l / (l + exp(sink)) = exp(lse - lse_sink) and
// lse_sink = log(exp(lse) + exp(sink)); a row without visible keys has O = 0 and LSE = sink
// exactly (bitwise), and its dQ is 0. Every query row of sequence 0 (causal bottom-right,
// seqlen_q > used keys) up to the diagonal and all rows of the key-less sequences see nothing.
TEST(ReferenceCpuSinks, SinkRescalesRowsAndRowsWithoutKeysGiveTheSink) {
  HostProblemConfig c = varlen_config(DType::kFloat64, MaskType::kCausalBottomRight, {-1, -1}, 2, 0.0,
                                      true, 13000);
  HostProblem plain(c), sinks(with_sinks(c));
  const auto fwd = info_for(sinks, Direction::kForward);
  const auto bwd = info_for(sinks, Direction::kBackward);
  ASSERT_TRUE(fwd && bwd);
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(plain.problem(), *fwd).ok());
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(sinks.problem(), *fwd).ok());
  ASSERT_TRUE(flashlane::detail::reference_cpu_backward(sinks.problem(), *bwd).ok());
  int64_t empty_rows = 0, rows = 0;
  for (int64_t b = 0; b < sinks.batch(); ++b)
    for (int64_t h = 0; h < c.heads_q; ++h) {
      const double sink = sinks.learnable_sink.get(h);
      for (int64_t i = 0; i < sinks.seqlen_q(b); ++i) {
        ++rows;
        const double lse0 = plain.lse.get(plain.lse_offset(b, i, h));
        const double lse1 = sinks.lse.get(sinks.lse_offset(b, i, h));
        const int64_t o_off = sinks.row_offset(sinks.o, b, i, h, false);
        if (lse0 == -kInf) {  // no visible key
          ++empty_rows;
          EXPECT_EQ(lse1, sink) << "b=" << b << " i=" << i << " h=" << h;
          for (int64_t x = 0; x < sinks.head_dim_v(); ++x) EXPECT_EQ(sinks.o.get(o_off + x), 0.0);
          const int64_t dq_off = sinks.row_offset(sinks.dq, b, i, h, false);
          for (int64_t x = 0; x < c.head_dim; ++x) EXPECT_EQ(sinks.dq.get(dq_off + x), 0.0);
          continue;
        }
        const double mx = std::max(lse0, sink);
        const double want_lse = mx + std::log(std::exp(lse0 - mx) + std::exp(sink - mx));
        // Both LSEs are float32: 2^-24 relative each.
        const double lse_err = std::ldexp(1.0, -23) * (1 + std::fabs(lse0) + std::fabs(lse1));
        EXPECT_NEAR(lse1, want_lse, lse_err);
        EXPECT_LE(lse0, lse1);
        const double ratio = std::exp(lse0 - lse1);
        for (int64_t x = 0; x < sinks.head_dim_v(); ++x) {
          const double plain_o = plain.o.get(o_off + x);
          EXPECT_NEAR(sinks.o.get(o_off + x), plain_o * ratio, lse_err * std::fabs(plain_o) + 1e-12);
        }
      }
    }
  EXPECT_GT(empty_rows, 10);
  EXPECT_GT(rows - empty_rows, 10);
  EXPECT_EQ(sinks.dlearnable_sink.count_poisoned(), 0);
  for (int64_t h = 0; h < c.heads_q; ++h) EXPECT_TRUE(std::isfinite(sinks.dlearnable_sink.get(h)));
}

// Softcap caps the scores, never the sink: with softcap 0.5 every score is below 0.5, so
// LSE > sink for sinks above it (a capped sink would be below 0.5 and give LSE < sink); with a
// scale of 0.05 the sink is not scaled either.
TEST(ReferenceCpuSinks, SinkIsNeitherCappedNorScaled) {
  HostProblemConfig c = small_config(DType::kFloat64, MaskType::kNoMask, {-1, -1}, 6, 4, 2, 0.5, 13500);
  c.learnable_sink = {3.0f, 1.5f, 2.25f, 0.75f};
  HostProblem hp(c);
  Summary sum{"SinkSoftcap"};
  ASSERT_TRUE(check_forward(hp, sum));
  for (int64_t b = 0; b < hp.batch(); ++b)
    for (int64_t h = 0; h < c.heads_q; ++h)
      for (int64_t i = 0; i < c.seqlen_q; ++i) {
        const double lse = hp.lse.get(hp.lse_offset(b, i, h)), sink = c.learnable_sink[h];
        EXPECT_GT(lse, sink);
        EXPECT_LT(lse, std::log(std::exp(sink) + c.seqlen_k * std::exp(0.5)));
      }
  c.softcap = 0.0;
  c.softmax_scale = 0.05;
  HostProblem scaled(c);
  ASSERT_TRUE(check_forward(scaled, sum));
  EXPECT_LE(sum.max_excess, 1.0);
}

// A sink of -inf adds nothing: every output, gradients included, has the bits of the call
// without sinks, and dlearnable_sink is 0.
TEST(ReferenceCpuSinks, MinusInfinitySinkIsNoSink) {
  for (auto numerics : {ReferenceNumerics::kFloat64, ReferenceNumerics::kLowPrecision}) {
    HostProblemConfig c = varlen_config(DType::kBFloat16, MaskType::kCausal, {3, 0}, 2, 0.5, true, 13700);
    HostProblem plain(c);
    c.learnable_sink.assign(static_cast<size_t>(c.heads_q), -std::numeric_limits<float>::infinity());
    HostProblem sinks(c);
    const auto fwd = info_for(sinks, Direction::kForward);
    const auto bwd = info_for(sinks, Direction::kBackward);
    ASSERT_TRUE(fwd && bwd);
    for (HostProblem* hp : {&plain, &sinks}) {
      ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp->problem(), *fwd, numerics).ok());
      ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp->problem(), *bwd, numerics).ok());
    }
    EXPECT_TRUE(plain.o.bytes == sinks.o.bytes && plain.lse.bytes == sinks.lse.bytes);
    EXPECT_TRUE(plain.dq.bytes == sinks.dq.bytes && plain.dk.bytes == sinks.dk.bytes &&
                plain.dv.bytes == sinks.dv.bytes);
    for (int64_t h = 0; h < c.heads_q; ++h) EXPECT_EQ(sinks.dlearnable_sink.get(h), 0.0);
  }
}

// dQ, dK, dV with sinks against the matrix backward (unchanged given the LSE, which includes the
// sink) and dsink against the formula of problem.h: float64 over masks x windows x GQA x softcap,
// varlen with seqused_k, and the low-precision emulation on bfloat16 / float16.
TEST(ReferenceCpuSinks, BackwardMatchesBruteForce) {
  Summary sum{"SinkBackward"};
  uint64_t seed = 14000;
  for (MaskType mask : kMasks)
    for (Window w : kWindows)
      for (int64_t hkv : {1, 2})
        for (double cap : {0.0, 0.5}) {
          HostProblem hp(with_sinks(small_config(DType::kFloat64, mask, w, 9, 13, hkv, cap, seed++)));
          check_backward(hp, sum);
        }
  for (bool seqused : {false, true})
    for (MaskType mask : kMasks) {
      HostProblem hp(with_sinks(varlen_config(DType::kFloat64, mask, {4, -1}, 2, 0.5, seqused, seed++)));
      check_backward(hp, sum);
    }
  for (DType dt : {DType::kBFloat16, DType::kFloat16})
    for (MaskType mask : kMasks) {
      HostProblem hp(with_sinks(small_config(dt, mask, {-1, -1}, 9, 17, 2, 1.5, seed++)));
      check_backward(hp, sum, ReferenceNumerics::kLowPrecision);
      HostProblem vl(with_sinks(varlen_config(dt, mask, {3, -1}, 2, 0.0, true, seed++)));
      check_backward(vl, sum, ReferenceNumerics::kLowPrecision);
    }
  EXPECT_EQ(sum.cases, 52 + 6 + 12);
  EXPECT_LE(sum.max_excess, 1.0);
}

// dsink, dQ, dK and dV against central finite differences of L = sum(dout * O) through the
// reference forward (float64 inputs; the float32 sink moved by +-2^-12, exact). The backward
// reads the float32 LSE, so agreement is about 1e-7 relative: tolerance 2e-6 of the largest
// gradient. Cases include rows without visible keys (causal bottom-right, varlen) and GQA.
TEST(ReferenceCpuSinks, BackwardMatchesFiniteDifferences) {
  Summary sum{"SinkFiniteDifferences"};
  struct Case { MaskType mask; Window w; int64_t hkv; double cap; bool varlen; };
  std::vector<Case> cases;
  for (MaskType mask : kMasks)
    for (double cap : {0.0, 0.5}) {
      cases.push_back({mask, {-1, -1}, 2, cap, false});
      cases.push_back({mask, {2, mask == MaskType::kNoMask ? 1 : 0}, 1, cap, true});
    }
  uint64_t seed = 15000;
  for (const Case& cs : cases) {
    HostProblemConfig c;
    c.dtype = DType::kFloat64;
    c.heads_q = 4;
    c.heads_kv = cs.hkv;
    c.head_dim = 8;
    c.mask = cs.mask;
    c.window_left = cs.w.left;
    c.window_right = cs.w.right;
    c.softcap = cs.cap;
    c.softmax_scale = 0.5;
    c.value_scale = 1.5;
    c.seed = seed++;
    if (cs.varlen) {
      c.seqlens_q = {5, 3, 2};
      c.seqlens_k = {4, 7, 0};
      c.seqused_k = {3, 5, 0};
      c.nan_unused_kv = true;
    } else {
      c.batch = 2;
      c.seqlen_q = 6;
      c.seqlen_k = 4;
    }
    c = with_sinks(c);
    HostProblem hp(c);
    const auto fwd = info_for(hp, Direction::kForward);
    const auto bwd = info_for(hp, Direction::kBackward);
    ASSERT_TRUE(fwd && bwd) << describe(c);
    ASSERT_EQ(hp.o.view.stride, hp.dout.view.stride);

    const double step = 1e-6;
    std::vector<double> fd_q(hp.q.buffer_elements()), fd_k(hp.k.buffer_elements()),
        fd_v(hp.v.buffer_elements()), fd_sink(c.heads_q);
    for (auto [x, fd] : {std::pair{&hp.q, &fd_q}, std::pair{&hp.k, &fd_k}, std::pair{&hp.v, &fd_v}}) {
      x->for_each_offset([&](int64_t off) {
        const double x0 = x->get(off);
        x->set(off, x0 + step);
        const double lp = loss(hp, *fwd);
        x->set(off, x0 - step);
        const double lm = loss(hp, *fwd);
        x->set(off, x0);
        (*fd)[off] = std::isnan(x0) ? 0.0 : (lp - lm) / (2 * step);
      });
    }
    const double sink_step = std::ldexp(1.0, -12);
    for (int64_t h = 0; h < c.heads_q; ++h) {
      const double s0 = hp.learnable_sink.get(h);
      hp.learnable_sink.set(h, s0 + sink_step);
      ASSERT_EQ(hp.learnable_sink.get(h), s0 + sink_step);  // exact in float32
      const double lp = loss(hp, *fwd);
      hp.learnable_sink.set(h, s0 - sink_step);
      const double lm = loss(hp, *fwd);
      hp.learnable_sink.set(h, s0);
      fd_sink[h] = (lp - lm) / (2 * sink_step);
    }
    hp.poison_outputs();
    ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), *fwd).ok());
    ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp.problem(), *bwd).ok());
    double gmax = 0;
    for (const HostTensor* g : {&hp.dq, &hp.dk, &hp.dv, &hp.dlearnable_sink})
      g->for_each_offset([&](int64_t off) { gmax = std::max(gmax, std::fabs(g->get(off))); });
    ASSERT_GT(gmax, 1e-3) << describe(c);
    double sink_max = 0;
    for (double g : fd_sink) sink_max = std::max(sink_max, std::fabs(g));
    EXPECT_GT(sink_max, 1e-2) << "the sinks should matter in " << describe(c);
    const double tol = 2e-6 * gmax;
    for (auto [g, fd, name] : {std::tuple{&hp.dq, &fd_q, "dq"}, std::tuple{&hp.dk, &fd_k, "dk"},
                               std::tuple{&hp.dv, &fd_v, "dv"},
                               std::tuple{&hp.dlearnable_sink, &fd_sink, "dlearnable_sink"}}) {
      const Errors e = compare(*g, *fd, 0.0, tol);
      EXPECT_CLEAN(e, name, c);
      sum.add(e, c.dtype);
    }
    ++sum.cases;
  }
  EXPECT_EQ(sum.cases, 12);
  EXPECT_LE(sum.max_excess, 1.0);
}

// The low-precision forward (a fused kernel's fp32 row statistics, P rounded to bf16) with sinks
// stays within bf16 rounding of the float64 forward with sinks, and is not the same computation:
// forgetting the sink term in either path would move O by the sink's weight (percents here).
TEST(ReferenceCpuSinks, LowPrecisionForwardKeepsTheSink) {
  HostProblemConfig c = small_config(DType::kBFloat16, MaskType::kCausalBottomRight, {-1, -1}, 24, 32,
                                     2, 0.0, 16000);
  c.head_dim = 32;
  c.learnable_sink = {1.0f, 2.5f, -0.5f, 3.0f};
  HostProblem lowp(c), f64(c);
  const auto fwd = info_for(lowp, Direction::kForward);
  ASSERT_TRUE(fwd);
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(lowp.problem(), *fwd, ReferenceNumerics::kLowPrecision).ok());
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(f64.problem(), *fwd, ReferenceNumerics::kFloat64).ok());
  Summary sum{"SinkLowPrecisionForward"};
  ASSERT_TRUE(check_forward(f64, sum));  // the float64 path against the concatenated softmax
  double omax = 0, diff = 0, lse_diff = 0;
  lowp.o.for_each_offset([&](int64_t off) {
    omax = std::max(omax, std::fabs(f64.o.get(off)));
    diff = std::max(diff, std::fabs(lowp.o.get(off) - f64.o.get(off)));
  });
  lowp.lse.for_each_offset([&](int64_t off) {
    lse_diff = std::max(lse_diff, std::fabs(lowp.lse.get(off) - f64.lse.get(off)) / (1 + std::fabs(f64.lse.get(off))));
  });
  std::printf("[ SinkLowpForward ] max|lowp - f64| O = %.3g (max|O| = %.3g), LSE rel = %.3g\n", diff,
              omax, lse_diff);
  EXPECT_GT(diff, 0.0);
  EXPECT_LE(diff, 2e-2 * omax);
  EXPECT_LE(lse_diff, 4e-6);
  EXPECT_EQ(lowp.o.count_poisoned(), 0);
}

// A problem large enough to run on several threads: dlearnable_sink is bitwise equal over runs
// and agrees with the formula of problem.h.
TEST(ReferenceCpuSinks, ThreadedSinkGradientIsDeterministic) {
  HostProblemConfig c;
  c.dtype = DType::kFloat32;
  c.batch = 3;
  c.seqlen_q = 160;
  c.seqlen_k = 128;
  c.heads_q = 6;
  c.heads_kv = 2;
  c.head_dim = 64;
  c.mask = MaskType::kCausalBottomRight;
  c.softcap = 2.0;
  c.seed = 17000;
  c = with_sinks(c);
  HostProblem hp(c);
  const auto fwd = info_for(hp, Direction::kForward);
  const auto bwd = info_for(hp, Direction::kBackward);
  ASSERT_TRUE(fwd && bwd);
  std::vector<unsigned char> first;
  for (int run = 0; run < 3; ++run) {
    hp.poison_outputs();
    ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), *fwd).ok());
    ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp.problem(), *bwd).ok());
    if (run == 0) first = hp.dlearnable_sink.bytes;
    EXPECT_TRUE(hp.dlearnable_sink.bytes == first) << "run " << run;
  }
  Summary sum{"SinkThreaded"};
  ASSERT_TRUE(check_backward(hp, sum));
  EXPECT_LE(sum.max_excess, 1.0);
}

// Without query rows there is nothing to compute: dsink is written as 0, dK and dV of the keys
// as 0; and an empty problem that claims 2^31 heads costs nothing for them (no task per head).
TEST(ReferenceCpuSinks, ProblemsWithoutQueryRows) {
  HostProblemConfig c;
  c.dtype = DType::kFloat32;
  c.seqlens_q = {0, 0};
  c.seqlens_k = {3, 0};
  c.heads_q = 4;
  c.heads_kv = 2;
  c.head_dim = 8;
  c.learnable_sink = {0.5f, 1.0f, -1.0f, 2.0f};
  HostProblem hp(c);
  const auto fwd = info_for(hp, Direction::kForward);
  const auto bwd = info_for(hp, Direction::kBackward);
  ASSERT_TRUE(fwd && bwd);
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(hp.problem(), *fwd).ok());
  ASSERT_TRUE(flashlane::detail::reference_cpu_backward(hp.problem(), *bwd).ok());
  EXPECT_EQ(hp.dlearnable_sink.count_poisoned(), 0);
  for (int64_t h = 0; h < c.heads_q; ++h) EXPECT_EQ(hp.dlearnable_sink.get(h), 0.0);
  EXPECT_EQ(hp.dk.count_poisoned(), 0);
  hp.dk.for_each_offset([&](int64_t off) { EXPECT_EQ(hp.dk.get(off), 0.0); });
  hp.dv.for_each_offset([&](int64_t off) { EXPECT_EQ(hp.dv.get(off), 0.0); });

  // bshd q [1, 0, 2^31, 8], k / v [1, 0, 2^31, 8]: valid and empty.
  const int64_t many = int64_t{1} << 31;
  float dummy[4] = {};
  const flashlane::Device cpu = flashlane::Device::cpu();
  AttentionProblem p;
  p.q = flashlane::TensorView::contiguous(dummy, DType::kFloat32, {1, 0, many, 8}, cpu);
  p.k = p.v = p.o = p.dout = p.dq = p.dk = p.dv = p.q;
  p.lse = flashlane::TensorView::contiguous(dummy, DType::kFloat32, {1, many, 0}, cpu);
  ProblemInfo info;
  ASSERT_TRUE(flashlane::validate(p, Direction::kBackward, &info).ok());
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(flashlane::detail::reference_cpu_forward(p, info).ok());
  ASSERT_TRUE(flashlane::detail::reference_cpu_backward(p, info).ok());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(secs, 2.0) << "an empty problem ran a task per claimed head";
}

}  // namespace
