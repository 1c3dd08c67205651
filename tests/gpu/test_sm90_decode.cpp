// test_sm90_decode.cpp: the sm90 KV-cache (decode) path through the public API,
// flashlane::forward_kvcache with a strict sm90 request, against the CPU references.
//
// Every case (a DecodeSpec row, tests/gpu/decode_test_util.h):
//   * fresh normal(0, 1) inputs rounded to the dtype (the seed is in the case's trace);
//     o poisoned (all bytes 0xff); every cache position at or beyond cache_seqlens[b], every
//     dense row no cache_batch_idx entry names and every page no used page_table entry names
//     hold NaN, so a kernel that reads them fails;
//   * the strict sm90 request must run: on an sm_90 device a refusal is a failure;
//   * FlashAttention's rule per tensor (O, and LSE when requested), over every sequence checked:
//       max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5
//     ref64: reference_cpu_kvcache (append in the cache dtype, float64 attention, float64 O and
//     LSE); ref_lowp: the post-append cache of each sequence gathered into a dense batch-1
//     forward (same bottom-right mask, window, softcap and scale), q rotated and rounded to the
//     dtype, reference_cpu_forward kLowPrecision;
//   * sequences without any key: O == 0 and LSE == -inf exactly;
//   * the cache after the call: appended entries bit-exact with the reference's (rotary: K
//     within 1 ulp), every other element (NaN poison included) unchanged;
//   * the receipt: sm90 ran, runtime_mode of kvcache_runtime_mode(), a variant naming "decode"
//     and "splits<N>".
// Plus: num_splits forced and heuristic, determinism (bitwise), CUDA graph capture with the
// cache lengths changed between replays, and a bandwidth-shaped batch.
// Head dims are the compiled subset of {64, 128, 256} (sm90_compiled.h). Every test skips
// without a CUDA device or on a device that is not sm_90.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flashlane/flashlane.h"
#include "gpu/decode_test_util.h"
#include "sm90_compiled.h"  // generated: kCompiledHeadDims (cmake/sm90_kernels.cmake)
#include "gpu/sm90_device.h"
#include "support/sink_logits.h"

namespace fl = flashlane;
using fl::DType;
using fl::MaskType;
using fl::test_support::compute_reference;
using fl::test_support::DecodeReference;
using fl::test_support::DecodeSpec;
using fl::test_support::DecodeTensor;
using fl::test_support::DeviceDecode;
using fl::test_support::HostDecode;
namespace ts = fl::test_support;

