// decode_rows.cpp: the rows of the applicability table that refuse KV-cache (decode) calls on
// backends without decode code, and the marking of the rows that look at the machine.
//
// define_backend() (backend_registry.cpp) adds these rows to every backend whose definition
// has no decode function and is not reserved (a reserved backend's `never` row already refuses
// everything). They are inserted right after the backend's last device row, so a decode call on
// a machine the backend could serve is refused by them, with a tag naming the reason, before any
// forward-only row speaks. Every row holds for forward and backward calls.
//
// sm90 has decode kernels (src/sm90/decode/) and its own KV-cache rows (backends/sm90.cpp).
#include "dispatch/decode_rows.h"

#include <string>

namespace flashlane::detail {

bool is_device_row(const Rule& r) {
  if (r.kind != RuleKind::kSelection) return false;
  if (r.holds == &rules::has_device || r.holds == &rules::on_cuda || r.holds == &rules::on_host) {
    return true;
  }
  // The compute-capability rows of the backends (their predicates are local to their files).
  return r.tag == "sm90.requires_sm90" || r.tag == "reference_cuda.requires_sm80";
}

std::vector<Rule> decode_rows(const BackendDef& def) {
  // A backend registered without decode code.
  return {selection_rule(std::string(def.name) + ".decode_not_implemented",
                         std::string("not a KV-cache (decode) call: ") + def.name +
                             " has no decode code (reference_cpu, reference_cuda and sm90 have)",
                         rules::not_decode)};
}

}  // namespace flashlane::detail
