// backend_registry.h: a backend as one object. Each backend is one file under
// src/dispatch/backends/ that defines its BackendDef: name, auto priority, where its tensors
// live, its rows of the applicability table (selection rules and execution tags) and its run
// functions. backend_registry.cpp registers every definition with one line; backend_name(),
// parse_backend(), backend_priority(), registered_backends(), the applicability table and the
// dispatcher's call of the backend are all lookups in that registry.
//
// Adding a backend: a value of the public enum Backend (include/flashlane/dispatch.h), one file
// src/dispatch/backends/<name>.cpp defining `const BackendDef& <name>_backend()`, and its
// declaration + entry in backend_registry.cpp. Python (_C.backend_names()), the CLI and
// docs/applicability.md (regenerate: `flashlane matrix > docs/applicability.md`) follow.
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dispatch/applicability.h"
#include "flashlane/dispatch.h"
#include "flashlane/kvcache.h"
#include "flashlane/problem.h"
#include "flashlane/status.h"

namespace flashlane::detail {

/// Runs one direction of a selected backend: called only after validation and after every
/// selection rule of the backend held. `variant` receives the kernel variant for the receipt.
using RunFn = Status (*)(const AttentionProblem& problem, const ProblemInfo& info,
                         cudaStream_t stream, std::string* variant);

/// Runs a KV-cache call (flashlane/kvcache.h) of a selected backend, after validate_kvcache()
/// and every selection rule held.
using RunDecodeFn = Status (*)(const KvCacheProblem& problem, const ProblemInfo& info,
                               cudaStream_t stream, std::string* variant);

/// priority of a backend that auto never picks (it runs only when a request names it).
inline constexpr int kNeverAuto = -1;

struct BackendDef {
  Backend id = Backend::kAuto;
  const char* name = "";   // "sm90": the name of requests, receipts and the tags' namespace
  int priority = kNeverAuto;  // auto tries lower values first; < 0: never picked by auto
  DeviceKind tensors = DeviceKind::kCUDA;  // where its tensors live (the tools place problems by it)
  std::vector<Rule> rules;  // selection rows in evaluation order, then execution rows
  RunFn forward = nullptr;  // nullptr: none (then a selection rule must always fail: fail closed)
  RunFn backward = nullptr;
  RunDecodeFn decode = nullptr;  // KV-cache calls; nullptr: a selection rule refuses them
};

/// Every registered backend, in registration order (the table's row order; ties of priority).
const std::vector<const BackendDef*>& backend_registry();
/// The definition of `id` / of `name`, or nullptr (kAuto and "auto" are not backends).
const BackendDef* find_backend(Backend id);
const BackendDef* find_backend(std::string_view name);

/// Finishes a definition: stamps its id into every rule, marks the rows about the machine
/// (Rule::device_dependent), and, when the backend has no decode function and is not reserved,
/// inserts after its last device row the rows refusing KV-cache calls (decode_rows.h). Backend
/// files return `define_backend({...})` from a function-local static.
BackendDef define_backend(BackendDef def);

/// Rows of the table, for the backend files.
inline Rule selection_rule(std::string tag, std::string description,
                           bool (*holds)(const RuleContext&), bool build_dependent = false) {
  Rule r;
  r.kind = RuleKind::kSelection;
  r.tag = std::move(tag);
  r.description = std::move(description);
  r.holds = holds;
  r.build_dependent = build_dependent;
  return r;
}
/// A selection row about the machine or the tensors' place (Rule::device_dependent).
inline Rule device_rule(std::string tag, std::string description,
                        bool (*holds)(const RuleContext&)) {
  Rule r = selection_rule(std::move(tag), std::move(description), holds);
  r.device_dependent = true;
  return r;
}
inline Rule execution_rule(std::string tag, std::string description) {
  Rule r;
  r.kind = RuleKind::kExecution;
  r.tag = std::move(tag);
  r.description = std::move(description);
  return r;
}

/// Predicates several backends share.
namespace rules {
inline bool on_cuda(const RuleContext& c) { return c.info.device.kind == DeviceKind::kCUDA; }
inline bool on_host(const RuleContext& c) { return c.info.device.kind == DeviceKind::kCPU; }
inline bool has_device(const RuleContext& c) { return c.device.cuda_available; }
inline bool half_dtype(const RuleContext& c) {
  return c.info.dtype == DType::kBFloat16 || c.info.dtype == DType::kFloat16;
}
inline bool never(const RuleContext&) { return false; }
inline bool not_decode(const RuleContext& c) { return !c.info.is_decode(); }
}  // namespace rules

}  // namespace flashlane::detail
