// test_reference_cuda_kvcache.cpp: reference_cuda's KV-cache path (src/reference/
// reference_cuda_kvcache.cu) through flashlane::forward_kvcache with a strict reference_cuda
// request, against reference_cpu_kvcache on host copies of the same inputs (cases and checks of
// tests/gpu/decode_test_util.h: NaN in every cache position and page the call must not read,
// o poisoned, the cache after the append compared element by element).
//
// Tolerance (per element, against ref64 = reference_cpu_kvcache with float64 outputs):
//   O    |out - ref64| <= 2 ulp(|ref64|) of the output dtype + 1e-5;
//   LSE  |out - ref64| <= 1e-4 * (1 + |ref64|)  (float32 for every dtype, as test_reference_cuda).
// Why: both see bit-identical inputs and the same cache values, so what differs is reference_cuda's
// fp32 arithmetic and its one rounding of O to the dtype. fp32 sums over at most a few thousand
// keys and head dims <= 256 are off by about 1e-6 of the magnitude (sqrt(n) * 2^-24 per sum,
// and far below 1e-4 even in the worst case n * 2^-24 for n = 4096), while an ulp of bf16 (fp16)
// is 2^-8 (2^-11) of it: the stored O is at most half an ulp plus that from ref64, inside 2 ulp;
// the 1e-5 covers values that cancel to near 0. LSE: the score and log-sum errors of fp32 are
// about 1e-6 (1 + |LSE|). What still fails: one key too many or too few among n changes O by
// about |v - O| / n (ulps for every n here) and LSE by 1 / n; a wrong page, row, head, mask bound
// or rotary pair gives unrelated values.
// Rotary: the appended K is rotated in fp32 by reference_cuda and in float64 by reference_cpu,
// so a stored element may differ by one ulp (asserted: at most 1 ulp). When any does, the
// expected outputs are recomputed in float64 over reference_cuda's own cache (a dense forward
// per sequence, q rotated in float64), so the comparison stays one of arithmetic alone.
// Every test skips without a CUDA device.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "flashlane/flashlane.h"
#include "gpu/decode_test_util.h"

namespace fl = flashlane;
using fl::DType;
using fl::MaskType;
using fl::test_support::DecodeReference;
using fl::test_support::DecodeSpec;
using fl::test_support::DecodeTensor;
using fl::test_support::DeviceDecode;
using fl::test_support::HostDecode;
namespace ts = fl::test_support;

namespace {

#define REQUIRE_CUDA()                                                             \
  do {                                                                             \
    const fl::DeviceInfo dev_ = fl::query_device(0);                               \
    if (!dev_.cuda_available) GTEST_SKIP() << "no CUDA device: " << dev_.driver_error; \
  } while (0)

const fl::Request kReferenceCudaStrict{fl::Backend::kReferenceCuda, true};

/// Per-element check of `got` against `want` (see the header comment); prints the worst element.
void expect_close(const char* name, const std::vector<double>& got, const std::vector<double>& want,
                  bool is_lse, DType dtype) {
  ASSERT_EQ(got.size(), want.size()) << name;
  size_t bad = 0, worst = 0;
  double worst_ratio = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const double inf = std::numeric_limits<double>::infinity();
    double ratio;
    if (std::isinf(w) || std::isinf(g)) {
      ratio = g == w ? 0.0 : inf;  // -inf LSE of a row without keys must match exactly
    } else {
      const double tol = is_lse ? 1e-4 * (1.0 + std::fabs(w)) : 2.0 * ts::ulp_of(dtype, w) + 1e-5;
      ratio = std::fabs(g - w) / tol;
      if (std::isnan(ratio)) ratio = inf;  // a NaN output
    }
    if (!(ratio <= 1.0)) {
      ++bad;
      if (!(ratio <= worst_ratio)) {
        worst_ratio = ratio;
        worst = i;
      }
    }
  }
  EXPECT_EQ(bad, 0u) << name << ": " << bad << " of " << want.size()
                     << " elements outside the tolerance; worst at flat index " << worst
                     << ": got " << (bad ? got[worst] : 0.0) << ", want "
                     << (bad ? want[worst] : 0.0);
}

