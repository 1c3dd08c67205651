// backends.h: the internal entry points of each backend, called only by the dispatcher after
// validation and selection. Each returns kCudaError / kInternal on failure; argument errors are
// impossible here because validate() ran first.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashlane/kvcache.h"
#include "flashlane/problem.h"
#include "flashlane/status.h"

namespace flashlane::detail {

/// How a reference computes: kFloat64 is the ground truth (float64 accumulation); kLowPrecision
/// is the "ref_lowp" of FlashAttention's test rule
///   max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5,
/// emulating a fused kernel's roundings as FlashAttention's tests do (attention_ref with
/// upcast=False, tests/test_util.py of flash-attention: P and dS in the input dtype before the
/// products that read them):
///   reference_cpu forward: fp32 scores, softmax and sums; P rounded to the input dtype before P V.
///   reference_cpu backward (16-bit inputs; fp32 / fp64 inputs: as kFloat64): fp32 scores,
///     P = exp(s - lse), D = rowsum(dO o O), dP = dO V^T and dS = P o (dP - D); P and dS rounded
///     once to the input dtype before dV += P^T dO, dK += dS^T Q, dQ += dS K (float64 sums);
///     dQ and dK times softmax_scale once at the end.
///   reference_cuda forward (fp32 accumulation in both modes): P rounded to the input dtype
///     before P V; the row sum adds the unrounded P, as a fused kernel's does.
///   reference_cuda backward (fp32 accumulation in both modes): P and dS rounded to the input
///     dtype before the same three products.
enum class ReferenceNumerics { kFloat64, kLowPrecision };

/// float64-accumulating CPU reference; all tensors on the host. Without `numerics`: kFloat64.
Status reference_cpu_forward(const AttentionProblem& p, const ProblemInfo& info);
Status reference_cpu_forward(const AttentionProblem& p, const ProblemInfo& info,
                             ReferenceNumerics numerics);
Status reference_cpu_backward(const AttentionProblem& p, const ProblemInfo& info);
Status reference_cpu_backward(const AttentionProblem& p, const ProblemInfo& info,
                              ReferenceNumerics numerics);

/// float64-accumulating CPU reference of a KV-cache call (flashlane/kvcache.h), append and
/// rotary included; all tensors on the host (src/reference/reference_cpu_kvcache.cpp).
Status reference_cpu_kvcache(const KvCacheProblem& p, const ProblemInfo& info);

/// Straightforward CUDA reference (fp32 accumulation); all tensors on one CUDA device.
/// Without `numerics` (kFloat64) nothing is rounded; kLowPrecision rounds P (and, backward, dS)
/// to the input dtype (16-bit inputs only; fp32 / fp64 inputs ignore it).
Status reference_cuda_forward(const AttentionProblem& p, const ProblemInfo& info,
                              cudaStream_t stream);
Status reference_cuda_forward(const AttentionProblem& p, const ProblemInfo& info,
                              cudaStream_t stream, ReferenceNumerics numerics);
Status reference_cuda_backward(const AttentionProblem& p, const ProblemInfo& info,
                               cudaStream_t stream);
Status reference_cuda_backward(const AttentionProblem& p, const ProblemInfo& info,
                               cudaStream_t stream, ReferenceNumerics numerics);
/// Straightforward CUDA reference of a KV-cache call (flashlane/kvcache.h): the append (rotary in
/// the accumulation type, rounded to the cache dtype by the store), then attention with fp32
/// accumulation (float64 for float64 tensors); all tensors on one CUDA device, every piece of
/// metadata read on the device (graph-capturable) (src/reference/reference_cuda_kvcache.cu).
Status reference_cuda_kvcache(const KvCacheProblem& p, const ProblemInfo& info,
                              cudaStream_t stream);

/// Hopper kernels. `variant` receives the tile shape and features of the launch.
/// Only called when the sm90 rules of the applicability table pass.
Status sm90_forward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t stream,
                    std::string* variant);
Status sm90_backward(const AttentionProblem& p, const ProblemInfo& info, cudaStream_t stream,
                     std::string* variant);
/// (head_dim, head_dim_v) pairs of the sm90 kernel table (src/sm90/common/kernel_table.h) that
/// this build compiled for the direction (FLASHLANE_SM90_HEAD_DIMS filters both alike).
bool sm90_forward_supports(int64_t head_dim, int64_t head_dim_v);
bool sm90_backward_supports(int64_t head_dim, int64_t head_dim_v);
/// The head-dim pairs of the table in words, and which of them this build compiled, for the
/// description of the head-dim rows of the applicability table.
std::string sm90_head_dims_text();
/// Forward: the tile count (query tiles x heads_q x batch) fits the kernel's int32 tile index.
bool sm90_forward_grid_fits(const ProblemInfo& info);
/// KV-cache calls (flashlane/kvcache.h) on the sm90 decode kernels (src/sm90/decode/): split-KV
/// attention with the query heads of a KV head packed into one tile, a dense or paged cache of
/// any page size, the append with rotary, and the combine of the splits. `variant` names the
/// head dim, dtype, packing, split count and features.
Status sm90_decode(const KvCacheProblem& p, const ProblemInfo& info, cudaStream_t stream,
                   std::string* variant);
/// head_dim == head_dim_v in {64, 128, 256} and compiled into this build.
bool sm90_decode_supports(int64_t head_dim, int64_t head_dim_v);
/// batch and heads_kv at most 65535 (grid dimensions), capacity + seqlen_new below 2^31, and the
/// query rows and tiles within int32.
bool sm90_decode_grid_fits(const ProblemInfo& info);

}  // namespace flashlane::detail
