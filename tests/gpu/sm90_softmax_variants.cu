// sm90_softmax_variants.cu: forward instantiations with FlashAttention-4's softmax choices that
// the kernel table's rows do not make (every fraction of emulated exp2 is measured not to pay on
// an H200: docs/sm90_forward.md), so that the gpu tests keep that code checked against float64.
// bf16, head_dim 64 and 128, the table's tile, 4 of 16 exp2 on the FMA units, rescaling
// threshold 8.
#include "sm90/fwd/launch.h"
#include "sm90_softmax_variants.h"

namespace flashlane::test_support {

namespace {
template <int kD>
Status launch_variant(sm90::FwdParams p, cudaStream_t stream) {
  using Config = sm90::FwdConfig<kD, kD>;
  return sm90::launch_fwd<kD, kD, true, Config::kBlockN, Config::kStages, kVariantEmulatedPer16,
                          kVariantRescaleThreshold>(p, stream);
}
}  // namespace

Status launch_fwd_softmax_variant(int head_dim, const sm90::FwdParams& p, cudaStream_t stream) {
  if (head_dim == 64) return launch_variant<64>(p, stream);
  if (head_dim == 128) return launch_variant<128>(p, stream);
  return Status(ErrorCode::kInternal, "no softmax variant for this head_dim", "test.no_variant");
}

}  // namespace flashlane::test_support