/// The strict reference_cuda request on `stream` (decode_test_util.h, run_kvcache).
ts::DecodeRun run_reference_cuda(DeviceDecode& dev, cudaStream_t stream = nullptr) {
  return ts::run_kvcache(dev, kReferenceCudaStrict, stream);
}

/// O and LSE of a run against the float64 reference (or, where rotary made the stored K differ
/// by an ulp, the float64 attention over the run's own cache).
void check_against_cpu(const HostDecode& host, const DecodeReference& ref, const DecodeTensor& o,
                       const DecodeTensor& lse, const DecodeTensor& k_after,
                       const DecodeTensor& v_after) {
  std::vector<double> want_o = ref.o64, want_lse = ref.lse64;
  if (host.spec.rotary_dim > 0 && k_after.bytes != ref.k_cache.bytes) {
    const fl::Status st = ts::gather_forward(host, k_after, v_after, DType::kFloat64,
                                             fl::detail::ReferenceNumerics::kFloat64, ref.batch,
                                             &want_o, &want_lse);
    ASSERT_TRUE(st.ok()) << st.to_string();
  }
  expect_close("O", ts::head_of(o.values(), want_o.size()), want_o, false, host.spec.dtype);
  if (host.spec.with_lse) {
    expect_close("LSE", ts::head_of(lse.values(), want_lse.size()), want_lse, true, host.spec.dtype);
  }
}

void check_case(const DecodeSpec& spec) {
  SCOPED_TRACE("case: " + spec.describe());
  const HostDecode host(spec);
  DecodeReference ref;
  const fl::Status rs = ts::compute_reference(host, &ref);
  ASSERT_TRUE(rs.ok()) << "reference: " << rs.to_string();
  DeviceDecode dev(host);
  ASSERT_TRUE(dev.ok()) << dev.error();
  const ts::DecodeRun r = run_reference_cuda(dev);
  ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  EXPECT_EQ(r.receipt.actual_backend, "reference_cuda");
  EXPECT_EQ(r.receipt.runtime_mode, fl::kvcache_runtime_mode(dev.problem()));
  EXPECT_EQ(r.receipt.variant, "reference_cuda_f32acc");
  ts::check_cache(host, ref, r.k_cache, r.v_cache);
  check_against_cpu(host, ref, r.o, r.lse, r.k_cache, r.v_cache);
  ts::check_empty_sequences(host, r.o, r.lse);
}

DecodeSpec base(DType dtype, int64_t head_dim, uint64_t seed) {
  DecodeSpec s;
  s.dtype = dtype;
  s.head_dim = head_dim;
  s.seed = seed;
  return s;
}

}  // namespace

// Dense cache, single query, GQA, lengths from 1 to 4096, both 16-bit dtypes, with and without
// LSE; head dims 64 and 256 as well.
TEST(ReferenceCudaKvCache, DenseSingleQuery) {
  REQUIRE_CUDA();
  uint64_t seed = 11;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    DecodeSpec s = base(dt, 128, seed++);
    s.heads_q = 32;
    s.heads_kv = 8;
    s.cache_seqlens = {1, 17, 1000, 4096};
    check_case(s);
    s.with_lse = false;
    check_case(s);
  }
  for (int64_t d : {64, 256}) {
    DecodeSpec s = base(DType::kBFloat16, d, seed++);
    s.heads_q = 8;
    s.heads_kv = 1;
    s.cache_seqlens = {300, 2};
    check_case(s);
  }
}

