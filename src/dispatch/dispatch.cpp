// dispatch.cpp: selection over the applicability table and the public entry points.
// Every call, successful or not, leaves a receipt (receipt.cpp). The backends are lookups in
// the registry (backend_registry.h): their rules decide, their run functions execute.
#include "flashlane/dispatch.h"
#include "flashlane/kvcache.h"
#include "flashlane/version.h"

#include <cuda_runtime_api.h>

#include "dispatch/applicability.h"
#include "dispatch/backend_registry.h"
#include "dispatch/pending_error.h"
#include "core/problem_tensors.h"
#include "dispatch/receipt_sink.h"
#include "dispatch/surfaces.h"

namespace flashlane {

namespace detail {

Status pending_cuda_error_status(cudaError_t peeked) {
  switch (peeked) {
    case cudaSuccess:
    // The runtime cannot be used at all: not an error of the caller's work.
    case cudaErrorInsufficientDriver:
    case cudaErrorNoDevice:
    case cudaErrorInitializationError:
    case cudaErrorStubLibrary:
    case cudaErrorCallRequiresNewerDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemNotReady:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      return Status::Ok();
    default:
      return Status(ErrorCode::kCudaErrorPending,
                    std::string("a CUDA error from earlier work on this thread was pending when "
                                "the call began: ") +
                        cudaGetErrorName(peeked) + " (" + cudaGetErrorString(peeked) +
                        "); nothing was launched and the error is left pending "
                        "(cudaGetLastError() returns and clears it)");
  }
}

}  // namespace detail

namespace {

DeviceInfo device_of(const ProblemInfo& info) {
  // Host problems are judged against CUDA device 0 (its rules then fail on the tensors' place).
  return query_device(info.device.kind == DeviceKind::kCUDA ? info.device.index : 0);
}

SkippedBackend skip_entry(Backend b, const detail::Rule* rule) {
  return {backend_name(b), rule->tag};
}

}  // namespace

namespace {

Status unknown_backend(const Request& request) {
  return Status(ErrorCode::kInvalidArgument,
                "request.backend " + std::to_string(static_cast<int>(request.backend)) +
                    " names no registered backend");
}

/// Selection over the table for a validated problem (forward, backward or KV-cache).
Status select_validated(const ProblemInfo& info, const Request& request, Plan* plan) {
  const DeviceInfo device = device_of(info);
  const detail::RuleContext ctx{info, device};
  Plan result;

  if (request.backend != Backend::kAuto) {
    const detail::Rule* failing = detail::first_failing_rule(request.backend, ctx);
    if (failing == nullptr) {
      result.backend = request.backend;
      *plan = result;
      return Status::Ok();
    }
    if (request.strict) {
      return Status(ErrorCode::kBackendInapplicable,
                    std::string("strict request for backend ") + backend_name(request.backend) +
                        " refused: " + failing->description + " does not hold",
                    failing->tag);
    }
    result.skipped.push_back(skip_entry(request.backend, failing));
    result.fallback_reason = failing->tag;
  }

  for (Backend b : backend_priority()) {
    if (b == request.backend) continue;  // already judged above
    const detail::Rule* failing = detail::first_failing_rule(b, ctx);
    if (failing == nullptr) {
      result.backend = b;
      *plan = result;
      return Status::Ok();
    }
    result.skipped.push_back(skip_entry(b, failing));
    if (result.fallback_reason.empty()) result.fallback_reason = failing->tag;
  }

  std::string why;
  for (const auto& s : result.skipped) why += (why.empty() ? "" : ", ") + s.backend + ": " + s.reason;
  *plan = result;
  return Status(ErrorCode::kNoApplicableBackend, "no backend applies (" + why + ")",
                result.skipped.empty() ? std::string() : result.skipped.front().reason);
}

}  // namespace

Status select(const AttentionProblem& problem, Direction direction, const Request& request,
              Plan* plan, ProblemInfo* info_out) {
  if (request.backend != Backend::kAuto && detail::find_backend(request.backend) == nullptr) {
    return unknown_backend(request);
  }
  ProblemInfo info;
  Status st = validate(problem, direction, &info);
  if (!st.ok()) return st;
  if (info_out) *info_out = info;
  return select_validated(info, request, plan);
}

Status select_kvcache(const KvCacheProblem& problem, const Request& request, Plan* plan,
                      ProblemInfo* info_out) {
  if (request.backend != Backend::kAuto && detail::find_backend(request.backend) == nullptr) {
    return unknown_backend(request);
  }
  ProblemInfo info;
  Status st = validate_kvcache(problem, &info);
  if (!st.ok()) return st;
  if (info_out) *info_out = info;
  return select_validated(info, request, plan);
}

namespace {

/// True when any tensor the caller gave is described as a CUDA device tensor (validation, which
/// talks to the CUDA runtime for such tensors, has not run yet).
bool names_cuda_tensors(const AttentionProblem& p) {
  for (const TensorView* t : detail::problem_tensors(p)) {
    if (t->defined() && t->device.kind == DeviceKind::kCUDA) return true;
  }
  return false;
}

/// Makes the tensors' CUDA device current for the duration of a launch.
class DeviceGuard {
 public:
  explicit DeviceGuard(const Device& d) {
    if (d.kind != DeviceKind::kCUDA) return;
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != d.index) {
      if (cudaSetDevice(d.index) == cudaSuccess) restore_ = true;
    }
  }
  ~DeviceGuard() { if (restore_) cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

Status run_backend(Backend b, Direction d, const AttentionProblem& p, const ProblemInfo& info,
                   cudaStream_t stream, std::string* variant) {
  const detail::BackendDef* def = detail::find_backend(b);
  const detail::RunFn run =
      def == nullptr ? nullptr : (d == Direction::kForward ? def->forward : def->backward);
  if (run == nullptr) {
    return Status(ErrorCode::kInternal,
                  std::string("selected backend without an implementation: ") + backend_name(b));
  }
  return run(p, info, stream, variant);
}

/// What every public call does around its backend, written once: the caller's pending CUDA error
/// first (before anything touches the CUDA runtime: validation reads pointer attributes and
/// clears the errors it provokes, the launch code checks cudaGetLastError; pending_error.h),
/// then select(&plan, &info), the receipt's device, run(plan, info, &variant) under a guard of
/// the problem's device, and the receipt, recorded whatever happened.
template <class Select, class Run>
Status run_with_receipt(Receipt r, bool names_cuda, Select&& select_fn, Run&& run_fn) {
  Status st;
  if (names_cuda) st = detail::pending_cuda_error_status(cudaPeekAtLastError());
  if (st.ok()) {
    Plan plan;
    ProblemInfo info;
    st = select_fn(&plan, &info);
    r.skipped = plan.skipped;
    r.fallback_reason = plan.fallback_reason;
    if (st.ok()) {
      const Device& dev = info.device;
      if (dev.kind == DeviceKind::kCUDA) {
        const DeviceInfo di = query_device(dev.index);
        r.device_name = di.name;
        r.sm = di.sm;
      } else {
        r.device_name = "cpu";
      }
      DeviceGuard guard(dev);
      std::string variant;
      st = run_fn(plan, info, &variant);
      r.variant = variant;
      if (st.ok()) {
        r.actual_backend = backend_name(plan.backend);
        r.kernel_fingerprint = kernel_fingerprint(r.actual_backend.c_str(), r.runtime_mode.c_str());
      }
    }
  }
  r.status = error_code_name(st.code());
  r.error_reason = st.reason_tag();
  detail::record_receipt(r);
  return st;
}

Status execute(const AttentionProblem& problem, Direction direction, const Request& request,
               cudaStream_t stream) {
  Receipt r;
  r.requested_backend = backend_name(request.backend);
  r.strict = request.strict;
  r.deterministic = direction == Direction::kBackward && problem.deterministic;
  r.runtime_mode =
      detail::attention_runtime_mode(direction, problem.cu_seqlens_q.defined(),
                                     problem.learnable_sink.defined());
  r.surface = detail::surface_for_mode(r.runtime_mode);
  return run_with_receipt(
      std::move(r), names_cuda_tensors(problem),
      [&](Plan* plan, ProblemInfo* info) { return select(problem, direction, request, plan, info); },
      [&](const Plan& plan, const ProblemInfo& info, std::string* variant) {
        return run_backend(plan.backend, direction, problem, info, stream, variant);
      });
}

bool names_cuda_tensors(const KvCacheProblem& p) {
  for (const TensorView* t : {&p.q, &p.k_cache, &p.v_cache, &p.o, &p.lse, &p.cache_seqlens,
                              &p.cache_batch_idx, &p.page_table, &p.k_new, &p.v_new,
                              &p.rotary_cos, &p.rotary_sin}) {
    if (t->defined() && t->device.kind == DeviceKind::kCUDA) return true;
  }
  return false;
}

Status execute_kvcache(const KvCacheProblem& problem, const Request& request,
                       cudaStream_t stream) {
  Receipt r;
  r.requested_backend = backend_name(request.backend);
  r.strict = request.strict;
  r.runtime_mode = kvcache_runtime_mode(problem);
  r.surface = detail::surface_for_mode(r.runtime_mode);
  return run_with_receipt(
      std::move(r), names_cuda_tensors(problem),
      [&](Plan* plan, ProblemInfo* info) { return select_kvcache(problem, request, plan, info); },
      [&](const Plan& plan, const ProblemInfo& info, std::string* variant) {
        const detail::BackendDef* def = detail::find_backend(plan.backend);
        if (def == nullptr || def->decode == nullptr) {
          return Status(ErrorCode::kInternal, std::string("selected backend without decode code: ") +
                                                  backend_name(plan.backend));
        }
        return def->decode(problem, info, stream, variant);
      });
}

}  // namespace

Status forward_kvcache(const KvCacheProblem& problem, const Request& request,
                       cudaStream_t stream) {
  return execute_kvcache(problem, request, stream);
}

Status forward(const AttentionProblem& problem, const Request& request, cudaStream_t stream) {
  return execute(problem, Direction::kForward, request, stream);
}

Status backward(const AttentionProblem& problem, const Request& request, cudaStream_t stream) {
  return execute(problem, Direction::kBackward, request, stream);
}

}  // namespace flashlane
