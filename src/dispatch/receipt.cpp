// receipt.cpp: per-call receipts: JSON form, the thread-local last receipt, and the
// FLASHLANE_RECEIPTS=file.jsonl sink (one line per call, safe across threads and processes:
// each line is one write(2) on a file opened with O_APPEND).
#include "dispatch/receipt_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>

namespace flashlane {
namespace {
thread_local Receipt t_last_receipt;
std::mutex g_file_mutex;
}  // namespace

bool Receipt::operator==(const Receipt& o) const {
  return requested_backend == o.requested_backend && actual_backend == o.actual_backend &&
         runtime_mode == o.runtime_mode && surface == o.surface && strict == o.strict &&
         fallback_reason == o.fallback_reason && skipped == o.skipped && variant == o.variant &&
         device_name == o.device_name && sm == o.sm && deterministic == o.deterministic &&
         status == o.status && error_reason == o.error_reason &&
         kernel_fingerprint == o.kernel_fingerprint;
}

nlohmann::json receipt_json(const Receipt& r) {
  nlohmann::json skipped = nlohmann::json::array();
  for (const auto& s : r.skipped) skipped.push_back({{"backend", s.backend}, {"reason", s.reason}});
  return {{"requested_backend", r.requested_backend},
          {"actual_backend", r.actual_backend},
          {"runtime_mode", r.runtime_mode},
          {"surface", r.surface},
          {"strict", r.strict},
          {"fallback_reason", r.fallback_reason},
          {"skipped", skipped},
          {"variant", r.variant},
          {"device", {{"name", r.device_name}, {"sm", r.sm}}},
          {"deterministic", r.deterministic},
          {"status", r.status},
          {"error_reason", r.error_reason},
          {"kernel_fingerprint", r.kernel_fingerprint}};
}

std::string receipt_to_json(const Receipt& r) { return receipt_json(r).dump(); }

bool receipt_from_json(const std::string& text, Receipt* out) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return false;
  try {
    Receipt r;
    r.requested_backend = j.at("requested_backend").get<std::string>();
    r.actual_backend = j.at("actual_backend").get<std::string>();
    r.runtime_mode = j.at("runtime_mode").get<std::string>();
    r.surface = j.value("surface", std::string());
    r.strict = j.at("strict").get<bool>();
    r.fallback_reason = j.at("fallback_reason").get<std::string>();
    for (const auto& s : j.at("skipped")) {
      r.skipped.push_back({s.at("backend").get<std::string>(), s.at("reason").get<std::string>()});
    }
    r.variant = j.at("variant").get<std::string>();
    r.device_name = j.at("device").at("name").get<std::string>();
    r.sm = j.at("device").at("sm").get<int>();
    r.deterministic = j.at("deterministic").get<bool>();
    r.status = j.at("status").get<std::string>();
    r.error_reason = j.at("error_reason").get<std::string>();
    r.kernel_fingerprint = j.value("kernel_fingerprint", std::string());
    *out = std::move(r);
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

const Receipt& last_receipt() { return t_last_receipt; }

namespace detail {

void record_receipt(const Receipt& r) {
  t_last_receipt = r;
  const char* path = std::getenv("FLASHLANE_RECEIPTS");
  if (path == nullptr || *path == '\0') return;
  const std::string line = receipt_to_json(r) + "\n";
  std::lock_guard<std::mutex> lock(g_file_mutex);
  int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;  // receipts are best effort; the call's own Status is unaffected
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(fd, line.data() + done, line.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

}  // namespace detail
}  // namespace flashlane
