// launch.h: the launch sequence of one sm90 backward (included only by the per-dtype
// instantiation files sm90_backward_{bf16,fp16}.cu). Workspace from cudaMallocAsync on the
// stream (graph-capturable): lse_log2 and delta, plus the fp32 dQ accumulator in atomic mode.
//   atomic mode:        preprocess -> dkdv_kernel<atomic dQ> -> postprocess
//   deterministic mode: preprocess -> dkdv_kernel -> dq_kernel
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashlane/status.h"
#include "sm90/bwd_mma/dkdv_kernel.h"
#include "sm90/bwd_mma/dq_kernel.h"
#include "sm90/bwd_mma/launch_decl.h"
#include "sm90/bwd_mma/pre_post.h"

namespace flashlane::sm90 {

namespace bwd {

inline Status launch_error(cudaError_t err, const char* what) {
  return Status(ErrorCode::kCudaError,
                std::string("sm90 backward: ") + what + ": " + cudaGetErrorString(err),
                "sm90.launch_failed");
}

template <class Kernel>
cudaError_t set_smem(Kernel kernel, size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
}

template <class T, int D, int DV>
Status run(BwdParams p, cudaStream_t stream) {
  constexpr int BN = block_n<D, DV>();
  constexpr size_t kSmem = sizeof(BwdSmem<T, D, DV, kBlockM, BN>);
  const int64_t stat_rows = int64_t(p.heads_q) * p.ws_rows;
  const int64_t stat_floats = (stat_rows + 3) / 4 * 4;  // keeps the accumulator 16-byte aligned
  const int64_t floats = 2 * stat_floats + (p.deterministic ? 0 : stat_rows * D);
  float* ws = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&ws),
                                    size_t(std::max<int64_t>(floats, 4)) * sizeof(float), stream);
  if (err != cudaSuccess) return launch_error(err, "workspace allocation");
  p.lse_log2 = ws;
  p.delta = ws + stat_floats;
  p.dq_accum = p.deterministic ? nullptr : ws + 2 * stat_floats;

  Status st = Status::Ok();
  auto check = [&](const char* what) {
    if (!st.ok()) return;
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) st = launch_error(e, what);
  };
  const dim3 row_grid(unsigned((p.ws_rows + kRowsPerCta - 1) / kRowsPerCta), unsigned(p.heads_q));
  if (p.ws_rows > 0) {
    preprocess_kernel<T><<<row_grid, kThreads, 0, stream>>>(p, D, DV);
    check("preprocess launch");
  }
  if (st.ok() && p.seqlen_k > 0) {
    auto kernel = p.deterministic ? &dkdv_kernel<T, D, DV, false> : &dkdv_kernel<T, D, DV, true>;
    if ((err = set_smem(kernel, kSmem)) != cudaSuccess) {
      st = launch_error(err, "dkdv shared memory attribute");
    } else {
      const dim3 grid(unsigned((p.seqlen_k + BN - 1) / BN), unsigned(p.heads_kv),
                      unsigned(p.batch));
      kernel<<<grid, kThreads, kSmem, stream>>>(p);
      check("dkdv launch");
    }
  }
  if (st.ok() && p.seqlen_q > 0) {
    if (p.deterministic) {
      auto kernel = &dq_kernel<T, D, DV>;
      if ((err = set_smem(kernel, kSmem)) != cudaSuccess) {
        st = launch_error(err, "dq shared memory attribute");
      } else {
        const dim3 grid(unsigned((p.seqlen_q + kBlockM - 1) / kBlockM), unsigned(p.heads_q),
                        unsigned(p.batch));
        kernel<<<grid, kThreads, kSmem, stream>>>(p);
        check("dq launch");
      }
    } else if (p.ws_rows > 0) {
      postprocess_kernel<T><<<row_grid, kThreads, 0, stream>>>(p, D);
      check("postprocess launch");
    }
  }
  err = cudaFreeAsync(ws, stream);
  if (st.ok() && err != cudaSuccess) st = launch_error(err, "workspace release");
  return st;
}

}  // namespace bwd

template <int D, int DV, bool kBf16>
Status launch_bwd_mma(const BwdParams& p, cudaStream_t stream) {
  using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
  return bwd::run<T, D, DV>(p, stream);
}

}  // namespace flashlane::sm90

#define FLASHLANE_SM90_BWD_MMA_INSTANTIATE(D, DV, BF16)                                    \
  template flashlane::Status flashlane::sm90::launch_bwd_mma<D, DV, BF16>(                 \
      const flashlane::sm90::BwdParams&, cudaStream_t);
