// bench/grid.cpp: the grids of bench/grid.h.
#include "bench/grid.h"

namespace flashlane::bench {

namespace {
ProblemSpec canonical_cell(int64_t head_dim, bool causal, int64_t seqlen) {
  ProblemSpec s;
  s.dtype = DType::kBFloat16;
  s.head_dim = head_dim;
  s.head_dim_v = head_dim;
  s.heads_q = s.heads_kv = 2048 / head_dim;
  s.seqlen_q = s.seqlen_k = seqlen;
  s.batch = 16384 / seqlen;
  s.mask = causal ? MaskType::kCausal : MaskType::kNoMask;
  s.seed = static_cast<uint64_t>(head_dim * 1000003 + seqlen * 7 + (causal ? 1 : 0));
  return s;
}
}  // namespace

std::vector<ProblemSpec> canonical_grid() {
  std::vector<ProblemSpec> g;
  for (int64_t d : {64, 128, 256})
    for (bool causal : {false, true})
      for (int64_t s : {512, 1024, 2048, 4096, 8192, 16384}) g.push_back(canonical_cell(d, causal, s));
  return g;
}

std::vector<ProblemSpec> smoke_grid() {
  std::vector<ProblemSpec> g;
  for (int64_t d : {64, 128})
    for (bool causal : {false, true})
      for (int64_t s : {512, 2048}) g.push_back(canonical_cell(d, causal, s));
  return g;
}

std::vector<ProblemSpec> varlen_grid() {
  std::vector<ProblemSpec> g;
  for (int64_t d : {64, 128, 256})
    for (bool causal : {false, true}) {
      ProblemSpec s = canonical_cell(d, causal, 16384);
      s.batch = 5;
      s.seqlens_q = s.seqlens_k = {512, 1536, 2048, 4096, 8192};
      s.seqlen_q = s.seqlen_k = 8192;  // the longest sequence
      s.seed += 17;
      g.push_back(s);
    }
  return g;
}

std::vector<ProblemSpec> cpu_grid() {
  std::vector<ProblemSpec> g;
  for (bool causal : {false, true}) {
    ProblemSpec s;
    s.batch = 1;
    s.seqlen_q = s.seqlen_k = 256;
    s.heads_q = s.heads_kv = 4;
    s.head_dim = s.head_dim_v = 64;
    s.dtype = DType::kBFloat16;
    s.mask = causal ? MaskType::kCausal : MaskType::kNoMask;
    s.seed = causal ? 12 : 11;
    g.push_back(s);
  }
  return g;
}

bool grid_for_preset(const std::string& name, std::vector<ProblemSpec>* out) {
  if (name == "canonical") *out = canonical_grid();
  else if (name == "smoke") *out = smoke_grid();
  else if (name == "varlen") *out = varlen_grid();
  else if (name == "cpu") *out = cpu_grid();
  else return false;
  return true;
}

}  // namespace flashlane::bench
