// timing_common.h: what the timing programs of bench/ab/ share: fatal errors with the program's
// name, CUDA and flashlane status checks, comma-separated integer options, and the bf16 inputs
// (uniform in [-1, 1) from a seed, rounded to nearest even). Header only: kernel_timing.cpp is
// also compiled alone against another build's library (README.md).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "flashlane/problem.h"
#include "flashlane/status.h"

namespace flashlane::ab {

/// Set by each program's main() before anything can fail: the prefix of its error messages.
inline const char* g_program = "timing";

[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", g_program, what.c_str());
  std::exit(2);
}

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) die(std::string(what) + ": " + cudaGetErrorString(e));
}

inline void check(const Status& st, const char* what) {
  if (!st.ok()) die(std::string(what) + ": " + st.to_string());
}

inline std::vector<int> ints(const std::string& csv) {
  std::vector<int> out;
  std::stringstream ss(csv);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoi(item));
  return out;
}

/// bf16 bits of a float, rounded to nearest even.
inline uint16_t to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

inline float from_bf16(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// bf16 bits of uniform values in [-1, 1).
inline void fill_bf16(std::vector<uint16_t>& v, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (auto& x : v) x = to_bf16(dist(gen));
}

/// One canonical forward cell (BENCHMARKS.md: 16384 tokens, model dim 2048, bf16) over buffers
/// of at least 16384 x 2048 elements (q, k, v, o) and 16384 x 32 floats (lse): batch =
/// 16384 / seqlen, heads = 2048 / head_dim, causal (top-left) or not.
inline AttentionProblem canonical_cell(void* q, void* k, void* v, void* o, void* lse,
                                       int64_t head_dim, int64_t seqlen, bool causal) {
  constexpr int64_t kTokens = 16384, kModelDim = 2048;
  const int64_t batch = kTokens / seqlen, heads = kModelDim / head_dim;
  const DType bf = DType::kBFloat16;
  const Device dev = Device::cuda(0);
  AttentionProblem p;
  p.q = TensorView::contiguous(q, bf, {batch, seqlen, heads, head_dim}, dev);
  p.k = TensorView::contiguous(k, bf, {batch, seqlen, heads, head_dim}, dev);
  p.v = TensorView::contiguous(v, bf, {batch, seqlen, heads, head_dim}, dev);
  p.o = TensorView::contiguous(o, bf, {batch, seqlen, heads, head_dim}, dev);
  p.lse = TensorView::contiguous(lse, DType::kFloat32, {batch, heads, seqlen}, dev);
  p.mask = causal ? MaskType::kCausal : MaskType::kNoMask;
  return p;
}

/// Forward FLOPs of a problem as BENCHMARKS.md counts them: 4 * batch * heads * seqlen^2 *
/// head_dim, halved when causal (the backward counts 2.5 times this).
inline double forward_flops(const AttentionProblem& p) {
  const double b = double(p.q.shape[0]), s = double(p.q.shape[1]), h = double(p.q.shape[2]),
               d = double(p.q.shape[3]);
  return 4.0 * b * h * s * s * d * (p.mask == MaskType::kNoMask ? 1.0 : 0.5);
}

}  // namespace flashlane::ab
