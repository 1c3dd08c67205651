// decode_rows.cpp: the rows of the applicability table that refuse KV-cache (decode) calls on
// backends without decode code, and the marking of the rows that look at the machine.
//
// define_backend() (backend_registry.cpp) adds these rows to every backend whose definition
// has no decode function and is not reserved (a reserved backend's `never` row already refuses
// everything). They are inserted right after the backend's last device row, so a decode call on
// a machine the backend could serve is refused by them, with a tag naming the reason, before any
// forward-only row speaks. Every row holds for forward and backward calls.
//
// The Hopper decode kernels (src/sm90/decode/, planned: split-KV + combine, PackGQA, paged
// gather) do not exist yet; until they do, sm90's rows refuse every KV-cache call. The rows for
// the constraints those kernels will have come first, so that a serving plan (serving.h) names
// the specific reason already.
#include "dispatch/decode_rows.h"

#include <string>

namespace flashlane::detail {
namespace {

bool page_size_mult16(const RuleContext& c) {
  return !c.info.is_decode() || c.info.kv_layout != KvLayout::kPaged || c.info.page_size % 16 == 0;
}
bool rotary_dim_mult16(const RuleContext& c) {
  return !c.info.is_decode() || c.info.rotary_dim % 16 == 0;
}

}  // namespace

bool is_device_row(const Rule& r) {
  if (r.kind != RuleKind::kSelection) return false;
  if (r.holds == &rules::has_device || r.holds == &rules::on_cuda || r.holds == &rules::on_host) {
    return true;
  }
  // The compute-capability rows of the backends (their predicates are local to their files).
  return r.tag == "sm90.requires_sm90" || r.tag == "reference_cuda.requires_sm80";
}

std::vector<Rule> decode_rows(const BackendDef& def) {
  std::vector<Rule> rows;
  if (def.id == Backend::kSm90) {
    rows.push_back(selection_rule(
        "sm90.decode_page_size_unsupported",
        "KV-cache call over a paged cache: page_size is a multiple of 16 (the paged gather planned "
        "for the sm90 decode kernels moves whole 16-row tiles)",
        page_size_mult16));
    rows.push_back(selection_rule(
        "sm90.decode_rotary_dim_unsupported",
        "KV-cache call with rotary: rotary_dim is a multiple of 16 (the rule of FlashAttention's "
        "decode kernels, kept for the planned sm90 ones)",
        rotary_dim_mult16));
    rows.push_back(selection_rule("sm90.decode_not_implemented",
                                  "not a KV-cache (decode) call: no sm90 decode kernel exists "
                                  "yet, so every KV-cache call fails closed here",
                                  rules::not_decode));
    return rows;
  }
  // A backend registered later without decode code.
  rows.push_back(selection_rule(std::string(def.name) + ".decode_not_implemented",
                                std::string("not a KV-cache (decode) call: ") + def.name +
                                    " has no decode code yet (reference_cpu and reference_cuda "
                                    "have)",
                                rules::not_decode));
  return rows;
}

}  // namespace flashlane::detail
