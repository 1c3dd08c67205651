// launch.h: host side of one instantiation: builds the TMA descriptors over the caller's
// strided tensors, sizes the grid and launches the kernel. Included only by the instantiation
// files, so the CuTe-heavy kernel compiles once per (head dim, dtype).
#pragma once

#include <algorithm>
#include <string>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "sm90/common/tma_views.h"
#include "sm90/fwd/kernel.h"
#include "sm90/fwd/launch_decl.h"

namespace flashlane::sm90 {

template <int kHeadDim, int kHeadDimV, bool kBf16, int kBlockN, int kStages, int kExp2EmulatedPer16,
          int kRescaleThreshold>
Status launch_fwd(FwdParams p, cudaStream_t stream) {
  using Element = std::conditional_t<kBf16, cutlass::bfloat16_t, cutlass::half_t>;
  using Traits = FwdTraits<kHeadDim, kHeadDimV, kBlockN, kStages, Element, kExp2EmulatedPer16,
                           kRescaleThreshold>;
  using namespace cute;
  static_assert(Traits::kBlockM == kFwdBlockM, "the variant name (kernel_table.h) names kBlockM");

  if (p.num_tiles == 0) return Status::Ok();
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
  // TMA views (common/tma_views.h): q by varlen_q, k/v by the KV layout.
  const int q_batches = view_batches(p.varlen_q, p.batch);
  const int kv_batches = view_batches(p.kv_layout == KvLayout::kVarlenPacked, p.batch);
  auto mQ = gmem_view<Element>(p.q, p.rows_q, kHeadDim, p.heads_q, q_batches, p.q_row_stride,
                               p.q_head_stride, p.q_batch_stride);
  auto mK = gmem_view<Element>(p.k, p.rows_k, kHeadDim, p.heads_kv, kv_batches, p.k_row_stride,
                               p.k_head_stride, p.k_batch_stride);
  auto mV = gmem_view<Element>(p.v, p.rows_k, kHeadDimV, p.heads_kv, kv_batches, p.v_row_stride,
                               p.v_head_stride, p.v_batch_stride);

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

// One instantiation of the kernel table (generated files, cmake/sm90_kernels.cmake).
#define FLASHLANE_SM90_FWD_INSTANTIATE(D, DV, BF16)                                    \
  template flashlane::Status flashlane::sm90::launch_fwd<                              \
      D, DV, BF16, flashlane::sm90::FwdConfig<D, DV>::kBlockN,                         \
      flashlane::sm90::FwdConfig<D, DV>::kStages,                                      \
      flashlane::sm90::FwdConfig<D, DV>::kExp2EmulatedPer16,                           \
      flashlane::sm90::FwdConfig<D, DV>::kRescaleThreshold>(flashlane::sm90::FwdParams, \
                                                            cudaStream_t);
