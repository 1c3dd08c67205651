// bench/sampling.cpp: sampled validation of large problems (sampling.h).
#include "bench/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

namespace flashlane::bench {

namespace {

/// splitmix64: the next value of the stream `state`.
uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Salt of the sampling stream, so that it never coincides with the input generator's streams.
constexpr uint64_t kSamplingSalt = 0x736c696365733031ull;  // "slices01"

/// `t` narrowed to [start, start + length) along `dim` (same strides, data pointer offset).
TensorView narrow(TensorView t, int dim, int64_t start, int64_t length) {
  t.data = static_cast<char*>(t.data) + start * t.stride[dim] * dtype_size(t.dtype);
  t.shape[dim] = length;
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The plan

int64_t sampled_slice_count(const ProblemSpec& spec, int64_t full_max_seqlen) {
  const int64_t total = spec.num_batches() * spec.heads_q;
  if (spec.varlen() || full_max_seqlen <= 0) return total;
  if (std::max(spec.seqlen_q, spec.seqlen_k) <= full_max_seqlen || spec.seqlen_k <= 0) return total;
  // Budget: batch * seqlen_q * heads_q * T score pairs; one slice has seqlen_q * seqlen_k.
  const double n = std::floor(static_cast<double>(total) * static_cast<double>(full_max_seqlen) /
                              static_cast<double>(spec.seqlen_k));
  return std::clamp<int64_t>(static_cast<int64_t>(n), std::min<int64_t>(2, total), total);
}

std::vector<SliceUnit> select_units(int64_t batch, int64_t heads_q, int64_t heads_kv,
                                    int64_t slices, uint64_t seed) {
  std::vector<SliceUnit> units;
  if (batch <= 0 || heads_q <= 0 || heads_kv <= 0 || heads_q % heads_kv != 0) return units;
  const int64_t group = heads_q / heads_kv;
  const int64_t total = batch * heads_kv;
  const int64_t n = std::clamp<int64_t>(slices / group, std::min<int64_t>(2, total), total);
  std::vector<int64_t> chosen;
  if (n >= total) {
    chosen.resize(static_cast<size_t>(total));
    std::iota(chosen.begin(), chosen.end(), int64_t{0});
  } else {
    // First and last always; the n - 2 others drawn without replacement from those in between
    // (partial Fisher-Yates over 1 .. total - 2).
    chosen = {0, total - 1};
    std::vector<int64_t> middle(static_cast<size_t>(total - 2));
    std::iota(middle.begin(), middle.end(), int64_t{1});
    uint64_t state = seed ^ kSamplingSalt;
    const size_t m = middle.size();
    for (size_t i = 0; i + 2 < static_cast<size_t>(n); ++i) {
      const size_t j = i + static_cast<size_t>(splitmix64(&state) % (m - i));
      std::swap(middle[i], middle[j]);
      chosen.push_back(middle[i]);
    }
    std::sort(chosen.begin(), chosen.end());
  }
  for (int64_t u : chosen) units.push_back({u / heads_kv, (u % heads_kv) * group, group});
  return units;
}

ValidationPlan plan_validation(const ProblemSpec& spec, int64_t full_max_seqlen) {
  ValidationPlan p;
  p.full_max_seqlen = full_max_seqlen;
  p.seed = spec.seed;
  p.total_slices = spec.num_batches() * spec.heads_q;
  const int64_t n = sampled_slice_count(spec, full_max_seqlen);
  if (n >= p.total_slices) return p;
  std::vector<SliceUnit> units =
      select_units(spec.batch, spec.heads_q, spec.heads_kv, n, spec.seed);
  if (units.empty() || static_cast<int64_t>(units.size()) >= spec.batch * spec.heads_kv) return p;
  p.sampled = true;
  p.units = std::move(units);
  return p;
}

std::vector<std::array<int64_t, 2>> ValidationPlan::slices() const {
  std::vector<std::array<int64_t, 2>> s;
  for (const auto& u : units)
    for (int64_t h = u.head; h < u.head + u.heads; ++h) s.push_back({u.batch, h});
  return s;
}

ValidationScope ValidationPlan::scope() const {
  ValidationScope v;
  if (!sampled) {
    v.kind = "full";
    return v;
  }
  v.kind = "sampled";
  v.slices = slices();
  v.seed = seed;
  v.total_slices = total_slices;
  v.full_max_seqlen = full_max_seqlen;
  return v;
}

std::string ValidationPlan::describe(Direction direction) const {
  const bool bwd = direction == Direction::kBackward;
  if (!sampled) return std::string("every element of ") + (bwd ? "dq, dk, dv" : "o and lse");
  std::ostringstream s;
  const bool gqa = !units.empty() && units.front().heads > 1;
  s << (bwd ? (gqa ? "dq of" : "dq, dk, dv of") : "o and lse of") << " " << slices().size()
    << " of " << total_slices << " (batch, head) slices";
  if (bwd && gqa) s << " and dk, dv of their kv heads";
  s << " (sampled: seqlen above " << full_max_seqlen << "; chosen from seed " << seed
    << ", first and last included)";
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// Sub-problems

bool slice_problem(const AttentionProblem& full, const SliceUnit& unit, AttentionProblem* out,
                   std::string* why) {
  auto fail = [&](const std::string& m) { if (why) *why = m; return false; };
  if (full.cu_seqlens_q.defined() || full.cu_seqlens_k.defined())
    return fail("slice_problem: varlen problems are validated in full");
  if (full.q.rank != 4 || full.k.rank != 4) return fail("slice_problem: q and k must be bshd (rank 4)");
  const int64_t batch = full.q.shape[0], heads_q = full.q.shape[2], heads_kv = full.k.shape[2];
  if (heads_kv <= 0 || heads_q % heads_kv != 0) return fail("slice_problem: heads_q % heads_kv != 0");
  const int64_t group = heads_q / heads_kv;
  if (unit.batch < 0 || unit.batch >= batch || unit.head < 0 || unit.heads < 1 ||
      unit.head + unit.heads > heads_q)
    return fail("slice_problem: unit outside the problem");
  if (unit.head / group != (unit.head + unit.heads - 1) / group)
    return fail("slice_problem: a unit's query heads must share one kv head");
  const int64_t kv_head = unit.head / group;
  auto q_like = [&](const TensorView& t) {  // [batch, seqlen_q, heads_q, d]
    if (!t.defined() || t.rank != 4) return t;
    return narrow(narrow(t, 0, unit.batch, 1), 2, unit.head, unit.heads);
  };
  auto kv_like = [&](const TensorView& t) {  // [batch, seqlen_k, heads_kv, d]
    if (!t.defined() || t.rank != 4) return t;
    return narrow(narrow(t, 0, unit.batch, 1), 2, kv_head, 1);
  };
  AttentionProblem p = full;
  p.q = q_like(full.q);
  p.o = q_like(full.o);
  p.dout = q_like(full.dout);
  p.dq = q_like(full.dq);
  p.k = kv_like(full.k);
  p.v = kv_like(full.v);
  p.dk = kv_like(full.dk);
  p.dv = kv_like(full.dv);
  if (full.lse.defined() && full.lse.rank == 3)  // [batch, heads_q, seqlen_q]
    p.lse = narrow(narrow(full.lse, 0, unit.batch, 1), 1, unit.head, unit.heads);
  if (full.seqused_k.defined() && full.seqused_k.rank == 1)
    p.seqused_k = narrow(full.seqused_k, 0, unit.batch, 1);
  // Sinks: the unit's query heads. dlearnable_sink sums over every row of the batch, so a
  // slice's share is not comparable with the full problem's: sampled rows do not compute it.
  if (full.learnable_sink.defined() && full.learnable_sink.rank == 1)
    p.learnable_sink = narrow(full.learnable_sink, 0, unit.head, unit.heads);
  p.dlearnable_sink = TensorView{};
  *out = p;
  return true;
}

Status sampled_reference_outputs(const ProblemSpec& spec, const HostInputs& inputs, DType dtype,
                                 bool backward, bool on_gpu, const ValidationPlan& plan,
                                 Outputs* out) {
  if (!plan.sampled) return reference_outputs(spec, inputs, dtype, backward, on_gpu, out);
  *out = Outputs{};
  ProblemTensors t;
  const Device device = on_gpu ? Device::cuda(0) : Device::cpu();
  Status s = build_tensors(spec, inputs, dtype, device, backward, &t);
  if (!s.ok()) return s;
  const int64_t sq = spec.seqlen_q, sk = spec.seqlen_k, d = spec.head_dim, dv = spec.dv();
  const size_t es = dtype_size(dtype);
  for (const SliceUnit& u : plan.units) {
    AttentionProblem sub;
    std::string why;
    if (!slice_problem(t.problem, u, &sub, &why)) return Status(ErrorCode::kInternal, why);
    // The unit's outputs: separate buffers, poisoned, contiguous in the sub-problem's layout.
    Buffer o, lse, dq, dk, dvb;
    const int64_t h = u.heads;
    if (!(s = o.allocate(sq * h * dv * es, device)).ok() ||
        !(s = lse.allocate(h * sq * 4, device)).ok())
      return s;
    sub.o = TensorView::contiguous(o.data(), dtype, {1, sq, h, dv}, device);
    sub.lse = TensorView::contiguous(lse.data(), DType::kFloat32, {1, h, sq}, device);
    if (backward) {
      if (!(s = dq.allocate(sq * h * d * es, device)).ok() ||
          !(s = dk.allocate(sk * d * es, device)).ok() || !(s = dvb.allocate(sk * dv * es, device)).ok())
        return s;
      sub.dq = TensorView::contiguous(dq.data(), dtype, {1, sq, h, d}, device);
      sub.dk = TensorView::contiguous(dk.data(), dtype, {1, sk, 1, d}, device);
      sub.dv = TensorView::contiguous(dvb.data(), dtype, {1, sk, 1, dv}, device);
    }
    for (Buffer* b : {&o, &lse, &dq, &dk, &dvb})
      if (!(s = b->fill_bytes(0xff)).ok()) return s;
    if (!(s = run_reference(sub, dtype, backward, on_gpu)).ok()) return s;
    auto append = [&](const Buffer& b, const TensorView& v, std::vector<double>* dst) {
      std::vector<double> part;
      Status st = fetch_tensor(b, v, &part);
      if (st.ok()) dst->insert(dst->end(), part.begin(), part.end());
      return st;
    };
    if (!(s = append(o, sub.o, &out->o)).ok() || !(s = append(lse, sub.lse, &out->lse)).ok())
      return s;
    if (backward) {
      if (!(s = append(dq, sub.dq, &out->dq)).ok() || !(s = append(dk, sub.dk, &out->dk)).ok() ||
          !(s = append(dvb, sub.dv, &out->dv)).ok())
        return s;
    }
  }
  return Status::Ok();
}

Outputs gather_slices(const ProblemSpec& spec, const ValidationPlan& plan, Direction direction,
                      const Outputs& full) {
  Outputs g;
  const int64_t sq = spec.seqlen_q, sk = spec.seqlen_k, hq = spec.heads_q, hk = spec.heads_kv;
  const int64_t d = spec.head_dim, dv = spec.dv(), group = hq / hk;
  // [batch, seqlen, heads, width] tensors: rows (b, i, h) for i in [0, seqlen), h in the unit's.
  auto bshd = [](const std::vector<double>& src, std::vector<double>* dst, int64_t b, int64_t seqlen,
                 int64_t heads, int64_t head, int64_t n_heads, int64_t width) {
    for (int64_t i = 0; i < seqlen; ++i) {
      const size_t at = static_cast<size_t>(((b * seqlen + i) * heads + head) * width);
      const size_t n = static_cast<size_t>(n_heads * width);
      if (at + n > src.size()) return;  // a short tensor: the comparison reports a size mismatch
      dst->insert(dst->end(), src.begin() + at, src.begin() + at + n);
    }
  };
  for (const SliceUnit& u : plan.units) {
    if (direction == Direction::kForward) {
      bshd(full.o, &g.o, u.batch, sq, hq, u.head, u.heads, dv);
      for (int64_t h = u.head; h < u.head + u.heads; ++h) {  // lse [batch, heads_q, seqlen_q]
        const size_t at = static_cast<size_t>((u.batch * hq + h) * sq);
        if (at + sq <= full.lse.size())
          g.lse.insert(g.lse.end(), full.lse.begin() + at, full.lse.begin() + at + sq);
      }
    } else {
      bshd(full.dq, &g.dq, u.batch, sq, hq, u.head, u.heads, d);
      bshd(full.dk, &g.dk, u.batch, sk, hk, u.head / group, 1, d);
      bshd(full.dv, &g.dv, u.batch, sk, hk, u.head / group, 1, dv);
    }
  }
  return g;
}

}  // namespace flashlane::bench
