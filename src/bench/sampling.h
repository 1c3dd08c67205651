// bench/sampling.h: sampled validation of large problems (`flashlane bench
// --full-validation-max-seqlen T`, default 4096; bench/README.md, docs/RECEIPTS.md).
//
// A problem whose longest sequence is at most T (and every varlen problem) is validated on every
// element. Above T, the float64 reference (and ref_lowp) run only on a seeded sample of
// (batch, head) slices, and the backend's outputs are compared on those slices with the same rule
// (max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5, ref_lowp on the same slices).
//
//  - How many: n = floor(batch * heads_q * T / seqlen_k), clamped to [2, batch * heads_q]. The
//    reference then computes at most batch * seqlen_q * heads_q * T score pairs, those of a
//    problem with the same query tokens at seqlen T (canonical grid: the 4k cell's work; 8k cells
//    check heads_q of their 2 * heads_q slices, 16k cells heads_q / 4 of heads_q).
//  - Unit: one (batch, kv head) with every query head that reads it (heads_q / heads_kv of them;
//    one (batch, head) without GQA), so dK and dV, which sum over those query heads, are exact.
//    n is rounded down to whole units (at least 2, or all). A sample that covers every unit is
//    a full validation.
//  - Which: always the first unit (batch 0, kv head 0) and the last (batch - 1, heads_kv - 1);
//    the others drawn without replacement (partial Fisher-Yates over the units in between, with
//    splitmix64 over the problem's seed: the same seed gives the same slices), then sorted.
//  - The sub-problem of a unit is made of views into the same input tensors (data pointer
//    offset to (b, first head), the full tensors' strides, shape 1 in the batch dims and in the
//    kv-head dims, the unit's query heads in the query-head dims); the reference writes separate
//    outputs, concatenated unit after unit in the order of gather_slices().
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/proof.h"
#include "flashlane/problem.h"

namespace flashlane::bench {

/// The default of --full-validation-max-seqlen.
inline constexpr int64_t kDefaultFullValidationMaxSeqlen = 4096;

/// Query heads [head, head + heads) of batch `batch`, all reading kv head head / group.
struct SliceUnit {
  int64_t batch = 0;
  int64_t head = 0;
  int64_t heads = 1;
  bool operator==(const SliceUnit&) const = default;
};

struct ValidationPlan {
  bool sampled = false;         // false: every element
  int64_t full_max_seqlen = 0;  // T
  uint64_t seed = 0;            // the problem's seed
  int64_t total_slices = 0;     // batch * heads_q
  std::vector<SliceUnit> units; // sampled: sorted by (batch, head)
  /// (batch, query head) of every compared slice, in unit order.
  std::vector<std::array<int64_t, 2>> slices() const;
  /// The row's metrics.validation_scope ("full" or "sampled").
  ValidationScope scope() const;
  /// "every element of o and lse" / "o and lse of 8 of 32 (batch, head) slices ...".
  std::string describe(Direction direction) const;
};

/// Number of (batch, query head) slices to check before rounding to units: batch * heads_q when
/// the problem is validated in full (varlen, max(seqlen_q, seqlen_k) <= T, or T <= 0),
/// otherwise clamp(floor(batch * heads_q * T / seqlen_k), 2, batch * heads_q).
int64_t sampled_slice_count(const ProblemSpec& spec, int64_t full_max_seqlen);

/// `slices` query-head slices' worth of units out of batch * heads_kv, as described above:
/// sorted, unique, within bounds, first and last unit included, a function of the arguments only.
std::vector<SliceUnit> select_units(int64_t batch, int64_t heads_q, int64_t heads_kv,
                                    int64_t slices, uint64_t seed);

/// The plan of a problem: full, or the sampled units.
ValidationPlan plan_validation(const ProblemSpec& spec, int64_t full_max_seqlen);

/// The sub-problem of one unit of a bshd problem: every tensor of `full` that is given becomes a
/// view of the unit's part (q, o, dout, dq: [1, seqlen_q, heads, d] at (batch, head); k, v, dk,
/// dv: [1, seqlen_k, 1, d] at (batch, head / group); lse: [1, heads, seqlen_q]; seqused_k: [1] at
/// batch), same strides, same options. False (and *why) for varlen problems, units outside the
/// problem, or units that span two kv heads.
bool slice_problem(const AttentionProblem& full, const SliceUnit& unit, AttentionProblem* out,
                   std::string* why);

/// The reference outputs of the plan's units only, concatenated unit after unit (o, lse and, when
/// `backward`, dq, dk, dv; each unit's part contiguous in its sub-problem's layout). Inputs and
/// numerics as reference_outputs() (harness.h); the input tensors are built once, in full.
Status sampled_reference_outputs(const ProblemSpec& spec, const HostInputs& inputs, DType dtype,
                                 bool backward, bool on_gpu, const ValidationPlan& plan,
                                 Outputs* out);

/// The plan's units of full host outputs (fetch_outputs()), in the order of
/// sampled_reference_outputs(): what the backend's outputs are compared on. Only the tensors of
/// `direction` (forward: o, lse; backward: dq, dk, dv).
Outputs gather_slices(const ProblemSpec& spec, const ValidationPlan& plan, Direction direction,
                      const Outputs& full);

}  // namespace flashlane::bench
