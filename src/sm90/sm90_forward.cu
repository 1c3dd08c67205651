// sm90_forward.cu: entry point of the sm90 forward (dispatch/backends.h). Translates the
// validated problem into FwdParams (common/params_builder.h), dispatches to the kernel-table row
// of (head_dim, head_dim_v) and names the launch in the variant string. No CuTe here: the
// kernels are in the generated instantiation files.
#include <cstdint>
#include <string>

#include "dispatch/backends.h"
#include "sm90/common/instantiations.h"
#include "sm90/common/params_builder.h"
#include "sm90/fwd/launch_decl.h"

namespace flashlane::detail {

bool sm90_forward_grid_fits(const ProblemInfo& info) {
  const int64_t m_blocks = (info.seqlen_q + sm90::kFwdBlockM - 1) / sm90::kFwdBlockM;
  // Each factor is below 2^40 (validation bounds nothing, but the product is checked stepwise).
  if (m_blocks > INT32_MAX || info.heads_q > INT32_MAX || info.batch > INT32_MAX) return false;
  const int64_t mh = m_blocks * info.heads_q;
  return mh <= INT32_MAX && mh * info.batch <= int64_t(INT32_MAX);
}

Status sm90_forward(const AttentionProblem& pb, const ProblemInfo& info, cudaStream_t stream,
                    std::string* variant) {
  const sm90::KernelConfig* row = sm90::compiled_row(info.head_dim, info.head_dim_v);
  if (row == nullptr) {
    return Status(ErrorCode::kInternal,
                  "sm90 forward called for unsupported head_dim " + std::to_string(info.head_dim) +
                      " / head_dim_v " + std::to_string(info.head_dim_v),
                  "sm90.head_dim_unsupported");
  }
  if (info.dtype != DType::kBFloat16 && info.dtype != DType::kFloat16) {
    return Status(ErrorCode::kInternal, "sm90 forward called with an unsupported dtype",
                  "sm90.dtype_unsupported");
  }
  sm90::FwdParams p;
  if (Status st = sm90::build_fwd_params(pb, info, &p); !st.ok()) return st;

  Status st = sm90::with_compiled_kernel(
      info, "sm90.head_dim_unsupported", [&](auto d, auto dv, auto bf16) {
        return sm90::launch_fwd<decltype(d)::value, decltype(dv)::value, decltype(bf16)::value>(
            p, stream);
      });
  if (!st.ok()) return st;
  if (variant != nullptr) {
    *variant = sm90::fwd_variant_name(*row, info.dtype) + sm90::variant_features(info) +
               (p.persistent ? "+persistent" : "");
  }
  return Status::Ok();
}

}  // namespace flashlane::detail
