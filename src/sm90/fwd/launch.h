// launch.h: host side of one instantiation: builds the TMA descriptors over the caller's
// strided tensors, sizes the grid and launches the kernel. Included only by the instantiation
// files, so the CuTe-heavy kernel compiles once per (head dim, dtype).
#pragma once

#include <algorithm>
#include <string>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "sm90/fwd/kernel.h"
#include "sm90/fwd/launch_decl.h"

namespace flashlane::sm90 {

template <int kHeadDim, int kHeadDimV, bool kBf16, int kBlockN, int kStages>
Status launch_fwd(FwdParams p, cudaStream_t stream) {
  using Element = std::conditional_t<kBf16, cutlass::bfloat16_t, cutlass::half_t>;
  using Traits = FwdTraits<kHeadDim, kHeadDimV, kBlockN, kStages, Element>;
  using namespace cute;

  if (p.num_tiles == 0) return Status::Ok();
  // TMA views (row, dim, head, batch). A varlen view has one "batch" of packed rows; a mode of
  // extent 1 still needs a legal (16-byte multiple, nonzero) stride, so it borrows the row's.
  const int batches = p.varlen ? 1 : p.batch;
  auto view = [&](const void* ptr, int rows, int dim, int heads, int64_t row_stride,
                  int64_t head_stride, int64_t batch_stride) {
    if (batches == 1) batch_stride = row_stride;
    if (heads == 1) head_stride = row_stride;
    return make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)),
                       make_layout(make_shape(rows, dim, heads, batches),
                                   make_stride(row_stride, _1{}, head_stride, batch_stride)));
  };
  // With no keys at all every tile is empty and K/V are never loaded, but the kernel still takes
  // descriptors: describe the (non-empty) Q tensor instead of a possibly null, empty K/V.
  if (p.rows_k == 0) {
    p.k = p.v = p.q;
    p.rows_k = p.rows_q;
    p.k_row_stride = p.v_row_stride = p.q_row_stride;
    p.k_head_stride = p.v_head_stride = p.q_head_stride;
    p.k_batch_stride = p.v_batch_stride = p.q_batch_stride;
    p.heads_kv = p.heads_q;  // GQA mapping is unused: no tile loads K/V
  }
  auto mQ = view(p.q, p.rows_q, kHeadDim, p.heads_q, p.q_row_stride, p.q_head_stride,
                 p.q_batch_stride);
  auto mK = view(p.k, p.rows_k, kHeadDim, p.heads_kv, p.k_row_stride, p.k_head_stride,
                 p.k_batch_stride);
  auto mV = view(p.v, p.rows_k, kHeadDimV, p.heads_kv, p.v_row_stride, p.v_head_stride,
                 p.v_batch_stride);

  FwdKernelArgs<Traits> args{
      p,
      {make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{},
                     Shape<Int<Traits::kBlockM>, Int<kHeadDim>>{}, _1{}),
       make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutK{}),
                     Shape<Int<Traits::kBlockN>, Int<kHeadDim>>{}, _1{}),
       make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutV{}),
                     Shape<Int<Traits::kBlockN>, Int<kHeadDimV>>{}, _1{})}};

  int device = 0, num_sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  auto kernel = fwd_kernel<Traits>;
  if (err == cudaSuccess) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               Traits::kSharedBytes);
  }
  if (err != cudaSuccess) {
    return Status(ErrorCode::kCudaError,
                  std::string("sm90 forward setup failed: ") + cudaGetErrorString(err));
  }
  const int grid = p.persistent ? std::min(p.num_tiles, num_sms) : p.num_tiles;
  args.p.persistent = p.persistent;
  kernel<<<grid, Traits::kThreads, Traits::kSharedBytes, stream>>>(args);
  err = cudaGetLastError();
  if (err != cudaSuccess) {
    return Status(ErrorCode::kCudaError,
                  std::string("sm90 forward launch failed: ") + cudaGetErrorString(err));
  }
  return Status::Ok();
}

}  // namespace flashlane::sm90

#define FLASHLANE_SM90_FWD_INSTANTIATE(D, DV, BF16)                                  \
  template flashlane::Status flashlane::sm90::launch_fwd<                            \
      D, DV, BF16, flashlane::sm90::FwdConfig<D, DV>::kBlockN,                       \
      flashlane::sm90::FwdConfig<D, DV>::kStages>(flashlane::sm90::FwdParams, cudaStream_t);
