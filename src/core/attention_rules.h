// attention_rules.h: the mask and softcap semantics of include/flashlane/problem.h as inline
// functions usable on host and device. Every backend (reference_cpu, reference_cuda, sm90) and
// every test derives visibility from these, so the rules are written once.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FL_HOST_DEVICE inline
#endif

namespace flashlane {

/// Normalized mask of one problem (see ProblemInfo): bounds around the diagonal, -1 = unbounded.
struct MaskRule {
  int64_t window_left = -1;
  int64_t window_right = -1;
  bool bottom_right = false;

  /// Offset of the diagonal for one sequence: diag(i) = i + diagonal_shift.
  FL_HOST_DEVICE int64_t diagonal_shift(int64_t seqlen_q, int64_t seqlen_k) const {
    return bottom_right ? seqlen_k - seqlen_q : 0;
  }
  /// True when key j is visible from query i in a sequence of seqlen_q queries and seqlen_k
  /// used keys (j < seqlen_k is part of the rule: keys beyond seqused_k are never visible).
  FL_HOST_DEVICE bool visible(int64_t i, int64_t j, int64_t seqlen_q, int64_t seqlen_k) const {
    if (j < 0 || j >= seqlen_k) return false;
    const int64_t diag = i + diagonal_shift(seqlen_q, seqlen_k);
    if (window_left >= 0 && j < diag - window_left) return false;
    if (window_right >= 0 && j > diag + window_right) return false;
    return true;
  }
  /// First and one-past-last visible key of query i (an empty range has first >= last).
  FL_HOST_DEVICE void key_range(int64_t i, int64_t seqlen_q, int64_t seqlen_k, int64_t* first,
                                int64_t* last) const {
    const int64_t diag = i + diagonal_shift(seqlen_q, seqlen_k);
    int64_t lo = window_left >= 0 ? diag - window_left : 0;
    int64_t hi = window_right >= 0 ? diag + window_right + 1 : seqlen_k;
    *first = lo < 0 ? 0 : lo;
    *last = hi > seqlen_k ? seqlen_k : hi;
  }
};

}  // namespace flashlane
