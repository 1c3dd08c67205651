// applicability.h: THE applicability table. One row per rule: (backend, kind, tag, description,
// predicate). The rows are the concatenation, in registry order, of the rules of the backends
// registered in backend_registry.cpp (each backend is one file under src/dispatch/backends/).
// Selection (dispatch.cpp), `flashlane info`, `flashlane matrix` and docs/applicability.md read
// only this table: no backend decision lives elsewhere.
//
// Two kinds of rows:
//   selection  a predicate over the validated problem and its device. A backend applies to a
//              call when every one of its selection rows holds; the first that fails names the
//              reason (its tag).
//   execution  no predicate, never evaluated by selection: a tag that the backend can return
//              after it was selected (a failed launch). Listed so that every tag a backend can
//              return is in the table (tests/cpu/test_tag_coverage.cpp checks it).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "flashlane/dispatch.h"
#include "flashlane/problem.h"

namespace flashlane::detail {

/// What a rule may look at: the validated problem and the device its tensors live on.
struct RuleContext {
  const ProblemInfo& info;
  const DeviceInfo& device;
};

enum class RuleKind : int { kSelection = 0, kExecution = 1 };

/// "selection", "execution".
const char* rule_kind_name(RuleKind kind);

struct Rule {
  Backend backend = Backend::kAuto;  // set by define_backend() from the backend's id
  RuleKind kind = RuleKind::kSelection;
  std::string tag;          // stable, namespaced by backend: "sm90.requires_sm90"
  std::string description;  // selection: what must hold ("the device is sm_90 (H100, H200)");
                            // execution: when the tag is returned
  bool (*holds)(const RuleContext&) = nullptr;  // selection rows only; nullptr for execution
  /// The description names what this build compiled (it differs between builds; the test of
  /// docs/applicability.md compares such rows without their description).
  bool build_dependent = false;
  /// The predicate looks at the machine or at where the tensors live (a CUDA device, its sm,
  /// host or device tensors), not at the problem's shape or options. A ServingPlan
  /// (flashlane/serving.h) judges a configuration without a device: it skips these rows unless
  /// asked to check the device too.
  bool device_dependent = false;
};

/// Every row of every registered backend: registry order, and within a backend its selection
/// rows in evaluation order followed by its execution rows.
const std::vector<Rule>& applicability_rules();

/// The first selection rule of `backend` that does not hold, or nullptr when the backend
/// applies (or is not registered). skip_device_rules: rows with device_dependent are passed over.
const Rule* first_failing_rule(Backend backend, const RuleContext& ctx,
                               bool skip_device_rules = false);

/// The table as Markdown (docs/applicability.md is this text) and as JSON (`matrix --json`).
std::string applicability_markdown();
nlohmann::json applicability_json();

}  // namespace flashlane::detail
