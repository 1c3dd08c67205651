// instantiations.h: what this build compiled of the kernel table, and the dispatch from a
// runtime (head_dim, head_dim_v) to the compile-time row. Host code only, no CuTe: included by
// the entry points (sm90_forward.cu, sm90_backward.cu) and the supports checks.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "flashlane/problem.h"
#include "flashlane/status.h"
#include "sm90/common/kernel_table.h"
#include "sm90_compiled.h"  // generated: kCompiledHeadDims (cmake/sm90_kernels.cmake)

namespace flashlane::sm90 {

/// True when this build instantiated the row (FLASHLANE_SM90_HEAD_DIMS keeps rows by head_dim).
constexpr bool row_compiled(const KernelConfig& c) {
  for (int d : kCompiledHeadDims) {
    if (d == c.head_dim) return true;
  }
  return false;
}

/// The row of (head_dim, head_dim_v) if this build compiled it, else nullptr.
constexpr const KernelConfig* compiled_row(int64_t head_dim, int64_t head_dim_v) {
  const size_t i = find_row(head_dim, head_dim_v);
  if (i == kKernelTableSize || !row_compiled(kKernelTable[i])) return nullptr;
  return &kKernelTable[i];
}

namespace detail_dispatch {
template <size_t I, class Fn>
bool try_row(int64_t d, int64_t dv, Fn& fn, Status* out) {
  constexpr KernelConfig c = kKernelTable[I];
  if constexpr (row_compiled(c)) {
    if (d == c.head_dim && dv == c.head_dim_v) {
      *out = fn(std::integral_constant<int, c.head_dim>{},
                std::integral_constant<int, c.head_dim_v>{});
      return true;
    }
  }
  return false;
}
template <class Fn, size_t... I>
bool try_rows(int64_t d, int64_t dv, Fn& fn, Status* out, std::index_sequence<I...>) {
  return (try_row<I>(d, dv, fn, out) || ...);
}
}  // namespace detail_dispatch

/// Calls fn(integral_constant<D>, integral_constant<DV>) for the compiled row of (d, dv) and
/// returns its Status; a pair this build did not compile returns kInternal with `tag` (callers
/// check supports first, so that is a bug). Only compiled rows are referenced, so a build with
/// fewer head dims links.
template <class Fn>
Status with_compiled_row(int64_t d, int64_t dv, const char* tag, Fn&& fn) {
  Status st;
  if (detail_dispatch::try_rows(d, dv, fn, &st, std::make_index_sequence<kKernelTableSize>{})) {
    return st;
  }
  return Status(ErrorCode::kInternal,
                "sm90 has no compiled kernel for head_dim " + std::to_string(d) +
                    " / head_dim_v " + std::to_string(dv),
                tag);
}

/// with_compiled_row with the dtype as well: fn(integral_constant<D>, integral_constant<DV>,
/// bool_constant<kBf16>) for the compiled row of the problem's head dims (bf16 or fp16).
template <class Fn>
Status with_compiled_kernel(const ProblemInfo& info, const char* tag, Fn&& fn) {
  const bool bf16 = info.dtype == DType::kBFloat16;
  return with_compiled_row(info.head_dim, info.head_dim_v, tag, [&](auto d, auto dv) {
    return bf16 ? fn(d, dv, std::true_type{}) : fn(d, dv, std::false_type{});
  });
}

/// "_bf16" / "_fp16", the dtype part of a variant name.
inline const char* dtype_suffix(DType dtype) {
  return dtype == DType::kBFloat16 ? "_bf16" : "_fp16";
}

/// Variant names of the receipts, from the row: the tile and dtype of the launch.
std::string fwd_variant_name(const KernelConfig& c, DType dtype);
std::string bwd_variant_name(const KernelConfig& c, DType dtype);
/// The features of a launch in a variant name: "+causal", "+window", "+softcap", "+varlen",
/// "+gqa", in that order, those that apply.
std::string variant_features(const ProblemInfo& info);

}  // namespace flashlane::sm90
