// epilogue.h: dK (times softmax_scale) and dV of the CTA's key tile, from the consumers'
// registers straight to global memory in the output dtype. Every row is bounds-checked against
// the sequence's key length; rows in [seqused_k, len_k) hold zeros (no query sees them).
#pragma once

#include <cute/tensor.hpp>

#include "sm90/bwd/kernel_traits.h"
#include "sm90/bwd/params.h"
#include "sm90/bwd/work.h"
#include "sm90/common/wgmma.h"

namespace flashlane::sm90::bwd {

template <class Traits>
struct BwdEpilogue {
  using Element = typename Traits::Element;
  static constexpr int kBlockN = Traits::kBlockN;
  static constexpr int kHeadDim = Traits::kHeadDim;

  template <class TiledMma, int kDim, class Frag>
  __device__ static void store_one(Frag& acc, float scale, void* base, int64_t row_stride,
                                   int64_t head_stride, int64_t batch_stride,
                                   const BwdParams& p, const KeyTileWork& w, int thread_idx) {
    TiledMma mma;
    auto thr = mma.get_thread_slice(thread_idx);
    Tensor tc_rc = rowcol_view(thr.partition_C(make_identity_tensor(
        Shape<Int<kBlockN>, Int<kDim>>{})));
    if (scale != 1.f) {
      CUTE_UNROLL
      for (int i = 0; i < size(acc); ++i) acc(i) *= scale;
    }
    auto out = convert_fragment<Element>(acc);
    Tensor out_rc = rowcol_view(out);
    const int64_t batch_term =
        p.kv_layout == KvLayout::kVarlenPacked ? 0 : int64_t(w.b) * batch_stride;
    Element* o = static_cast<Element*>(base) + batch_term + int64_t(w.h_kv) * head_stride +
                 (w.k_start + w.n0) * row_stride;
    CUTE_UNROLL
    for (int r = 0; r < size<0>(out_rc); ++r) {
      const int row = get<0>(tc_rc(r, 0));
      if (w.n0 + row >= w.len_k) continue;
      Element* orow = o + int64_t(row) * row_stride;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(out_rc); c += 2) {
        cutlass::Array<Element, 2> pair;
        pair[0] = out_rc(r, c);
        pair[1] = out_rc(r, c + 1);
        *reinterpret_cast<cutlass::Array<Element, 2>*>(orow + get<1>(tc_rc(r, c))) = pair;
      }
    }
  }

  template <class FragDK, class FragDV>
  __device__ static void store(const BwdParams& p, const KeyTileWork& w, FragDK& tdKrdK,
                               FragDV& tdVrdV, int thread_idx) {
    store_one<typename Traits::TiledMmaDK, kHeadDim>(tdKrdK, p.softmax_scale, p.dk,
                                                     p.dk_row_stride, p.dk_head_stride,
                                                     p.dk_batch_stride, p, w, thread_idx);
    store_one<typename Traits::TiledMmaDV, Traits::kHeadDimV>(tdVrdV, 1.f, p.dv, p.dv_row_stride,
                                                              p.dv_head_stride, p.dv_batch_stride,
                                                              p, w, thread_idx);
  }
};

}  // namespace flashlane::sm90::bwd
