// problem.cpp: mask names, the exact count of visible (query, key) pairs of a validated problem,
// and the forward FLOP count derived from it (the numerator of every TFLOPS figure flashlane
// reports). Visibility comes from MaskRule (attention_rules.h), the same rule every backend uses,
// so the count matches what the kernels compute.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "core/attention_rules.h"
#include "flashlane/problem.h"

namespace flashlane {

const char* mask_type_name(MaskType mask) {
  switch (mask) {
    case MaskType::kNoMask: return "no_mask";
    case MaskType::kCausal: return "causal";
    case MaskType::kCausalBottomRight: return "causal_bottom_right";
  }
  return "unknown";
}

const char* kv_layout_name(KvLayout layout) {
  switch (layout) {
    case KvLayout::kDense: return "dense";
    case KvLayout::kVarlenPacked: return "varlen_packed";
    case KvLayout::kPaged: return "paged";
  }
  return "unknown";
}

bool parse_mask_type(const std::string& name, MaskType* out) {
  static constexpr MaskType kAll[] = {MaskType::kNoMask, MaskType::kCausal,
                                      MaskType::kCausalBottomRight};
  for (MaskType m : kAll) {
    if (name == mask_type_name(m)) {
      *out = m;
      return true;
    }
  }
  return false;
}

namespace {

/// The rule of `info`, derived from the mask type so that a ProblemInfo filled by hand (not by
/// validate()) is read with the same normalization: causal masks close the window on the right
/// at the diagonal; only kCausal aligns the diagonal top-left.
MaskRule mask_rule(const ProblemInfo& info) {
  MaskRule rule;
  rule.window_left = info.window_left;
  rule.window_right = info.is_causal() ? 0 : info.window_right;
  rule.bottom_right = info.mask != MaskType::kCausal;
  return rule;
}

/// Visible pairs of one sequence and one head: one key range per query row, O(seqlen_q).
int64_t sequence_pairs(const MaskRule& rule, int64_t seqlen_q, int64_t seqlen_k) {
  if (seqlen_q <= 0 || seqlen_k <= 0) return 0;
  int64_t pairs = 0;
  for (int64_t i = 0; i < seqlen_q; ++i) {
    int64_t first = 0, last = 0;
    rule.key_range(i, seqlen_q, seqlen_k, &first, &last);
    if (last > first) pairs += last - first;
  }
  return pairs;
}

}  // namespace

/// bshd: every sequence has seqlen_q queries and seqlen_k keys (seqused_k_host[b] keys when
/// given). varlen: lengths come from cu_q_host / cu_k_host (and seqused_k_host); without them
/// the count is unknown and the result is NaN rather than a guess.
double ProblemInfo::visible_pairs(const int32_t* cu_q_host, const int32_t* cu_k_host,
                                  const int32_t* seqused_k_host) const {
  if (varlen && (cu_q_host == nullptr || cu_k_host == nullptr)) {
    return std::numeric_limits<double>::quiet_NaN();
  }
  const MaskRule rule = mask_rule(*this);
  int64_t pairs = 0;  // summed over the batch, for one query head
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t sq = varlen ? static_cast<int64_t>(cu_q_host[b + 1]) - cu_q_host[b] : seqlen_q;
    int64_t sk = varlen ? static_cast<int64_t>(cu_k_host[b + 1]) - cu_k_host[b] : seqlen_k;
    if (seqused_k_host != nullptr) sk = seqused_k_host[b];
    pairs += sequence_pairs(rule, sq, sk);
  }
  return static_cast<double>(pairs) * static_cast<double>(heads_q);
}

double forward_flops(const ProblemInfo& info, double visible_pairs) {
  // QK^T: 2 * head_dim per pair; PV: 2 * head_dim_v per pair.
  return 2.0 * visible_pairs * static_cast<double>(info.head_dim + info.head_dim_v);
}

}  // namespace flashlane