namespace {

const fl::Request kSm90Strict{fl::Backend::kSm90, true};

bool compiled(int64_t head_dim) {
  for (int d : fl::sm90::kCompiledHeadDims) {
    if (d == head_dim) return true;
  }
  return false;
}

/// `want` when this build compiled it, else the first compiled head dim of {64, 128, 256}
/// (0: none).
int64_t head_dim_or_compiled(int64_t want) {
  if (compiled(want)) return want;
  for (int64_t d : {128, 64, 256}) {
    if (compiled(d)) return d;
  }
  return 0;
}

#define REQUIRE_HEAD_DIM(var, want)                                                    \
  const int64_t var = head_dim_or_compiled(want);                                       \
  if (var == 0) GTEST_SKIP() << "this build compiled none of the head dims 64, 128, 256"

uint64_t fresh_seed() {
  static std::random_device rd;
  return (uint64_t(rd()) << 32) ^ rd();
}

DecodeSpec base(DType dtype, int64_t head_dim) {
  DecodeSpec s;
  s.dtype = dtype;
  s.head_dim = head_dim;
  s.seed = fresh_seed();
  return s;
}

/// N of "splits<N>" in a variant string; -1 when absent.
int64_t splits_of(const std::string& variant) {
  const size_t at = variant.find("splits");
  if (at == std::string::npos) return -1;
  size_t i = at + 6, j = i;
  while (j < variant.size() && std::isdigit(static_cast<unsigned char>(variant[j]))) ++j;
  return j > i ? std::stoll(variant.substr(i, j - i)) : -1;
}

/// The strict sm90 request on `stream` (decode_test_util.h, run_kvcache).
ts::DecodeRun run_sm90(DeviceDecode& dev, cudaStream_t stream = nullptr) {
  return ts::run_kvcache(dev, kSm90Strict, stream);
}

/// The receipt of a run that must have executed on sm90.
void check_receipt(const fl::Receipt& r, const DeviceDecode& dev) {
  EXPECT_EQ(r.actual_backend, "sm90");
  EXPECT_EQ(r.requested_backend, "sm90");
  EXPECT_EQ(r.runtime_mode, fl::kvcache_runtime_mode(dev.problem()));
  EXPECT_NE(r.variant.find("decode"), std::string::npos) << "variant: " << r.variant;
  EXPECT_GE(splits_of(r.variant), 1) << "variant names no splits<N>: " << r.variant;
}

/// Everything one case checks (see the header comment).
void check_case(const DecodeSpec& spec) {
  SCOPED_TRACE("case: " + spec.describe());
  ASSERT_TRUE(compiled(spec.head_dim)) << "the case asks for a head dim this build left out";
  const HostDecode host(spec);
  DecodeReference ref;
  const fl::Status rs = compute_reference(host, &ref);
  ASSERT_TRUE(rs.ok()) << "reference: " << rs.to_string();
  DeviceDecode dev(host);
  ASSERT_TRUE(dev.ok()) << dev.error();
  const ts::DecodeRun r = run_sm90(dev);
  ASSERT_TRUE(r.status.ok()) << "a strict sm90 request for a supported decode call must run: "
                             << r.status.to_string();
  check_receipt(r.receipt, dev);
  ts::check_outputs_fa_rule(host, ref, r.o, r.lse);
  ts::check_empty_sequences(host, r.o, r.lse);
  ts::check_cache(host, ref, r.k_cache, r.v_cache);
}

}  // namespace

// Single-token decode over dense caches of very different lengths in one batch.
TEST(Sm90Decode, DenseSingleQueryGqa32x8VaryingLengths) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    DecodeSpec s = base(dt, d);
    s.heads_q = 32;
    s.heads_kv = 8;
    s.cache_seqlens = {1, 17, 1000, 4096};
    check_case(s);
  }
}

// Paged caches of every page size, shuffled page table, unused pages NaN.
TEST(Sm90Decode, PagedEveryPageSize) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  int i = 0;
  for (int64_t ps : {1, 7, 16, 32, 64, 128, 256}) {
    DecodeSpec s = base(i++ % 2 ? DType::kFloat16 : DType::kBFloat16, d);
    s.heads_q = 16;
    s.heads_kv = 4;
    s.page_size = ps;
    s.cache_seqlens = {5, 300, 77, 256};
    check_case(s);
  }
}

// cache_batch_idx: sequences live in a permuted subset of a larger cache, with and without append.
TEST(Sm90Decode, CacheBatchIdxPermutation) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  for (int64_t append : {0, 2}) {
    DecodeSpec s = base(DType::kBFloat16, d);
    s.heads_q = 16;
    s.heads_kv = 2;
    s.cache_seqlens = {40, 129, 7};
    s.batch_cache = 5;
    s.seqlen_new = append;
    check_case(s);
  }
}

// Several query rows (speculative decoding, chunked prefill) with the bottom-right causal mask;
// GQA 64/8 packs groups * seqlen_q rows beyond 16 and 64. The 10-key sequence leaves the first
// rows of seqlen_q 33 with no visible key (O = 0, LSE = -inf).
TEST(Sm90Decode, MultiQueryCausalGqa64x8) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  for (int64_t sq : {2, 4, 7, 33}) {
    DecodeSpec s = base(sq % 2 ? DType::kFloat16 : DType::kBFloat16, d);
    s.heads_q = 64;
    s.heads_kv = 8;
    s.seqlen_q = sq;
    s.mask = MaskType::kCausalBottomRight;
    s.cache_seqlens = {10, 300};
    check_case(s);
  }
}