// Paged caches of page size 7 and 16 (shuffled table, unused pages NaN), and cache_batch_idx.
TEST(ReferenceCudaKvCache, PagedAndCacheBatchIdx) {
  REQUIRE_CUDA();
  uint64_t seed = 21;
  for (int64_t ps : {7, 16}) {
    DecodeSpec s = base(DType::kBFloat16, 128, seed++);
    s.heads_q = 16;
    s.heads_kv = 4;
    s.page_size = ps;
    s.cache_seqlens = {5, 300, 77};
    check_case(s);
  }
  DecodeSpec s = base(DType::kFloat16, 128, seed++);
  s.heads_q = 8;
  s.heads_kv = 2;
  s.batch_cache = 5;
  s.cache_seqlens = {40, 129, 7};
  s.seqlen_new = 2;
  check_case(s);
}

// Append with rotary (interleaved and GPT-NeoX, rotary_dim 24, 64 and the full head dim), dense
// and paged, causal (q rotated at consecutive positions) and not.
TEST(ReferenceCudaKvCache, AppendWithRotary) {
  REQUIRE_CUDA();
  uint64_t seed = 31;
  int i = 0;
  for (bool interleaved : {true, false}) {
    for (int64_t rd : {24, 64, 128}) {
      DecodeSpec s = base(i % 2 ? DType::kFloat16 : DType::kBFloat16, 128, seed++);
      s.heads_q = 8;
      s.heads_kv = 2;
      s.seqlen_new = 1 + 2 * (i % 2);
      s.seqlen_q = s.seqlen_new;
      s.rotary_dim = rd;
      s.rotary_interleaved = interleaved;
      s.rotary_dtype = i % 3 == 0 ? s.dtype : DType::kFloat32;
      s.mask = i % 2 ? MaskType::kCausalBottomRight : MaskType::kNoMask;
      s.page_size = i % 2 ? 16 : 0;
      s.cache_seqlens = {0, 45, 130};
      check_case(s);
      ++i;
    }
  }
}

// Several query rows with the bottom-right causal mask (rows above the diagonal of a short
// sequence see no key), windows and softcap.
TEST(ReferenceCudaKvCache, CausalMultiQueryWindowsSoftcap) {
  REQUIRE_CUDA();
  uint64_t seed = 41;
  for (int64_t sq : {2, 7, 33}) {
    DecodeSpec s = base(DType::kBFloat16, 128, seed++);
    s.heads_q = 16;
    s.heads_kv = 2;
    s.seqlen_q = sq;
    s.mask = MaskType::kCausalBottomRight;
    s.cache_seqlens = {10, 300};
    check_case(s);
  }
  struct Row {
    int64_t sq, left, right;
    double softcap;
  };
  for (const Row& row : {Row{1, 100, 0, 0.0}, Row{3, 37, 5, 0.0}, Row{4, -1, -1, 30.0}}) {
    DecodeSpec s = base(DType::kFloat16, 64, seed++);
    s.heads_q = 8;
    s.heads_kv = 4;
    s.seqlen_q = row.sq;
    s.window_left = row.left;
    s.window_right = row.right;
    s.softcap = row.softcap;
    s.page_size = 16;
    s.cache_seqlens = {500, 64, 20};
    check_case(s);
  }
}

// Sequences with an empty cache among others: O = 0 and LSE = -inf exactly for them.
TEST(ReferenceCudaKvCache, EmptyCacheAmongOthers) {
  REQUIRE_CUDA();
  for (int64_t ps : {0, 16}) {
    DecodeSpec s = base(DType::kBFloat16, 128, 51 + ps);
    s.heads_q = 8;
    s.heads_kv = 2;
    s.seqlen_q = 3;
    s.mask = MaskType::kCausalBottomRight;
    s.page_size = ps;
    s.cache_seqlens = {0, 100, 0, 7};
    check_case(s);
  }
}

