// kernel_table.cpp: what the rest of the library asks of the kernel table: the supports checks
// of both directions, the head-dim text of the applicability rows and the variant names.
#include <string>

#include "dispatch/backends.h"
#include "sm90/common/instantiations.h"

namespace flashlane::sm90 {
namespace {

std::string tile_dims(const KernelConfig& c) {
  std::string s = "_d" + std::to_string(c.head_dim);
  if (c.head_dim_v != c.head_dim) s += "_dv" + std::to_string(c.head_dim_v);
  return s;
}

std::string pair_text(const KernelConfig& c) {
  return "(" + std::to_string(c.head_dim) + ", " + std::to_string(c.head_dim_v) + ")";
}

}  // namespace

std::string fwd_variant_name(const KernelConfig& c, DType dtype) {
  std::string s = "fwd_m" + std::to_string(kFwdBlockM) + "_n" + std::to_string(c.fwd.block_n) +
                  tile_dims(c) + dtype_suffix(dtype) + "_ws2_stages" +
                  std::to_string(c.fwd.stages);
  // The softmax choices (fwd/softmax.h), when the row makes them.
  if (c.fwd.exp2_emulated_per16 > 0) {
    s += "_exp2fma" + std::to_string(c.fwd.exp2_emulated_per16) + "of16";
  }
  if (c.fwd.rescale_threshold > 0) s += "_rescale" + std::to_string(c.fwd.rescale_threshold);
  return s;
}

std::string bwd_variant_name(const KernelConfig& c, DType dtype) {
  return "bwd_m" + std::to_string(c.bwd.block_m) + "_n" + std::to_string(c.bwd.block_n) +
         tile_dims(c) + dtype_suffix(dtype) + "_wgmma";
}

std::string variant_features(const ProblemInfo& info) {
  std::string s;
  if (info.is_causal()) s += "+causal";
  if (info.has_window()) s += "+window";
  if (info.softcap > 0.0) s += "+softcap";
  if (info.varlen) s += "+varlen";
  if (info.heads_q != info.heads_kv) s += "+gqa";
  if (info.has_sink) s += "+sink";
  return s;
}

}  // namespace flashlane::sm90

namespace flashlane::detail {

bool sm90_forward_supports(int64_t head_dim, int64_t head_dim_v) {
  return sm90::compiled_row(head_dim, head_dim_v) != nullptr;
}

bool sm90_backward_supports(int64_t head_dim, int64_t head_dim_v) {
  return sm90::compiled_row(head_dim, head_dim_v) != nullptr;
}

std::string sm90_head_dims_text() {
  // "... (FLASHLANE_SM90_HEAD_DIMS); table rows: (64, 64), ...; compiled here: (128, 128)"
  std::string all, compiled;
  for (const sm90::KernelConfig& c : sm90::kKernelTable) {
    all += (all.empty() ? "" : ", ") + sm90::pair_text(c);
    if (sm90::row_compiled(c)) compiled += (compiled.empty() ? "" : ", ") + sm90::pair_text(c);
  }
  return "(head_dim, head_dim_v) is a row of the sm90 kernel table compiled into this build "
         "(FLASHLANE_SM90_HEAD_DIMS); table rows: " +
         all + "; compiled here: " + (compiled.empty() ? std::string("none") : compiled);
}

}  // namespace flashlane::detail
