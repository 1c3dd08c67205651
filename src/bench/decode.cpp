// bench/decode.cpp: the decode grid, its byte counts and its check (decode.h).
#include "bench/decode.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace flashlane::bench {

namespace {
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
nlohmann::json finite_or_null(double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(); }
}  // namespace

std::string DecodeCell::layout() const { return paged() ? "paged" + std::to_string(page_size) : "dense"; }

int64_t DecodeCell::pages_per_seq() const { return paged() ? (cache_len + page_size - 1) / page_size : 0; }

int64_t DecodeCell::num_pages() const { return batch * pages_per_seq(); }

int64_t DecodeCell::cache_rows() const { return paged() ? num_pages() * page_size : batch * cache_len; }

uint64_t DecodeCell::kv_seed() const {
  return 0xdec0de00ull ^ (static_cast<uint64_t>(batch) << 40) ^ static_cast<uint64_t>(cache_len);
}

double DecodeCell::kv_alloc_bytes() const {
  return 2.0 * static_cast<double>(cache_rows()) * heads_kv * head_dim * dtype_size(dtype);
}

double DecodeCell::kv_read_bytes() const {
  return static_cast<double>(batch) * cache_len * heads_kv * 2.0 * head_dim * dtype_size(dtype);
}

double DecodeCell::bytes_moved() const {
  const double qo = static_cast<double>(batch) * seqlen_q * heads_q * 2.0 * head_dim * dtype_size(dtype);
  return kv_read_bytes() + qo;
}

double DecodeCell::flops() const {
  return 4.0 * static_cast<double>(batch) * heads_q * seqlen_q * cache_len * head_dim;
}

std::string DecodeCell::describe() const {
  return "b" + std::to_string(batch) + " kv" + std::to_string(cache_len) + " hq" +
         std::to_string(heads_q) + " hkv" + std::to_string(heads_kv) + " d" +
         std::to_string(head_dim) + " " + layout();
}

std::vector<DecodeCell> decode_grid() {
  std::vector<DecodeCell> g;
  for (auto [b, s] : {std::pair<int64_t, int64_t>{2, 8192}, {8, 32768}})
    for (int64_t ps : {0, 16, 64}) {
      DecodeCell c;
      c.batch = b;
      c.cache_len = s;
      c.heads_q = 32;
      c.heads_kv = 8;
      c.head_dim = 64;
      c.page_size = ps;
      c.seed = static_cast<uint64_t>(b * 1000003 + s * 7 + 64 * 131 + ps);
      g.push_back(c);
    }
  for (int64_t b : {1, 4, 16, 64, 256})
    for (int64_t s : {1024, 4096, 8192, 32768, 131072})
      for (int64_t ps : {0, 16, 64})
        for (int64_t hq : {32, 64}) {
          DecodeCell c;
          c.batch = b;
          c.cache_len = s;
          c.heads_q = hq;
          c.heads_kv = 8;
          c.head_dim = 128;
          c.page_size = ps;
          c.seed = static_cast<uint64_t>(b * 1000003 + s * 7 + hq * 31 + ps);
          g.push_back(c);
        }
  return g;
}

std::vector<DecodeCell> decode_cpu_grid() {
  std::vector<DecodeCell> g;
  for (int64_t ps : {0, 16}) {
    DecodeCell c;
    c.batch = 2;
    c.cache_len = 256;
    c.heads_q = 4;
    c.heads_kv = 2;
    c.head_dim = 64;
    c.page_size = ps;
    c.seed = static_cast<uint64_t>(17 + ps);
    g.push_back(c);
  }
  return g;
}

nlohmann::json decode_problem_json(const DecodeCell& c) {
  return {{"batch", c.batch},
          {"seqlen_q", c.seqlen_q},
          {"seqlen_k", c.cache_len},
          {"cache_len", c.cache_len},
          {"heads_q", c.heads_q},
          {"heads_kv", c.heads_kv},
          {"head_dim", c.head_dim},
          {"head_dim_v", c.head_dim},
          {"dtype", dtype_name(c.dtype)},
          {"mask", "no_mask"},
          {"causal", false},
          {"window_left", -1},
          {"window_right", -1},
          {"softcap", 0.0},
          {"softmax_scale", nullptr},
          {"varlen", false},
          {"layout", c.layout()},
          {"page_size", c.page_size},
          {"num_pages", c.num_pages()},
          {"cache_seqlens", "full"},
          {"seed", c.seed},
          {"kv_seed", c.kv_seed()},
          {"bytes_kv", c.kv_read_bytes()},
          {"bytes_moved", c.bytes_moved()},
          {"flops_fwd", c.flops()}};
}

BoundFigure compare_decode_o(const std::vector<double>& out, const std::vector<double>& ref) {
  BoundFigure f;
  f.tensor = "o";
  f.bound = "|o - o_ref| <= 2^-7 max(1, |o_ref|) + 1e-3 elementwise";
  f.count = static_cast<int64_t>(std::min(out.size(), ref.size()));
  bool sizes = out.size() == ref.size();
  for (int64_t i = 0; i < f.count; ++i) {
    const double a = out[i], r = ref[i];
    if (!std::isfinite(a)) {
      ++f.nan_count;
      continue;
    }
    const double d = std::fabs(a - r);
    const double tol = kDecodeORelTol * std::max(1.0, std::fabs(r)) + kDecodeOAbsTol;
    f.max_abs_diff = std::max(f.max_abs_diff, d);
    f.max_ratio = std::max(f.max_ratio, std::isfinite(r) ? d / tol : INFINITY);
  }
  f.pass = sizes && f.count > 0 && f.nan_count == 0 && f.max_ratio <= 1.0;
  return f;
}

BoundFigure compare_decode_lse(const std::vector<double>& out, const std::vector<double>& ref) {
  BoundFigure f;
  f.tensor = "lse";
  f.bound = "|lse - lse_ref| <= 1e-3 elementwise (-inf in both is equal)";
  f.count = static_cast<int64_t>(std::min(out.size(), ref.size()));
  bool sizes = out.size() == ref.size();
  for (int64_t i = 0; i < f.count; ++i) {
    const double a = out[i], r = ref[i];
    if (std::isinf(a) && a < 0 && std::isinf(r) && r < 0) continue;
    if (!std::isfinite(a)) {
      ++f.nan_count;
      continue;
    }
    const double d = std::fabs(a - r);
    f.max_abs_diff = std::max(f.max_abs_diff, d);
    f.max_ratio = std::max(f.max_ratio, std::isfinite(r) ? d / kDecodeLseAbsTol : INFINITY);
  }
  f.pass = sizes && f.count > 0 && f.nan_count == 0 && f.max_ratio <= 1.0;
  return f;
}

nlohmann::json bound_figure_to_json(const BoundFigure& f) {
  return {{"tensor", f.tensor},       {"max_abs_diff", finite_or_null(f.max_abs_diff)},
          {"max_ratio", finite_or_null(f.max_ratio)}, {"bound", f.bound},
          {"count", f.count},         {"nan_count", f.nan_count},
          {"pass", f.pass}};
}

std::vector<int32_t> page_permutation(int64_t n, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<int32_t>(i);
  uint64_t state = seed;
  for (size_t i = p.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(splitmix64(state) % i);
    std::swap(p[i - 1], p[j]);
  }
  return p;
}

}  // namespace flashlane::bench
