// backend_registry.cpp: THE list of backends, and the public name / priority lookups over it.
#include "dispatch/backend_registry.h"

#include <algorithm>
#include <cstddef>

#include "dispatch/decode_rows.h"

namespace flashlane {
namespace detail {

// Each backend's definition: src/dispatch/backends/<name>.cpp.
const BackendDef& sm90_backend();
const BackendDef& sm100_backend();
const BackendDef& cudnn_backend();
const BackendDef& reference_cuda_backend();
const BackendDef& reference_cpu_backend();

const std::vector<const BackendDef*>& backend_registry() {
  // The registration, one line per backend. This order is the applicability table's row order
  // and breaks ties of priority; auto's order is by priority (BackendDef::priority).
  static const std::vector<const BackendDef*> kRegistry = {
      &sm90_backend(),
      &sm100_backend(),
      &cudnn_backend(),
      &reference_cuda_backend(),
      &reference_cpu_backend(),
  };
  return kRegistry;
}

const BackendDef* find_backend(Backend id) {
  for (const BackendDef* d : backend_registry()) {
    if (d->id == id) return d;
  }
  return nullptr;
}

const BackendDef* find_backend(std::string_view name) {
  for (const BackendDef* d : backend_registry()) {
    if (name == d->name) return d;
  }
  return nullptr;
}

BackendDef define_backend(BackendDef def) {
  size_t after_device = 0;  // one past the last device row
  bool reserved = false;
  for (size_t i = 0; i < def.rules.size(); ++i) {
    Rule& r = def.rules[i];
    r.device_dependent = r.device_dependent || is_device_row(r);
    if (r.device_dependent) after_device = i + 1;
    reserved = reserved || (r.kind == RuleKind::kSelection && r.holds == &rules::never);
  }
  if (def.decode == nullptr && !reserved) {
    const std::vector<Rule> rows = decode_rows(def);
    def.rules.insert(def.rules.begin() + static_cast<std::ptrdiff_t>(after_device), rows.begin(),
                     rows.end());
  }
  for (Rule& r : def.rules) r.backend = def.id;
  return def;
}

}  // namespace detail

const char* backend_name(Backend backend) {
  if (backend == Backend::kAuto) return "auto";
  const detail::BackendDef* d = detail::find_backend(backend);
  return d != nullptr ? d->name : "unknown";
}

bool parse_backend(const std::string& name, Backend* out) {
  if (name == "auto") {
    *out = Backend::kAuto;
    return true;
  }
  const detail::BackendDef* d = detail::find_backend(std::string_view(name));
  if (d == nullptr) return false;
  *out = d->id;
  return true;
}

const std::vector<Backend>& registered_backends() {
  static const std::vector<Backend> kAll = [] {
    std::vector<Backend> all;
    for (const detail::BackendDef* d : detail::backend_registry()) all.push_back(d->id);
    return all;
  }();
  return kAll;
}

const std::vector<Backend>& backend_priority() {
  static const std::vector<Backend> kPriority = [] {
    std::vector<const detail::BackendDef*> autos;
    for (const detail::BackendDef* d : detail::backend_registry()) {
      if (d->priority >= 0) autos.push_back(d);
    }
    std::stable_sort(autos.begin(), autos.end(),
                     [](const detail::BackendDef* a, const detail::BackendDef* b) {
                       return a->priority < b->priority;
                     });
    std::vector<Backend> order;
    for (const detail::BackendDef* d : autos) order.push_back(d->id);
    return order;
  }();
  return kPriority;
}

}  // namespace flashlane
