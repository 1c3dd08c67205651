// surfaces.h: the catalog of surfaces: the user-visible kinds of attention work (dense forward,
// varlen backward, paged decode, ...) that proof is collected and status is reported for. It
// sits next to the applicability table and reads it: which backends may serve a surface, and
// why the others cannot, comes from the backend registry (backend_registry.h) and this build's
// compiled kernels, never from prose. `flashlane bench` stamps each proof row with its surface
// id (surface_for_mode), and the gate, the rollout manifest (bench/rollout_manifest.json) and
// `flashlane status` use the same ids.
//
// A surface without code (context_parallel) is listed with the tag surface.not_implemented;
// the decode surfaces (decode, paged_decode, append_decode) have code on the backends with a
// decode function (reference_cpu, reference_cuda and sm90), attention_sinks on the backends
// with a forward (runtime modes sinks_[varlen_]fwd / sinks_[varlen_]bwd); a backend that cannot
// serve a surface carries the tag of the reason (its applicability row, e.g.
// sm100.not_implemented, or sm90.not_compiled in a build without the Hopper kernels).
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "flashlane/problem.h"

namespace flashlane::detail {

/// Tag of a surface that no backend has code for yet.
inline constexpr const char* kSurfaceNotImplemented = "surface.not_implemented";

/// Whether one backend may serve one surface in this build.
struct SurfaceBackend {
  std::string backend;     // registry name: "sm90", "reference_cuda", ...
  bool applies = false;    // the backend has code for the surface and it is in this build
  std::string reason_tag;  // when !applies: why ("sm100.not_implemented"); empty otherwise
};

/// A variant of the surface that no backend serves (fp8 inputs), with the tag that refuses it.
struct SurfaceExclusion {
  std::string what;        // "dtype fp8"
  std::string reason_tag;  // "sm90.dtype_unsupported"
};

/// One surface of the catalog.
struct Surface {
  std::string id;                          // "dense_fwd", "varlen_bwd", "paged_decode", ...
  std::string description;                 // one line
  std::vector<std::string> runtime_modes;  // receipt runtime_mode values that execute it
  bool has_code = false;                   // some backend implements it today
  std::string reason_tag;                  // !has_code: kSurfaceNotImplemented
  std::vector<SurfaceBackend> backends;    // every registered backend, registry order
  std::vector<std::string> artifact_kinds; // proof substrates that can speak for it
  std::vector<SurfaceExclusion> exclusions;
};

/// The catalog, in a fixed order: dense_fwd, dense_bwd, varlen_fwd, varlen_bwd, decode,
/// paged_decode, append_decode, attention_sinks, context_parallel. Built once from the backend
/// registry (registration order of backends within a surface).
const std::vector<Surface>& surface_catalog();

/// The surface with this id, or nullptr.
const Surface* find_surface(std::string_view id);

/// The receipt runtime_mode of a forward or backward call (kForward / kBackward): "fwd",
/// "varlen_fwd", "bwd", "varlen_bwd", and with attention sinks "sinks_fwd", "sinks_varlen_fwd",
/// "sinks_bwd", "sinks_varlen_bwd". KV-cache calls: kvcache_runtime_mode (flashlane/kvcache.h).
const char* attention_runtime_mode(Direction direction, bool varlen, bool sinks);

/// The surface a receipt runtime_mode executes ("fwd" -> dense_fwd, "varlen_bwd" -> varlen_bwd,
/// "decode" -> decode, ...); "" for a mode no surface lists.
std::string surface_for_mode(std::string_view runtime_mode);

/// The entry of `backend` in `surface`, or nullptr when the backend is not registered.
const SurfaceBackend* surface_backend(const Surface& surface, std::string_view backend);

/// The catalog as JSON: {"surfaces": [{id, description, runtime_modes, has_code, reason_tag,
/// backends: [{backend, applies, reason_tag}], artifact_kinds, exclusions: [{what,
/// reason_tag}]}]} (docs/RECEIPTS.md, "Status").
nlohmann::json surfaces_json();

}  // namespace flashlane::detail
