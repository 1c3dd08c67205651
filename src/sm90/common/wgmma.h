// wgmma.h: small CuTe helpers of every sm90 kernel: register-layout views of WGMMA
// accumulators, fp32 -> 16-bit fragment conversion, and the WGMMA issue sequence.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_conversion.h>

namespace flashlane::sm90 {

using namespace cute;

/// A WGMMA accumulator fragment is ((2, 2, N/8), MMA_M, MMA_N): (column pair, row +8, column
/// group of 8). This views it as (row, col) so that softmax can walk rows: each thread holds
/// 2 * MMA_M rows; the 4 threads of a quad share a row.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto rowcol_layout(Layout const& acc) {
  static_assert(decltype(rank<0>(acc))::value == 3, "expects a WGMMA accumulator layout");
  auto v = get<0>(acc);
  return make_layout(make_layout(get<1>(v), get<1>(acc)),
                     make_layout(get<0>(v), get<2>(v), get<2>(acc)));
}

template <class Tensor>
CUTE_HOST_DEVICE auto rowcol_view(Tensor&& t) {
  return make_tensor(t.data(), rowcol_layout(t.layout()));
}

/// The accumulator of S (64 x kBlockN per warpgroup) re-read as the register A operand of
/// P V (64 x kBlockN, k-blocks of 16): two adjacent 8-column groups form one k-block, so
/// (2, 2, N/8) splits into ((2, 2, 2), N/16). Thread ownership is identical in both shapes.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_as_operand_a_layout(Layout const& acc) {
  auto v = get<0>(acc);
  auto g = get<2>(v);  // (N/8):(s), one mode
  auto groups = make_layout(make_shape(_2{}, size(g) / _2{}),
                            make_stride(stride(g), stride(g) * _2{}));  // (2, N/16)
  return make_layout(make_layout(get<0>(v), get<1>(v), get<0>(groups)), get<1>(acc),
                     coalesce(make_layout(get<1>(groups), get<2>(acc))));
}

/// Converts a register fragment to `To` (round to nearest), same layout.
template <class To, class Tensor>
__device__ auto convert_fragment(Tensor const& src) {
  using From = typename std::remove_cv_t<std::remove_reference_t<Tensor>>::value_type;
  constexpr int kN = decltype(size(src))::value;
  auto out = make_tensor<To>(src.layout());
  cutlass::NumericArrayConverter<To, From, kN> convert;
  *reinterpret_cast<cutlass::Array<To, kN>*>(out.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, kN> const*>(src.data()));
  return out;
}

/// Issues one warpgroup GEMM C (+)= A B over all k-blocks and commits it as one batch; the
/// caller decides when to wait (warpgroup_wait<N>) so independent work can run meanwhile.
/// kARegisters: A is a register fragment (RS); otherwise A is shared-memory descriptors (SS).
template <bool kZeroInit, bool kARegisters, class TiledMma, class TA, class TB, class TC>
__device__ void warpgroup_gemm(TiledMma& mma, TA const& tA, TB const& tB, TC& tC) {
  if constexpr (kARegisters) warpgroup_fence_operand(const_cast<TA&>(tA));
  warpgroup_fence_operand(tC);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tA); ++k) {
    cute::gemm(mma, tA(_, _, k), tB(_, _, k), tC);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(tC);
  if constexpr (kARegisters) warpgroup_fence_operand(const_cast<TA&>(tA));
}

}  // namespace flashlane::sm90
