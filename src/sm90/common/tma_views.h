// tma_views.h: the global-memory views the sm90 kernels build their TMA descriptors over, on
// the host. Every tensor is seen as (row, dim, head, batch) with dim contiguous and 64-bit
// strides: a dense tensor [batch, seqlen, heads, d] as it is, a packed (varlen) tensor
// [total, heads, d] as one batch entry of `total` rows (sequences are found by row offset).
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>

#include "flashlane/problem.h"

namespace flashlane::sm90 {

/// Batch entries of a view: 1 for a packed tensor, `batch` for a dense one.
inline int view_batches(bool packed, int batch) { return packed ? 1 : batch; }

/// The (row, dim, head, batch) view of `ptr`. A mode of extent 1 still needs a legal stride for
/// TMA (a nonzero multiple of 16 bytes), so it borrows the row's.
template <class Element>
auto gmem_view(const void* ptr, int64_t rows, int dim, int heads, int batches, int64_t row_stride,
               int64_t head_stride, int64_t batch_stride) {
  using namespace cute;
  if (batches == 1) batch_stride = row_stride;
  if (heads == 1) head_stride = row_stride;
  return make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)),
                     make_layout(make_shape(int(rows), dim, heads, batches),
                                 make_stride(row_stride, _1{}, head_stride, batch_stride)));
}

/// The global layout type of gmem_view (for the TMA copy types of the kernel traits).
using GmemViewLayout = cute::Layout<cute::Shape<int32_t, int32_t, int32_t, int32_t>,
                                    cute::Stride<int64_t, cute::_1, int64_t, int64_t>>;

}  // namespace flashlane::sm90