// Sliding windows (left only with right 0, both sides), softcap, non-causal multi-query.
TEST(Sm90Decode, WindowsSoftcapNonCausalMultiQuery) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  struct Row {
    int64_t sq, left, right;
    MaskType mask;
    double softcap;
  };
  const Row rows[] = {
      {1, 100, 0, MaskType::kNoMask, 0.0},
      {3, 37, 5, MaskType::kNoMask, 0.0},
      {4, -1, -1, MaskType::kNoMask, 30.0},
      {2, 64, -1, MaskType::kCausalBottomRight, 30.0},
  };
  for (const Row& row : rows) {
    DecodeSpec s = base(DType::kBFloat16, d);
    s.heads_q = 32;
    s.heads_kv = 8;
    s.seqlen_q = row.sq;
    s.window_left = row.left;
    s.window_right = row.right;
    s.mask = row.mask;
    s.softcap = row.softcap;
    s.cache_seqlens = {500, 64, 20};
    check_case(s);
  }
}

// MQA (8/1) and MHA (4/4) at every compiled head dim.
TEST(Sm90Decode, MqaAndMhaEveryHeadDim) {
  SKIP_UNLESS_SM90();
  int ran = 0;
  for (int64_t d : {64, 128, 256}) {
    if (!compiled(d)) continue;  // build-limited
    const std::pair<int64_t, int64_t> groups[] = {{8, 1}, {4, 4}};
    for (const auto& [hq, hk] : groups) {
      for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
        DecodeSpec s = base(dt, d);
        s.heads_q = hq;
        s.heads_kv = hk;
        s.seqlen_q = hq == 8 ? 1 : 3;
        s.mask = MaskType::kCausalBottomRight;
        s.cache_seqlens = {33, 260};
        check_case(s);
        ++ran;
      }
    }
  }
  if (ran == 0) GTEST_SKIP() << "this build compiled none of the head dims 64, 128, 256";
}

// The same call with and without the LSE output.
TEST(Sm90Decode, LseRequestedAndNot) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  for (bool lse : {true, false}) {
    for (int64_t ps : {0, 64}) {
      DecodeSpec s = base(DType::kBFloat16, d);
      s.heads_q = 32;
      s.heads_kv = 8;
      s.page_size = ps;
      s.with_lse = lse;
      s.cache_seqlens = {700, 3};
      check_case(s);
    }
  }
}

// Append of k_new / v_new with rotary: interleaved and GPT-NeoX, rotary_dim 64, the full head
// dim and 24 (not a multiple of 16), 1 and 3 new rows, dense and paged; q rotated at
// consecutive positions (causal) or all at cache_seqlens[b] (no mask); cos / sin in float32
// or in the input dtype; one sequence appends into an empty cache.
TEST(Sm90Decode, AppendWithRotary) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  int i = 0;
  for (bool interleaved : {true, false}) {
    for (int64_t rd : {int64_t{64}, d, int64_t{24}}) {
      for (int64_t seqlen_new : {1, 3}) {
        for (int64_t ps : {0, 16}) {
          DecodeSpec s = base(i % 3 == 0 ? DType::kFloat16 : DType::kBFloat16, d);
          s.heads_q = 8;
          s.heads_kv = 2;
          s.seqlen_new = seqlen_new;
          s.seqlen_q = seqlen_new;
          s.rotary_dim = std::min(rd, d);
          s.rotary_interleaved = interleaved;
          s.rotary_dtype = i % 2 ? s.dtype : DType::kFloat32;
          s.mask = i % 2 ? MaskType::kCausalBottomRight : MaskType::kNoMask;
          s.page_size = ps;
          s.cache_seqlens = {0, 45, 130};
          check_case(s);
          ++i;
        }
      }
    }
  }
  // Append without rotary, dense and paged of an odd page size.
  for (int64_t ps : {0, 7}) {
    DecodeSpec s = base(DType::kBFloat16, d);
    s.heads_q = 32;
    s.heads_kv = 8;
    s.seqlen_new = 3;
    s.seqlen_q = 3;
    s.mask = MaskType::kCausalBottomRight;
    s.page_size = ps;
    s.cache_seqlens = {61, 0, 200};
    check_case(s);
  }
}

