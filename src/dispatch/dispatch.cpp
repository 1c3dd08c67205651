// dispatch.cpp: selection over the applicability table and the public entry points.
// Every call, successful or not, leaves a receipt (receipt.cpp).
#include "flashlane/dispatch.h"

#include <cuda_runtime_api.h>

#include "dispatch/applicability.h"
#include "dispatch/backends.h"
#include "dispatch/receipt_sink.h"

namespace flashlane {

const char* backend_name(Backend backend) {
  switch (backend) {
    case Backend::kAuto: return "auto";
    case Backend::kSm90: return "sm90";
    case Backend::kReferenceCuda: return "reference_cuda";
    case Backend::kReferenceCpu: return "reference_cpu";
    case Backend::kSm100: return "sm100";
    case Backend::kCudnn: return "cudnn";
  }
  return "unknown";
}

bool parse_backend(const std::string& name, Backend* out) {
  for (Backend b : {Backend::kAuto, Backend::kSm90, Backend::kReferenceCuda,
                    Backend::kReferenceCpu, Backend::kSm100, Backend::kCudnn}) {
    if (name == backend_name(b)) { *out = b; return true; }
  }
  return false;
}

const std::vector<Backend>& backend_priority() {
  static const std::vector<Backend> kPriority = {Backend::kSm90, Backend::kReferenceCuda,
                                                 Backend::kReferenceCpu};
  return kPriority;
}

namespace {

DeviceInfo device_of(const ProblemInfo& info) {
  // Host problems are judged against CUDA device 0 (its rules then fail on the tensors' place).
  return query_device(info.device.kind == DeviceKind::kCUDA ? info.device.index : 0);
}

SkippedBackend skip_entry(Backend b, const detail::Rule* rule) {
  return {backend_name(b), rule->tag};
}

}  // namespace

Status select(const AttentionProblem& problem, Direction direction, const Request& request,
              Plan* plan, ProblemInfo* info_out) {
  ProblemInfo info;
  Status st = validate(problem, direction, &info);
  if (!st.ok()) return st;
  if (info_out) *info_out = info;

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

namespace {

const char* mode_name(Direction d, bool varlen) {
  if (d == Direction::kForward) return varlen ? "varlen_fwd" : "fwd";
  return varlen ? "varlen_bwd" : "bwd";
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
  const bool fwd = d == Direction::kForward;
  switch (b) {
    case Backend::kReferenceCpu:
      *variant = "reference_cpu_f64acc";
      return fwd ? detail::reference_cpu_forward(p, info) : detail::reference_cpu_backward(p, info);
    case Backend::kReferenceCuda:
      *variant = "reference_cuda_f32acc";
      return fwd ? detail::reference_cuda_forward(p, info, stream)
                 : detail::reference_cuda_backward(p, info, stream);
    case Backend::kSm90:
      return fwd ? detail::sm90_forward(p, info, stream, variant)
                 : detail::sm90_backward(p, info, stream, variant);
    default:
      return Status(ErrorCode::kInternal,
                    std::string("selected backend without an implementation: ") + backend_name(b));
  }
}

Status execute(const AttentionProblem& problem, Direction direction, const Request& request,
               cudaStream_t stream) {
  Receipt r;
  r.requested_backend = backend_name(request.backend);
  r.strict = request.strict;
  r.deterministic = direction == Direction::kBackward && problem.deterministic;
  r.runtime_mode = mode_name(direction, problem.cu_seqlens_q.defined());

  Plan plan;
  ProblemInfo info;
  Status st = select(problem, direction, request, &plan, &info);
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
    st = run_backend(plan.backend, direction, problem, info, stream, &variant);
    r.variant = variant;
    if (st.ok()) r.actual_backend = backend_name(plan.backend);
  }
  r.status = error_code_name(st.code());
  r.error_reason = st.reason_tag();
  detail::record_receipt(r);
  return st;
}

}  // namespace

Status forward(const AttentionProblem& problem, const Request& request, cudaStream_t stream) {
  return execute(problem, Direction::kForward, request, stream);
}

Status backward(const AttentionProblem& problem, const Request& request, cudaStream_t stream) {
  return execute(problem, Direction::kBackward, request, stream);
}

}  // namespace flashlane
