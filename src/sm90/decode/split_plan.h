// split_plan.h: the tile shape of the sm90 decode kernel per head dim, and how many CTAs share
// one sequence's keys (split-KV). Host code, no CUDA: the CPU tests call it.
//
// Split-KV (Dao et al. 2023, "Flash-Decoding for long-context inference"): with few (batch, kv
// head, row tile) work items, a decode step would run on a few SMs only. Splitting the keys of
// each item over `s` CTAs, each writing a partial O and its LSE that a combine kernel merges,
// fills the machine. The choice reads only shapes (the capacity, never cache_seqlens), so a call
// captured in a CUDA graph keeps its launch shape while the lengths change between replays; each
// CTA divides its sequence's actual key blocks by `s` at run time.
#pragma once

#include <algorithm>
#include <cstdint>

namespace flashlane::sm90 {

/// Keys per K/V tile, pipeline stages and resident CTAs per SM of the decode kernel. Four warps
/// each take 16 keys of a 64-key tile; stages hold K and V tiles of kDecodeBlockN x head_dim.
inline constexpr int kDecodeBlockN = 64;
inline constexpr int kDecodeThreads = 128;
constexpr int decode_stages(int head_dim) { return head_dim <= 128 ? 3 : 2; }
constexpr int decode_ctas_per_sm(int head_dim) { return head_dim <= 128 ? 2 : 1; }
/// Above head_dim 128 the Q fragments live in shared memory (re-read by ldmatrix at every
/// tile) instead of registers: O's accumulators alone take head_dim / 2 registers per thread.
constexpr bool decode_q_in_smem(int head_dim) { return head_dim > 128; }
/// Shared memory of one CTA: the K and V stages (the epilogue reuses them), then Q when
/// decode_q_in_smem (16 rows).
constexpr int decode_smem_bytes(int head_dim) {
  return 2 * decode_stages(head_dim) * kDecodeBlockN * head_dim * 2 +
         (decode_q_in_smem(head_dim) ? 16 * head_dim * 2 : 0);
}

inline constexpr int kMaxDecodeSplits = 128;
/// The heuristic's count for a dense cache is capped at kPreferredMaxSplits when that many still
/// give 90% of the SMs a CTA each (decode_num_splits).
inline constexpr int kPreferredMaxSplits = 16;

/// Number of splits for `work_items` = batch * heads_kv * m_blocks CTAs without splitting, a
/// per-sequence capacity of `capacity` keys, on `num_sms` SMs.
///   requested >= 1: that many, at most one per key block and kMaxDecodeSplits;
///   requested == 0: the smallest s whose wave efficiency, work_items * s / (waves * slots) for
///     slots = num_sms * ctas_per_sm, is within 5% of the best over s in [1, max], where max
///     keeps at least two key blocks per split (a split of one block pays its epilogue and the
///     combine for 64 keys). Items already filling 80% of the slots are not split.
///     Dense caches (paged = false): a count above kPreferredMaxSplits becomes
///     kPreferredMaxSplits when work_items * kPreferredMaxSplits CTAs still give 90% of the SMs
///     one CTA each. There the second CTA per SM adds no bandwidth and the combine reads half
///     the partials (H200, batch 1, GQA 32/8, head_dim 128, `flashlane bench --preset decode`
///     in one device call: 18.7 -> 16.5 us at 4k keys, 20.7 -> 20.2 at 8k, 43.3 -> 42.2 at
///     32k, 135 -> 131 at 128k). The paged gather needs the second CTA to hide its row-by-row
///     latency: with 16 splits it lost up to 37% (142 -> 195 us at 128k, page size 16), so paged
///     caches keep the wave-efficiency count.
inline int decode_num_splits(int64_t work_items, int64_t capacity, int num_sms, int head_dim,
                             int64_t requested, bool paged = false) {
  const int64_t key_blocks = std::max<int64_t>(1, (capacity + kDecodeBlockN - 1) / kDecodeBlockN);
  const int64_t cap = std::min<int64_t>(kMaxDecodeSplits, key_blocks);
  if (requested >= 1) return int(std::min<int64_t>(requested, cap));
  const int64_t slots = int64_t(std::max(num_sms, 1)) * decode_ctas_per_sm(head_dim);
  if (work_items <= 0 || work_items * 5 >= slots * 4) return 1;
  const int64_t max_s = std::max<int64_t>(1, std::min<int64_t>(cap, key_blocks / 2));
  auto efficiency = [&](int64_t s) {
    const int64_t ctas = work_items * s;
    const int64_t waves = (ctas + slots - 1) / slots;
    return double(ctas) / double(waves * slots);
  };
  double best = 0.0;
  for (int64_t s = 1; s <= max_s; ++s) best = std::max(best, efficiency(s));
  int64_t chosen = 1;
  for (int64_t s = 1; s <= max_s; ++s) {
    if (efficiency(s) >= 0.95 * best) {
      chosen = s;
      break;
    }
  }
  if (!paged && chosen > kPreferredMaxSplits &&
      work_items * kPreferredMaxSplits * 10 >= int64_t(std::max(num_sms, 1)) * 9) {
    chosen = kPreferredMaxSplits;
  }
  return int(chosen);
}

}  // namespace flashlane::sm90
