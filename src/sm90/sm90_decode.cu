// sm90_decode.cu: entry point of the sm90 KV-cache (decode) kernels (dispatch/backends.h).
// Translates the validated KvCacheProblem into DecodeParams, chooses the split count
// (decode/split_plan.h), dispatches on (head_dim, dtype, layout) and names the launch.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "dispatch/backends.h"
#include "sm90/common/score_math.h"
#include "sm90/decode/launch.h"
#include "sm90/decode/params.h"
#include "sm90/decode/split_plan.h"
#include "sm90/common/instantiations.h"  // kCompiledHeadDims, dtype_suffix

namespace flashlane::detail {
namespace {

constexpr bool head_dim_compiled(int d) {
  for (int c : sm90::kCompiledHeadDims) {
    if (c == d) return true;
  }
  return false;
}

template <class Fn>
Status with_decode_head_dim(int64_t d, bool bf16, Fn&& fn) {
  auto run = [&](auto hd) -> Status {
    return bf16 ? fn(hd, std::true_type{}) : fn(hd, std::false_type{});
  };
  if constexpr (head_dim_compiled(64)) {
    if (d == 64) return run(std::integral_constant<int, 64>{});
  }
  if constexpr (head_dim_compiled(128)) {
    if (d == 128) return run(std::integral_constant<int, 128>{});
  }
  if constexpr (head_dim_compiled(256)) {
    if (d == 256) return run(std::integral_constant<int, 256>{});
  }
  return Status(ErrorCode::kInternal,
                "sm90 decode called for head_dim " + std::to_string(d) + " not compiled",
                "sm90.decode_head_dim_unsupported");
}

int sm_count() {
  int dev = 0, sms = 132;
  if (cudaGetDevice(&dev) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  }
  return sms;
}

void bshd_strides(const TensorView& t, int64_t* batch, int64_t* row, int64_t* head) {
  *batch = t.stride[0];
  *row = t.stride[1];
  *head = t.stride[2];
}

}  // namespace

bool sm90_decode_supports(int64_t head_dim, int64_t head_dim_v) {
  if (head_dim != head_dim_v) return false;
  return (head_dim == 64 && head_dim_compiled(64)) || (head_dim == 128 && head_dim_compiled(128)) ||
         (head_dim == 256 && head_dim_compiled(256));
}

bool sm90_decode_grid_fits(const ProblemInfo& info) {
  if (info.batch > 65535 || info.heads_kv > 65535) return false;
  if (info.cache_capacity + info.seqlen_new > INT32_MAX) return false;
  const int64_t rows = info.seqlen_q * (info.heads_q / info.heads_kv);
  const int64_t m_blocks = (rows + sm90::kDecodeBlockM - 1) / sm90::kDecodeBlockM;
  return m_blocks * sm90::kMaxDecodeSplits <= INT32_MAX &&
         info.batch * info.seqlen_q * info.heads_q <= INT32_MAX;
}

Status sm90_decode(const KvCacheProblem& pb, const ProblemInfo& info, cudaStream_t stream,
                   std::string* variant) {
  if (info.dtype != DType::kBFloat16 && info.dtype != DType::kFloat16) {
    return Status(ErrorCode::kInternal, "sm90 decode called with an unsupported dtype",
                  "sm90.dtype_unsupported");
  }
  sm90::DecodeParams p;
  const bool paged = info.kv_layout == KvLayout::kPaged;
  p.q = pb.q.data;
  bshd_strides(pb.q, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
  p.q_in = pb.q.data;
  bshd_strides(pb.q, &p.q_in_batch_stride, &p.q_in_row_stride, &p.q_in_head_stride);
  p.k_cache = pb.k_cache.data;
  p.v_cache = pb.v_cache.data;
  bshd_strides(pb.k_cache, &p.k_page_stride, &p.k_row_stride, &p.k_head_stride);
  bshd_strides(pb.v_cache, &p.v_page_stride, &p.v_row_stride, &p.v_head_stride);
  if (pb.cache_seqlens.defined()) p.cache_seqlens = static_cast<const int32_t*>(pb.cache_seqlens.data);
  if (pb.cache_batch_idx.defined()) {
    p.cache_batch_idx = static_cast<const int32_t*>(pb.cache_batch_idx.data);
  }
  if (paged) {
    p.page_table = static_cast<const int32_t*>(pb.page_table.data);
    p.page_table_stride = pb.page_table.stride[0];
    p.page_size = int(info.page_size);
  }
  p.capacity = int(info.cache_capacity);
  p.o = pb.o.data;
  bshd_strides(pb.o, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);
  if (pb.lse.defined()) {
    p.lse = static_cast<float*>(pb.lse.data);
    p.lse_batch_stride = pb.lse.stride[0];
    p.lse_head_stride = pb.lse.stride[1];
    p.lse_row_stride = pb.lse.stride[2];
  }
  p.batch = int(info.batch);
  p.seqlen_q = int(info.seqlen_q);
  p.heads_q = int(info.heads_q);
  p.heads_kv = int(info.heads_kv);
  p.group = int(info.heads_q / info.heads_kv);
  p.head_dim = int(info.head_dim);
  const sm90::ScoreScale scale = sm90::score_scale(info.softmax_scale, info.softcap);
  p.score_to_log2 = scale.score_to_log2;
  p.softcap_prescale = scale.softcap_prescale;
  p.has_softcap = scale.has_softcap;
  if (info.has_sink) p.learnable_sink = static_cast<const float*>(pb.learnable_sink.data);
  p.rule.window_left = info.window_left;
  p.rule.window_right = info.window_right;
  p.rule.bottom_right = true;
  p.m_blocks = int((int64_t(p.seqlen_q) * p.group + sm90::kDecodeBlockM - 1) / sm90::kDecodeBlockM);
  if (info.has_append) {
    p.k_new = pb.k_new.data;
    p.v_new = pb.v_new.data;
    bshd_strides(pb.k_new, &p.kn_batch_stride, &p.kn_row_stride, &p.kn_head_stride);
    bshd_strides(pb.v_new, &p.vn_batch_stride, &p.vn_row_stride, &p.vn_head_stride);
    p.seqlen_new = int(info.seqlen_new);
  }
  if (info.rotary_dim > 0) {
    p.rotary_cos = pb.rotary_cos.data;
    p.rotary_sin = pb.rotary_sin.data;
    p.rotary_dtype = pb.rotary_cos.dtype;
    p.rotary_cos_stride = pb.rotary_cos.stride[0];
    p.rotary_sin_stride = pb.rotary_sin.stride[0];
    p.rotary_dim = int(info.rotary_dim);
    p.rotary_interleaved = pb.rotary_interleaved;
    p.rotary_q_consecutive =
        pb.mask != MaskType::kNoMask || pb.window_left >= 0 || pb.window_right >= 0;
  }
  const int64_t work_items = int64_t(p.m_blocks) * p.heads_kv * p.batch;
  p.num_splits = sm90::decode_num_splits(work_items, info.cache_capacity + info.seqlen_new,
                                         sm_count(), p.head_dim, info.num_splits, paged);

  Status st = with_decode_head_dim(info.head_dim, info.dtype == DType::kBFloat16,
                                   [&](auto hd, auto bf16) {
                                     return sm90::decode::launch_decode<decltype(hd)::value,
                                                                        decltype(bf16)::value>(
                                         p, paged, stream);
                                   });
  if (!st.ok()) return st;
  if (variant != nullptr) {
    std::string v = "sm90_decode_hdim" + std::to_string(info.head_dim) +
                    sm90::dtype_suffix(info.dtype) + "_bn" + std::to_string(sm90::kDecodeBlockN) +
                    "_packgqa" + std::to_string(p.group) + "_splits" + std::to_string(p.num_splits);
    if (paged) v += "+paged" + std::to_string(info.page_size);
    if (info.has_cache_batch_idx) v += "+cache_batch_idx";
    if (info.has_append) v += "+append";
    if (info.rotary_dim > 0) v += info.rotary_interleaved ? "+rotary_interleaved" : "+rotary";
    if (info.mask != MaskType::kNoMask) v += "+causal";
    if (info.window_left >= 0 || (info.mask == MaskType::kNoMask && info.window_right >= 0)) {
      v += "+window";
    }
    if (info.softcap > 0.0) v += "+softcap";
    if (info.has_sink) v += "+sink";
    *variant = v;
  }
  return Status::Ok();
}

}  // namespace flashlane::detail