// Attention sinks (learnable_sink): dense single query with GQA, paged with append and rotary,
// causal multi-query rows above the diagonal and empty caches (O = 0, LSE = the sink exactly),
// softcap below the sinks (the sink is not capped), both 16-bit dtypes and float32.
TEST(ReferenceCudaKvCache, Sinks) {
  REQUIRE_CUDA();
  const auto sinks = [](int64_t heads_q) {
    std::vector<float> v(static_cast<size_t>(heads_q));
    for (int64_t h = 0; h < heads_q; ++h) v[static_cast<size_t>(h)] = 0.75f * static_cast<float>(h % 7) - 1.5f;
    return v;
  };
  uint64_t seed = 81;
  for (DType dt : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    DecodeSpec s = base(dt, 128, seed++);
    s.heads_q = 16;
    s.heads_kv = 4;
    s.cache_seqlens = {1, 17, 1000, 0};
    s.learnable_sink = sinks(s.heads_q);
    check_case(s);
  }
  {
    DecodeSpec s = base(DType::kBFloat16, 128, seed++);
    s.heads_q = 8;
    s.heads_kv = 2;
    s.page_size = 16;
    s.seqlen_new = 3;
    s.seqlen_q = 3;
    s.rotary_dim = 64;
    s.mask = MaskType::kCausalBottomRight;
    s.cache_seqlens = {0, 45, 130};
    s.learnable_sink = sinks(s.heads_q);
    check_case(s);
  }
  {
    DecodeSpec s = base(DType::kFloat16, 64, seed++);
    s.heads_q = 8;
    s.heads_kv = 1;
    s.seqlen_q = 7;
    s.mask = MaskType::kCausalBottomRight;
    s.window_left = 20;
    s.softcap = 1.0;
    s.cache_seqlens = {3, 300, 0};
    s.learnable_sink = sinks(s.heads_q);
    check_case(s);
  }
}

// Captured into a CUDA graph with check_metadata_values = false (every piece of metadata is read
// on the device), replayed with new cache lengths, page table and contents uploaded between
// replays outside the graph.
TEST(ReferenceCudaKvCache, CudaGraphReplaysWithNewCacheLengths) {
  REQUIRE_CUDA();
  DecodeSpec s = base(DType::kBFloat16, 128, 61);
  s.heads_q = 8;
  s.heads_kv = 2;
  s.page_size = 16;
  s.capacity = 512;
  s.seqlen_new = 1;
  s.rotary_dim = 64;
  s.mask = MaskType::kCausalBottomRight;
  s.cache_seqlens = {100, 5, 300};
  HostDecode host(s);
  DeviceDecode dev(host);
  ASSERT_TRUE(dev.ok()) << dev.error();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const fl::Status st = fl::forward_kvcache(dev.problem(/*check_metadata_values=*/false),
                                            kReferenceCudaStrict, stream);
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  ASSERT_TRUE(st.ok()) << "forward_kvcache under capture: " << st.to_string();
  ASSERT_EQ(end, cudaSuccess) << "cudaStreamEndCapture: " << cudaGetErrorString(end);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  const std::vector<std::vector<int32_t>> lengths = {{100, 5, 300}, {511, 0, 17}, {64, 200, 1}};
  for (size_t rep = 0; rep < lengths.size(); ++rep) {
    host.refill(lengths[rep], 70 + rep);
    SCOPED_TRACE("replay " + std::to_string(rep) + ": " + host.spec.describe());
    DecodeReference ref;
    ASSERT_TRUE(ts::compute_reference(host, &ref).ok());
    dev.upload(host, stream);
    ASSERT_TRUE(dev.ok()) << dev.error();
    dev.poison_outputs(stream);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const DecodeTensor o = dev.download(ts::kSlotO), lse = dev.download(ts::kSlotLse);
    const DecodeTensor k = dev.download(ts::kSlotKCache), v = dev.download(ts::kSlotVCache);
    ts::check_cache(host, ref, k, v);
    check_against_cpu(host, ref, o, lse, k, v);
    ts::check_empty_sequences(host, o, lse);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}