// Sequences with an empty cache (and no new keys) among others: O = 0, LSE = -inf for them.
TEST(Sm90Decode, EmptyCacheAmongOthers) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  for (int64_t sq : {1, 3}) {
    for (int64_t ps : {0, 16}) {
      DecodeSpec s = base(DType::kBFloat16, d);
      s.heads_q = 32;
      s.heads_kv = 8;
      s.seqlen_q = sq;
      s.mask = sq > 1 ? MaskType::kCausalBottomRight : MaskType::kNoMask;
      s.page_size = ps;
      s.cache_seqlens = {0, 100, 0, 7};
      check_case(s);
    }
  }
}

// Attention sinks (learnable_sink): one logit per query head joins the softmax denominator, in
// the combine (split) or in the attention kernel's epilogue (no split). Head 0's sink dominates
// every score, head 1's has no effect, the others lie around the rows' LSE. Dense GQA 32/8 with
// forced and heuristic splits, paged with append and rotary, causal multi-query rows and empty
// caches (O = 0, LSE = the sink), softcap (the sink is not capped); every head dim.
TEST(Sm90Decode, AttentionSinks) {
  SKIP_UNLESS_SM90();
  for (int64_t d : {64, 128, 256}) {
    if (!compiled(d)) continue;
    for (int64_t n : {1, 3, 0}) {
      DecodeSpec s = base(DType::kBFloat16, d);
      s.heads_q = 32;
      s.heads_kv = 8;
      s.cache_seqlens = {5000, 0, 77};
      s.num_splits = n;
      s.learnable_sink = ts::sink_logits(s.heads_q, s.seed + uint64_t(n));
      check_case(s);
    }
    DecodeSpec s = base(DType::kFloat16, d);
    s.heads_q = 16;
    s.heads_kv = 4;
    s.page_size = 16;
    s.seqlen_new = 3;
    s.seqlen_q = 3;
    s.rotary_dim = 32;
    s.mask = MaskType::kCausalBottomRight;
    s.softcap = 2.0;
    s.cache_seqlens = {0, 45, 1300};
    s.learnable_sink = ts::sink_logits(s.heads_q, s.seed);
    check_case(s);
  }
}

// num_splits: 0 (heuristic), 1 (no split) and forced counts on one long cache: every result
// within the rule, and the receipt names the splits used ("splits1" for num_splits = 1; a forced
// n at most n, fewer only when the cache has fewer key blocks).
TEST(Sm90Decode, NumSplitsForcedAndHeuristic) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  DecodeSpec s = base(DType::kBFloat16, d);
  s.heads_q = 32;
  s.heads_kv = 8;
  s.cache_seqlens = {8192};
  const HostDecode host(s);
  DecodeReference ref;
  ASSERT_TRUE(compute_reference(host, &ref).ok());
  for (int64_t n : {0, 1, 2, 3, 7, 64}) {
    DecodeSpec sn = s;
    sn.num_splits = n;
    SCOPED_TRACE("case: " + sn.describe());
    HostDecode h = host;
    h.spec.num_splits = n;
    DeviceDecode dev(h);
    ASSERT_TRUE(dev.ok()) << dev.error();
    const ts::DecodeRun r = run_sm90(dev);
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    check_receipt(r.receipt, dev);
    const int64_t used = splits_of(r.receipt.variant);
    if (n == 1) {
      EXPECT_EQ(used, 1) << r.receipt.variant;
    } else if (n > 1) {
      EXPECT_LE(used, n) << r.receipt.variant;
      EXPECT_GE(used, 1) << r.receipt.variant;
    }
    ts::check_outputs_fa_rule(h, ref, r.o, r.lse);
    ts::check_cache(h, ref, r.k_cache, r.v_cache);
  }
}

