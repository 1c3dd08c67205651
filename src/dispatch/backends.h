// backends.h: the internal entry points of each backend, called only by the dispatcher after
// validation and selection. Each returns kCudaError / kInternal on failure; argument errors are
// impossible here because validate() ran first.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashlane/problem.h"
#include "flashlane/status.h"

namespace flashlane::detail {

/// How reference_cpu computes: kFloat64 is the ground truth (float64 accumulation);
/// kLowPrecision emulates a fused kernel's roundings (fp32 scores, softmax and sums, P rounded to
/// the input dtype before P V), the "ref_lowp" of FlashAttention's test rule
/// max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5 (forward only; backward is float64).
enum class ReferenceNumerics { kFloat64, kLowPrecision };

/// float64-accumulating CPU reference; all tensors on the host.
Status reference_cpu_forward(const AttentionProblem& p, const ProblemInfo& info);
Status reference_cpu_forward(const AttentionProblem& p, const ProblemInfo& info,
                             ReferenceNumerics numerics);
Status reference_cpu_backward(const AttentionProblem& p, const ProblemInfo& info);

/// Straightforward CUDA reference (fp32 accumulation); all tensors on one CUDA device.
Status reference_cuda_forward(const AttentionProblem& p, const ProblemInfo& info,
                              cudaStream_t stream);
Status reference_cuda_backward(const AttentionProblem& p, const ProblemInfo& info,
                               cudaStream_t stream);

/// Hopper kernels. `variant` receives the tile shape and features of the launch.
/// Only called when the sm90 rules of the applicability table pass.
Status sm90_forward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t stream,
                    std::string* variant);
Status sm90_backward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t stream,
                     std::string* variant);
/// Head dims (and head_dim_v) the sm90 forward was compiled for in this build.
bool sm90_forward_supports(int64_t head_dim, int64_t head_dim_v);
/// (head_dim, head_dim_v) pairs the sm90 backward has kernels for.
bool sm90_backward_supports(int64_t head_dim, int64_t head_dim_v);

}  // namespace flashlane::detail
