// problem_tensors.h: every tensor field of an AttentionProblem, listed once, for the code that
// has to look at all of them (the dispatcher's pending-error check, the CPU reference's
// placement check). A new tensor field of the problem is added here.
#pragma once

#include <array>

#include "flashlane/problem.h"

namespace flashlane::detail {

/// The problem's tensor fields, given or not (check defined()).
inline std::array<const TensorView*, 14> problem_tensors(const AttentionProblem& p) {
  return {&p.q,  &p.k,  &p.v,  &p.o,           &p.lse,          &p.dout,
          &p.dq, &p.dk, &p.dv, &p.cu_seqlens_q, &p.cu_seqlens_k, &p.seqused_k,
          &p.learnable_sink,   &p.dlearnable_sink};
}

/// True for the backward-only tensors (dout, dq, dk, dv, dlearnable_sink): a forward call
/// ignores them.
inline bool is_gradient_tensor(const AttentionProblem& p, const TensorView* t) {
  return t == &p.dout || t == &p.dq || t == &p.dk || t == &p.dv || t == &p.dlearnable_sink;
}

}  // namespace flashlane::detail
