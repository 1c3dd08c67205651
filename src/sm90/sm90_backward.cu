// sm90_backward.cu: entry point of the sm90 backward (dispatch/backends.h). Translates the
// validated problem into BwdParams (common/params_builder.h), dispatches to the kernel-table row
// of (head_dim, head_dim_v) and names the launch in the variant string. Kernels: sm90/bwd/
// (preprocess, the WGMMA + TMA key-tile kernel, postprocess), instantiated by the generated
// files.
#include <cstdint>
#include <string>

#include "dispatch/backends.h"
#include "sm90/bwd/launch_decl.h"
#include "sm90/common/instantiations.h"
#include "sm90/common/params_builder.h"

namespace flashlane::detail {

Status sm90_backward(const AttentionProblem& pb, const ProblemInfo& info, cudaStream_t stream,
                     std::string* variant) {
  const sm90::KernelConfig* row = sm90::compiled_row(info.head_dim, info.head_dim_v);
  if (row == nullptr) {
    return Status(ErrorCode::kInternal,
                  "sm90 backward called for unsupported head_dim " +
                      std::to_string(info.head_dim) + " / head_dim_v " +
                      std::to_string(info.head_dim_v),
                  "sm90.bwd_head_dim_unsupported");
  }
  if (info.dtype != DType::kBFloat16 && info.dtype != DType::kFloat16) {
    return Status(ErrorCode::kInternal, "sm90 backward called with an unsupported dtype",
                  "sm90.dtype_unsupported");
  }
  constexpr int64_t kMaxGridYZ = 65535;  // batch and heads ride grid dimensions z and y
  if (info.batch > kMaxGridYZ || info.heads_q > kMaxGridYZ) {
    return Status(ErrorCode::kInternal, "sm90 backward: batch or heads exceed 65535",
                  "sm90.bwd_grid_too_large");
  }
  sm90::BwdParams p;
  if (Status st = sm90::build_bwd_params(pb, info, &p); !st.ok()) return st;

  Status st = sm90::with_compiled_kernel(
      info, "sm90.bwd_head_dim_unsupported", [&](auto d, auto dv, auto bf16) {
        return sm90::launch_bwd_wgmma<decltype(d)::value, decltype(dv)::value,
                                      decltype(bf16)::value>(p, stream);
      });
  if (!st.ok()) return st;
  if (variant != nullptr) {
    *variant = sm90::bwd_variant_name(*row, info.dtype) + sm90::variant_features(info) +
               (info.deterministic ? "+deterministic" : "+atomic_dq");
  }
  return Status::Ok();
}

}  // namespace flashlane::detail
