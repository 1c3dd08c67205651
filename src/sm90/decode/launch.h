// launch.h: the host side of one sm90 decode call: the append / rotary kernel when the call
// appends, the split-KV attention kernel, and the combine kernel when the keys are split.
// The workspace (rotated q, split partials) is one stream-ordered allocation
// (cudaMallocAsync / cudaFreeAsync), so the call is CUDA-graph capturable; nothing here reads
// device memory on the host.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashlane/status.h"
#include "sm90/decode/append_rotary.h"
#include "sm90/decode/combine.h"
#include "sm90/decode/kernel.h"
#include "sm90/decode/params.h"
#include "sm90/decode/split_plan.h"

namespace flashlane::sm90::decode {

inline Status decode_launch_error(cudaError_t e, const char* what) {
  return Status(ErrorCode::kCudaError,
                std::string("sm90 decode: ") + what + ": " + cudaGetErrorString(e),
                "sm90.launch_failed");
}

/// Runs the kernels of one call. `p` is complete except the workspace pointers, which are set
/// here: q (when rotary is on), o_partial and lse_partial (when p.num_splits > 1).
template <int kHeadDim, bool kBf16>
Status launch_decode(DecodeParams p, bool paged, cudaStream_t stream) {
  using Element = typename HalfTraits<kBf16>::Element;
  const int64_t q_rows = int64_t(p.batch) * p.seqlen_q * p.heads_q;
  const size_t q_bytes = p.rotary_dim > 0 ? size_t(q_rows) * kHeadDim * sizeof(Element) : 0;
  const size_t partial_floats = p.num_splits > 1 ? size_t(p.num_splits) * q_rows : 0;
  const size_t q_bytes_aligned = (q_bytes + 255) / 256 * 256;
  const size_t bytes = q_bytes_aligned + partial_floats * (kHeadDim + 1) * sizeof(float);
  char* ws = nullptr;
  if (bytes > 0) {
    if (cudaError_t e = cudaMallocAsync(reinterpret_cast<void**>(&ws), bytes, stream); e != cudaSuccess) {
      return decode_launch_error(e, "workspace allocation");
    }
  }
  if (p.rotary_dim > 0) {
    p.q = ws;
    p.q_head_stride = kHeadDim;
    p.q_row_stride = int64_t(p.heads_q) * kHeadDim;
    p.q_batch_stride = int64_t(p.seqlen_q) * p.q_row_stride;
  }
  if (p.num_splits > 1) {
    p.o_partial = reinterpret_cast<float*>(ws + q_bytes_aligned);
    p.lse_partial = p.o_partial + partial_floats * kHeadDim;
  }

  Status st = Status::Ok();
  auto check = [&](const char* what) {
    if (!st.ok()) return;
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) st = decode_launch_error(e, what);
  };
  const int64_t append_items =
      int64_t(p.batch) * p.seqlen_new * p.heads_kv + (p.rotary_dim > 0 ? q_rows : 0);
  if (append_items > 0) {
    decode_append_kernel<Element><<<unsigned((append_items + 3) / 4), 128, 0, stream>>>(p);
    check("append launch");
  }
  if (st.ok()) {
    const int smem = decode_smem_bytes(kHeadDim);
    auto kernel = paged ? decode_kernel<kHeadDim, kBf16, true> : decode_kernel<kHeadDim, kBf16, false>;
    if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        e != cudaSuccess) {
      st = decode_launch_error(e, "shared memory attribute");
    } else {
      const dim3 grid(unsigned(p.m_blocks * p.num_splits), unsigned(p.heads_kv), unsigned(p.batch));
      kernel<<<grid, kDecodeThreads, smem, stream>>>(p);
      check("attention launch");
    }
  }
  if (st.ok() && p.num_splits > 1) {
    // A programmatic dependent launch: the combine CTAs are scheduled while the attention
    // kernel finishes and wait for it with griddepcontrol.wait (graph-capturable).
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(unsigned(q_rows));
    cfg.blockDim = dim3(32 * kCombineWarps);
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaError_t e = cudaLaunchKernelEx(&cfg, decode_combine_kernel<kHeadDim, kBf16>, p);
        e != cudaSuccess) {
      st = decode_launch_error(e, "combine launch");
    }
    check("combine launch");
  }
  if (ws != nullptr) {
    const cudaError_t e = cudaFreeAsync(ws, stream);
    if (st.ok() && e != cudaSuccess) st = decode_launch_error(e, "workspace release");
  }
  return st;
}

}  // namespace flashlane::sm90::decode
