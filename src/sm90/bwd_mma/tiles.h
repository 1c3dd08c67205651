// tiles.h: shared-memory tiles and warp-level tensor-core GEMMs of the sm90 backward.
//
// Every product of the backward is C[M x N] (+)= A[M x K] * B[K x N] on 16x16x16 tensor-core
// fragments whose operands sit in shared memory; a transposed operand is read through the
// column-major view of the same tile (P^T of P, K^T of K), so no tile is ever transposed in
// memory. The eight warps of a CTA own the output fragments round robin (fragment f belongs to
// warp f % 8); kFragsPerWarp = (M/16)(N/16)/8 of them stay in registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>

namespace flashlane::sm90::bwd {

namespace wmma = nvcuda::wmma;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kFrag = 16;  // fragment edge
// Padding (elements) after each shared row: keeps 16-byte alignment for the fragment loads
// and shifts consecutive rows by 4 banks so fragment loads do not conflict.
constexpr int kPadHalf = 8;
constexpr int kPadFloat = 4;

using RowMajor = wmma::row_major;
using ColMajor = wmma::col_major;

using AccFrag = wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float>;

template <int M, int N>
constexpr int frags_per_warp() {
  static_assert(M % kFrag == 0 && N % kFrag == 0, "tile edges are multiples of 16");
  static_assert((M / kFrag) * (N / kFrag) % kWarps == 0, "fragments split evenly over warps");
  return (M / kFrag) * (N / kFrag) / kWarps;
}

/// Address of the 16x16 block (r, c) (in fragments) of a tile with leading dimension ld.
template <class Layout, class T>
__device__ inline const T* block_at(const T* base, int r, int c, int ld) {
  if constexpr (std::is_same_v<Layout, RowMajor>) {
    return base + (r * kFrag) * ld + c * kFrag;
  } else {
    return base + r * kFrag + (c * kFrag) * ld;
  }
}

/// acc[i] (+)= A * B for the fragments owned by `warp`: output fragment f = warp + i * kWarps
/// at (f / (N/16), f % (N/16)). Layouts name how A (M x K) and B (K x N) are stored.
template <int M, int N, int K, class LayoutA, class LayoutB, class T, int kNum>
__device__ inline void warp_gemm(AccFrag (&acc)[kNum], const T* a, int lda, const T* b,
                                 int ldb, int warp) {
  static_assert(kNum == frags_per_warp<M, N>());
  constexpr int kCols = N / kFrag;
  if constexpr (kWarps % kCols == 0) {
    // Every fragment of this warp lies in column block warp % kCols: one B load per k step.
    const int col = warp % kCols;
#pragma unroll 2
    for (int k = 0; k < K / kFrag; ++k) {
      wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, T, LayoutB> fb;
      wmma::load_matrix_sync(fb, block_at<LayoutB>(b, k, col, ldb), ldb);
#pragma unroll
      for (int i = 0; i < kNum; ++i) {
        wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, T, LayoutA> fa;
        wmma::load_matrix_sync(fa, block_at<LayoutA>(a, (warp + i * kWarps) / kCols, k, lda), lda);
        wmma::mma_sync(acc[i], fa, fb, acc[i]);
      }
    }
  } else {
#pragma unroll 2
    for (int k = 0; k < K / kFrag; ++k) {
#pragma unroll
      for (int i = 0; i < kNum; ++i) {
        const int f = warp + i * kWarps;
        wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, T, LayoutA> fa;
        wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, T, LayoutB> fb;
        wmma::load_matrix_sync(fa, block_at<LayoutA>(a, f / kCols, k, lda), lda);
        wmma::load_matrix_sync(fb, block_at<LayoutB>(b, k, f % kCols, ldb), ldb);
        wmma::mma_sync(acc[i], fa, fb, acc[i]);
      }
    }
  }
}

template <int kNum>
__device__ inline void zero(AccFrag (&acc)[kNum]) {
#pragma unroll
  for (int i = 0; i < kNum; ++i) wmma::fill_fragment(acc[i], 0.f);
}

/// Stores the owned fragments into a float tile (row-major, leading dimension ld).
template <int N, int kNum>
__device__ inline void store_frags(const AccFrag (&acc)[kNum], float* c, int ld, int warp) {
  constexpr int kCols = N / kFrag;
#pragma unroll
  for (int i = 0; i < kNum; ++i) {
    const int f = warp + i * kWarps;
    wmma::store_matrix_sync(c + (f / kCols) * kFrag * ld + (f % kCols) * kFrag, acc[i], ld,
                            wmma::mem_row_major);
  }
}

/// Copies rows [0, rows) x kCols of a global tile (row stride in elements, 16-byte aligned
/// rows) into shared memory with leading dimension kCols + kPadHalf; rows [rows, kRows) are
/// zero, so garbage (NaN) beyond a sequence never enters a product.
template <int kRows, int kCols, class T>
__device__ inline void load_tile(T* smem, const T* gmem, int64_t row_stride, int rows) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kVecsPerRow = kCols / kVec;
  constexpr int kLd = kCols + kPadHalf;
  for (int idx = threadIdx.x; idx < kRows * kVecsPerRow; idx += kThreads) {
    const int r = idx / kVecsPerRow, c = (idx % kVecsPerRow) * kVec;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < rows) val = *reinterpret_cast<const uint4*>(gmem + int64_t(r) * row_stride + c);
    *reinterpret_cast<uint4*>(smem + r * kLd + c) = val;
  }
}

/// Asynchronous copies (cp.async): `valid` false zero-fills the destination without reading
/// (the source address must still be a valid one).
__device__ inline void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(valid ? 16 : 0));
}
__device__ inline void cp_async4(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem),
               "r"(valid ? 4 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

/// load_tile with cp.async: rows [rows, kRows) zero-filled; rows >= 1.
template <int kRows, int kCols, class T>
__device__ inline void load_tile_async(T* smem, const T* gmem, int64_t row_stride, int rows) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kVecsPerRow = kCols / kVec;
  constexpr int kLd = kCols + kPadHalf;
  for (int idx = threadIdx.x; idx < kRows * kVecsPerRow; idx += kThreads) {
    const int r = idx / kVecsPerRow, c = (idx % kVecsPerRow) * kVec;
    const bool valid = r < rows;
    cp_async16(smem + r * kLd + c, gmem + (valid ? int64_t(r) * row_stride + c : 0), valid);
  }
}

template <class T>
__device__ inline float to_float(T x);
template <>
__device__ inline float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ inline float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ inline T to_elem(float x);
template <>
__device__ inline __half to_elem<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ inline __nv_bfloat16 to_elem<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

/// Writes a 16x16 float block (row-major in `scratch`, scaled) to rows [row0, row0 + 16) of a
/// global tile, rows at or beyond `rows` skipped. One warp.
template <class T>
__device__ inline void write_block(T* gmem, int64_t row_stride, int row0, int col0, int rows,
                                   const float* scratch, float scale) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int e = lane; e < kFrag * kFrag; e += 32) {
    const int r = e / kFrag, c = e % kFrag;
    if (row0 + r < rows) {
      gmem[int64_t(row0 + r) * row_stride + col0 + c] = to_elem<T>(scratch[e] * scale);
    }
  }
}

}  // namespace flashlane::sm90::bwd