// The same call twice gives bitwise-identical O and LSE (split-KV combine included).
TEST(Sm90Decode, DeterministicAcrossRuns) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  for (int64_t n : {0, 3}) {
    DecodeSpec s = base(DType::kBFloat16, d);
    s.heads_q = 32;
    s.heads_kv = 8;
    s.page_size = 64;
    s.seqlen_q = 2;
    s.mask = MaskType::kCausalBottomRight;
    s.cache_seqlens = {5000, 1234};
    s.num_splits = n;
    SCOPED_TRACE("case: " + s.describe());
    const HostDecode host(s);
    DeviceDecode dev(host);
    ASSERT_TRUE(dev.ok()) << dev.error();
    const ts::DecodeRun a = run_sm90(dev);
    ASSERT_TRUE(a.status.ok()) << a.status.to_string();
    const ts::DecodeRun b = run_sm90(dev);
    ASSERT_TRUE(b.status.ok()) << b.status.to_string();
    EXPECT_TRUE(a.o.bytes == b.o.bytes) << "O differs between two identical calls";
    EXPECT_TRUE(a.lse.bytes == b.lse.bytes) << "LSE differs between two identical calls";
  }
}

// One call (paged, append with rotary, causal) captured into a CUDA graph on a non-default
// stream with check_metadata_values = false, replayed three times; before each replay, outside
// the graph, every input buffer (cache_seqlens, page table, cache, q, k_new, v_new) is
// overwritten with a new case of the same shapes, and each replay is checked against the
// reference for its lengths.
TEST(Sm90Decode, CudaGraphReplaysWithNewCacheLengths) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  DecodeSpec s = base(DType::kBFloat16, d);
  s.heads_q = 16;
  s.heads_kv = 4;
  s.page_size = 64;
  s.capacity = 1152;
  s.seqlen_new = 1;
  s.rotary_dim = 64;
  s.rotary_interleaved = false;
  s.mask = MaskType::kCausalBottomRight;
  s.cache_seqlens = {300, 5, 1000};
  HostDecode host(s);
  DeviceDecode dev(host);
  ASSERT_TRUE(dev.ok()) << dev.error();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);

  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const fl::Status st = fl::forward_kvcache(dev.problem(/*check_metadata_values=*/false),
                                            kSm90Strict, stream);
  const fl::Receipt receipt = fl::last_receipt();
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  ASSERT_TRUE(st.ok()) << "forward_kvcache under capture: " << st.to_string();
  ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end);
  EXPECT_EQ(receipt.actual_backend, "sm90");
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  const std::vector<std::vector<int32_t>> lengths = {{300, 5, 1000}, {17, 1151, 0}, {640, 64, 63}};
  for (size_t rep = 0; rep < lengths.size(); ++rep) {
    host.refill(lengths[rep], fresh_seed());
    SCOPED_TRACE("replay " + std::to_string(rep) + ": " + host.spec.describe());
    DecodeReference ref;
    ASSERT_TRUE(compute_reference(host, &ref).ok());
    dev.upload(host, stream);  // cudaMemcpyAsync on the stream, outside the graph
    ASSERT_TRUE(dev.ok()) << dev.error();
    dev.poison_outputs(stream);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const DecodeTensor o = dev.download(ts::kSlotO), lse = dev.download(ts::kSlotLse);
    ts::check_outputs_fa_rule(host, ref, o, lse);
    ts::check_empty_sequences(host, o, lse);
    ts::check_cache(host, ref, dev.download(ts::kSlotKCache), dev.download(ts::kSlotVCache));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// A bandwidth-shaped batch (64 sequences of 2048 keys, GQA 32/8): the first 8 sequences are
// checked on the CPU (the whole batch runs on the GPU; no append, so the cache must be
// untouched everywhere).
TEST(Sm90Decode, BandwidthShapedBatch64x2048) {
  SKIP_UNLESS_SM90();
  REQUIRE_HEAD_DIM(d, 128);
  DecodeSpec s = base(DType::kBFloat16, d);
  s.heads_q = 32;
  s.heads_kv = 8;
  s.cache_seqlens.assign(64, 2048);
  s.capacity = 2048;
  s.check_sequences = 8;
  check_case(s);
}
