// bench/decode.h: the decode grid of `flashlane bench --preset decode` (bench/README.md,
// "The decode preset") and the pieces of its rows that need no GPU: cells, byte counts, the
// problem JSON, the elementwise check of O and LSE against reference_cuda.
//
//   grid: batch {1, 4, 16, 64, 256} x cache length {1k, 4k, 8k, 32k, 128k} x layout {dense,
//         paged page_size 16, paged page_size 64} x GQA {32/8, 64/8}, head_dim 128, bf16,
//         seqlen_q 1, every sequence's cache_seqlens = the full cache length: 150 cells; before
//         them 6 head_dim 64 cells (batch 2 x 8k and batch 8 x 32k, GQA 32/8, each layout).
//   bytes moved by a call: K and V of the keys the sequences attend to (heads_kv heads), plus q
//         and o: sum_b cache_seqlens[b] x heads_kv x (head_dim + head_dim_v) x elt
//         + batch x seqlen_q x heads_q x (head_dim + head_dim_v) x elt. The page table and LSE
//         are left out (under 0.1% of every cell). Peers (bench/peers/torch_sdpa_decode.py)
//         use the same formula, whatever they really read.
//   check: |o - o_ref| <= 2^-7 max(1, |o_ref|) + 1e-3 elementwise, |lse - lse_ref| <= 1e-3,
//         against reference_cuda (fp32 accumulation) on the same bf16 inputs; o_ref is rounded
//         to bf16 like o, so the bound covers one bf16 rounding (2^-8 relative) of each, plus
//         the order of the fp32 sums. FlashAttention's rule (docs/RECEIPTS.md) needs a
//         low-precision reference, which the decode backends do not have.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "flashlane/tensor.h"

namespace flashlane::bench {

/// One decode cell: a KV cache, full for every sequence, one query row per sequence.
struct DecodeCell {
  int64_t batch = 1;
  int64_t cache_len = 1024;  // keys per sequence: the capacity and every cache_seqlens[b]
  int64_t heads_q = 32, heads_kv = 8;
  int64_t head_dim = 128;    // head_dim_v = head_dim
  int64_t seqlen_q = 1;
  int64_t page_size = 0;     // 0: dense cache [batch, cache_len, heads_kv, d]
  DType dtype = DType::kBFloat16;
  uint64_t seed = 0;         // of q; K and V derive from kv_seed()

  bool paged() const { return page_size > 0; }
  /// "dense", "paged16", "paged64".
  std::string layout() const;
  int64_t pages_per_seq() const;
  /// Pages of the pool: batch x pages_per_seq (every page used once; the table permutes them).
  int64_t num_pages() const;
  /// Rows of the K (or V) buffer: batch x cache_len (dense) or num_pages x page_size (paged).
  int64_t cache_rows() const;
  /// Seed of K and V: the same for every cell of one (batch, cache_len), so the bench fills the
  /// cache once and reads it as each layout (the paged pool is the dense buffer's memory).
  uint64_t kv_seed() const;
  /// Bytes of K plus V allocated for the cell.
  double kv_alloc_bytes() const;
  /// Bytes of K and V the call must read: cache_seqlens summed x heads_kv x 2 x head_dim x elt.
  double kv_read_bytes() const;
  /// kv_read_bytes + q + o: what metrics.gbps divides by the time.
  double bytes_moved() const;
  /// Forward FLOPs: 4 x batch x heads_q x seqlen_q x cache_len x head_dim.
  double flops() const;
  /// "b16 kv8192 hq32 hkv8 d128 paged16".
  std::string describe() const;
};

/// The 156 cells of the decode preset, ordered so the cells of one (batch, cache_len) follow
/// one another (one fill of the cache serves them): first 6 head_dim 64 cells (batch 2 with an
/// 8k cache and batch 8 with a 32k cache, GQA 32/8, dense and paged 16 and 64; batch sizes the
/// head_dim 128 part does not use, so every group has one head_dim), then the 150 head_dim 128
/// cells: batch {1, 4, 16, 64, 256} x cache length {1k, 4k, 8k, 32k, 128k} x layout {dense,
/// paged 16, paged 64} x GQA {32/8, 64/8}.
std::vector<DecodeCell> decode_grid();
/// Two small cells (batch 2, cache 256, GQA 4/2, head_dim 64; dense and paged 16) for the host
/// lane when no GPU is present.
std::vector<DecodeCell> decode_cpu_grid();

/// The row's problem object: batch, seqlen_q, seqlen_k (= cache_len), cache_len, heads_q,
/// heads_kv, head_dim, head_dim_v, dtype, mask, causal, window_left/right, softcap,
/// softmax_scale, varlen, layout, page_size, num_pages, cache_seqlens ("full"), seed, kv_seed,
/// bytes_kv, bytes_moved, flops_fwd.
nlohmann::json decode_problem_json(const DecodeCell& cell);

/// The elementwise bound of the decode check (header comment).
inline constexpr double kDecodeORelTol = 1.0 / 128.0;
inline constexpr double kDecodeOAbsTol = 1e-3;
inline constexpr double kDecodeLseAbsTol = 1e-3;

/// Error figure of one tensor under an elementwise bound: max_ratio = max over elements of
/// |out - ref| / bound(ref); the tensor passes when max_ratio <= 1 and nothing is non-finite.
struct BoundFigure {
  std::string tensor;
  double max_abs_diff = 0;
  double max_ratio = 0;
  int64_t nan_count = 0;  // non-finite out (LSE: -inf counts only where ref is not -inf)
  int64_t count = 0;
  bool pass = false;
  std::string bound;      // the rule, in words
};
/// O: |out - ref| <= 2^-7 max(1, |ref|) + 1e-3.
BoundFigure compare_decode_o(const std::vector<double>& out, const std::vector<double>& ref);
/// LSE: |out - ref| <= 1e-3; -inf in both is equal.
BoundFigure compare_decode_lse(const std::vector<double>& out, const std::vector<double>& ref);
/// {"tensor","max_abs_diff","max_ratio","bound","count","nan_count","pass"} (non-finite
/// numbers as null, as figure_to_json).
nlohmann::json bound_figure_to_json(const BoundFigure& f);

/// A random permutation of [0, n) from `seed` (Fisher-Yates driven by splitmix64): the page
/// table of a paged cell, so that consecutive keys of a sequence live in scattered pages.
std::vector<int32_t> page_permutation(int64_t n, uint64_t seed);

}  // namespace flashlane::bench
