// receipt_sink.h: internal receipt helpers shared by the dispatcher and the tools.
#pragma once

#include <nlohmann/json.hpp>

#include "flashlane/receipt.h"

namespace flashlane {
/// The receipt as a JSON object (the schema of docs/RECEIPTS.md).
nlohmann::json receipt_json(const Receipt& receipt);
namespace detail {
/// Stores `receipt` as this thread's last receipt and appends it to $FLASHLANE_RECEIPTS if set.
void record_receipt(const Receipt& receipt);
}  // namespace detail
}  // namespace flashlane
