// decode_rows.h: rows define_backend() adds to the applicability table (decode_rows.cpp).
#pragma once

#include <vector>

#include "dispatch/backend_registry.h"

namespace flashlane::detail {

/// True for a selection row about the machine or the tensors' place (Rule::device_dependent).
bool is_device_row(const Rule& r);

/// The rows refusing KV-cache calls on a backend without decode code
/// (<name>.decode_not_implemented).
std::vector<Rule> decode_rows(const BackendDef& def);

}  // namespace flashlane::detail
