// kernel_table.h: THE list of sm90 kernels. One row per (head_dim, head_dim_v); every row is
// instantiated for bf16 and fp16, forward and backward. Everything else derives from this table:
//   - the instantiation files: CMake reads the `row(...)` lines below at configure time
//     (cmake/sm90_kernels.cmake) and writes one translation unit per (row, dtype, direction)
//     into the build folder, keeping only the head dims of FLASHLANE_SM90_HEAD_DIMS;
//   - the compiled subset (sm90_compiled.h, written by the same step) and from it both
//     sm90_*_supports() functions and the dispatch to the instantiations (dispatch.h);
//   - the tile configuration the kernels are compiled with (FwdConfig, BwdConfig);
//   - the variant names of the receipts and the head-dim text of the applicability rows.
// No CuTe here: host code, the CLI and the tests include it.
//
// Keep each row on one line in the form below: the CMake step parses it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashlane::sm90 {

/// How the backward's two consumer warpgroups share a key tile (bwd/kernel_traits*.h).
///   kKeys:    each owns half of the keys; S^T and dP^T are computed transposed so that P^T and
///             dS^T feed dV and dK from registers (head_dim <= 128: dK, dV fit in registers).
///   kHeadDim: each owns half of head_dim for dK and dV; P and dS go through shared memory.
enum class BwdSplit : int { kKeys = 0, kHeadDim = 1 };

/// Forward tile: kBlockM is always 128 (2 consumer warpgroups x 64 rows); block_n and the K/V
/// ring depth are sized to the 227 KB of shared memory and the consumers' registers.
/// The softmax choices of FlashAttention-4 (fwd/softmax.h), chosen per row by measurement:
///   exp2_emulated_per16: of every 16 score columns of a thread, how many take exp2 from the FMA
///                        units (common/exp2_fma.h) instead of MUFU; 0 = none;
///   rescale_threshold:   log2-domain growth of a row's maximum below which O and the row sum
///                        are not rescaled (FlashAttention-4 uses 8); 0 = rescale on every growth.
struct FwdTile {
  int block_n;
  int stages;
  int exp2_emulated_per16 = 0;
  int rescale_threshold = 0;
};
/// Backward tile: block_m query rows per visit, block_n keys per CTA, Q/dO ring depth.
struct BwdTile {
  int block_m;
  int block_n;
  int stages;
  BwdSplit split;
};

struct KernelConfig {
  int head_dim;
  int head_dim_v;
  FwdTile fwd;
  BwdTile bwd;
};

constexpr KernelConfig row(int head_dim, int head_dim_v, FwdTile fwd, BwdTile bwd) {
  return KernelConfig{head_dim, head_dim_v, fwd, bwd};
}

inline constexpr int kFwdBlockM = 128;

// Forward tiles measured on an H200 (docs/sm90_forward.md, runs 3-4): a narrower block_n than
// shared memory allows wins for head_dim >= 192 (the O accumulator leaves few registers for S
// and P), a wider one for head_dim 64 (fewer softmax reductions and barriers per FLOP).
// Backward tiles: docs/sm90_backward.md (registers decide them; head_dim 256 has room for one
// Q/dO stage only).
inline constexpr KernelConfig kKernelTable[] = {
    // head_dim, head_dim_v, forward {block_n, stages}, backward {block_m, block_n, stages, split}
    row(64, 64, FwdTile{192, 3, 0, 0}, BwdTile{128, 128, 2, BwdSplit::kKeys}),
    row(96, 96, FwdTile{128, 3, 0, 0}, BwdTile{64, 128, 2, BwdSplit::kKeys}),
    row(128, 128, FwdTile{128, 2, 0, 0}, BwdTile{64, 128, 2, BwdSplit::kKeys}),
    row(192, 192, FwdTile{96, 2, 0, 0}, BwdTile{64, 64, 2, BwdSplit::kHeadDim}),
    row(192, 128, FwdTile{64, 2, 0, 0}, BwdTile{64, 64, 2, BwdSplit::kHeadDim}),
    row(256, 256, FwdTile{64, 2, 0, 8}, BwdTile{64, 64, 1, BwdSplit::kHeadDim}),
};
inline constexpr size_t kKernelTableSize = sizeof(kKernelTable) / sizeof(kKernelTable[0]);

/// Index of the row of (head_dim, head_dim_v), or kKernelTableSize when there is none.
constexpr size_t find_row(int64_t head_dim, int64_t head_dim_v) {
  for (size_t i = 0; i < kKernelTableSize; ++i) {
    if (kKernelTable[i].head_dim == head_dim && kKernelTable[i].head_dim_v == head_dim_v) return i;
  }
  return kKernelTableSize;
}

/// The row of (D, DV) at compile time; a pair without a row does not compile.
template <int D, int DV>
constexpr KernelConfig config_of() {
  constexpr size_t i = find_row(D, DV);
  static_assert(i < kKernelTableSize, "(head_dim, head_dim_v) is not a row of kKernelTable");
  return kKernelTable[i];
}

}  // namespace flashlane::sm90
