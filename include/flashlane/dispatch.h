// flashlane/dispatch.h: backend selection and the public entry points.
//
// Each backend is one definition (src/dispatch/backends/<name>.cpp: name, priority, rules, run
// functions) registered in src/dispatch/backend_registry.cpp. Applicability lives in one table
// of rules (backend, predicate, reason tag), the concatenation of the registered backends'
// rules; selection, `flashlane matrix` and docs/applicability.md read only that table. A
// backend applies when all of its selection rules pass; the first rule that fails gives the
// reason tag.
//   Request{backend, strict=false}: auto picks the first applicable backend by priority
//     (sm90, reference_cuda, reference_cpu); an explicitly named backend that does not apply
//     falls back to the next applicable one by priority, recorded in the receipt.
//   strict=true: the requested backend runs, or the call fails with kBackendInapplicable and the
//     rule's tag. Auto + strict: fails if no backend of the priority list applies.
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "flashlane/problem.h"
#include "flashlane/receipt.h"
#include "flashlane/status.h"

namespace flashlane {

enum class Backend : int { kAuto = 0, kSm90 = 1, kReferenceCuda = 2, kReferenceCpu = 3, kSm100 = 4, kCudnn = 5 };

/// "auto", "sm90", "reference_cuda", "reference_cpu", "sm100", "cudnn" ("unknown" for a value
/// that names no registered backend).
const char* backend_name(Backend backend);
/// "auto" or the name of a registered backend; false for any other name.
bool parse_backend(const std::string& name, Backend* out);
/// Concrete backends in priority order (auto tries them in this order): sm90, reference_cuda,
/// reference_cpu. Registered backends that auto never picks (sm100, cudnn) are not listed.
const std::vector<Backend>& backend_priority();
/// Every registered concrete backend (not kAuto), in the applicability table's order.
const std::vector<Backend>& registered_backends();

/// The ids of the surface catalog (the kinds of attention work proof and status are kept for:
/// "dense_fwd", "dense_bwd", "varlen_fwd", "varlen_bwd", "decode", "paged_decode",
/// "append_decode", "attention_sinks", "context_parallel"), in the catalog's order; receipts,
/// bench rows, the rollout manifest, the gate and `flashlane status` use the same ids.
std::vector<std::string> surface_ids();

struct Request {
  Backend backend = Backend::kAuto;
  bool strict = false;
};

/// The device a problem runs on, as the rules see it.
struct DeviceInfo {
  bool cuda_available = false;  // a CUDA device exists and the driver answers
  int ordinal = -1;
  int sm = 0;                   // major * 10 + minor
  int sm_count = 0;
  std::string name = "cpu";
  std::string driver_error;     // why cuda_available is false
};
/// Properties of CUDA device `ordinal` (cached); cuda_available false when there is none.
DeviceInfo query_device(int ordinal);

/// The outcome of selection: which backend runs and what was skipped.
struct Plan {
  Backend backend = Backend::kAuto;
  std::vector<SkippedBackend> skipped;
  std::string fallback_reason;
};

/// Selects a backend without running anything. Validates first (ErrorCode 1xx), then applies the
/// table (ErrorCode 2xx with the reason tag on refusal).
Status select(const AttentionProblem& problem, Direction direction, const Request& request,
              Plan* plan, ProblemInfo* info = nullptr);

/// Attention forward: o = softmax(scale * q k^T + mask) v, and lse if given.
/// Algorithm: FlashAttention (Dao et al. 2022; FA2 2023 sec. 3; FA3 2024 for Hopper).
/// CUDA backends launch on `stream` and return without synchronizing; reference_cpu runs on the
/// calling thread. Errors: validation (1xx), dispatch (2xx), kCudaError, and
/// kCudaErrorPending when the problem's tensors are on a CUDA device and a CUDA error from the
/// caller's earlier work on this host thread is pending as the call begins (checked with
/// cudaPeekAtLastError before anything else; nothing is launched and the error stays pending).
/// On any error before the launch no output byte changes. Writes a Receipt readable through
/// last_receipt().
Status forward(const AttentionProblem& problem, const Request& request = {},
               cudaStream_t stream = nullptr);

/// Attention backward: dq, dk, dv from q, k, v, o, lse, dout (FlashAttention-2 sec. 3.2).
/// Same dispatch, error and receipt rules as forward().
Status backward(const AttentionProblem& problem, const Request& request = {},
                cudaStream_t stream = nullptr);

}  // namespace flashlane
