// Dispatcher tests: selection over the applicability table, strict refusals with their tags,
// receipts (thread-local last_receipt, JSON round trip, FLASHLANE_RECEIPTS file sink under many
// threads). Runs without a GPU: CUDA-tensor problems are described with fake pointers and only
// selected, never launched.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "dispatch/applicability.h"
#include "dispatch/pending_error.h"
#include "flashlane/flashlane.h"

namespace fl = flashlane;

namespace {

/// Host bf16 problem [1, 8, 2, 16] with owned buffers; values are small and finite.
struct HostProblem {
  std::vector<uint16_t> q, k, v, o;
  std::vector<float> lse;
  fl::AttentionProblem p;
  explicit HostProblem(int seqlen = 8, int heads = 2, int d = 16) {
    const size_t n = static_cast<size_t>(seqlen) * heads * d;
    q.assign(n, 0x3f80);  // 1.0 in bf16
    k.assign(n, 0x3f00);  // 0.5
    v.assign(n, 0x3e80);  // 0.25
    o.assign(n, 0xffff);  // poison (NaN)
    lse.assign(static_cast<size_t>(heads) * seqlen, -1.0f);
    auto dev = fl::Device::cpu();
    p.q = fl::TensorView::contiguous(q.data(), fl::DType::kBFloat16, {1, seqlen, heads, d}, dev);
    p.k = fl::TensorView::contiguous(k.data(), fl::DType::kBFloat16, {1, seqlen, heads, d}, dev);
    p.v = fl::TensorView::contiguous(v.data(), fl::DType::kBFloat16, {1, seqlen, heads, d}, dev);
    p.o = fl::TensorView::contiguous(o.data(), fl::DType::kBFloat16, {1, seqlen, heads, d}, dev);
    p.lse = fl::TensorView::contiguous(lse.data(), fl::DType::kFloat32, {1, heads, seqlen}, dev);
  }
};

/// A CUDA-tensor problem with fake (aligned, never dereferenced) pointers, for selection only.
fl::AttentionProblem fake_cuda_problem(int head_dim, fl::DType dtype = fl::DType::kBFloat16) {
  fl::AttentionProblem p;
  auto dev = fl::Device::cuda(0);
  auto* base = reinterpret_cast<void*>(uintptr_t{1} << 40);
  p.q = fl::TensorView::contiguous(base, dtype, {2, 128, 4, head_dim}, dev);
  p.k = fl::TensorView::contiguous(base, dtype, {2, 128, 4, head_dim}, dev);
  p.v = fl::TensorView::contiguous(base, dtype, {2, 128, 4, head_dim}, dev);
  p.o = fl::TensorView::contiguous(base, dtype, {2, 128, 4, head_dim}, dev);
  return p;
}

bool have_cuda() { return fl::query_device(0).cuda_available; }

}  // namespace

TEST(Dispatch, BackendNamesRoundTrip) {
  for (auto b : {fl::Backend::kAuto, fl::Backend::kSm90, fl::Backend::kReferenceCuda,
                 fl::Backend::kReferenceCpu, fl::Backend::kSm100, fl::Backend::kCudnn}) {
    fl::Backend parsed;
    ASSERT_TRUE(fl::parse_backend(fl::backend_name(b), &parsed));
    EXPECT_EQ(parsed, b);
  }
  fl::Backend parsed;
  EXPECT_FALSE(fl::parse_backend("fa3", &parsed));
  EXPECT_STREQ(fl::backend_name(static_cast<fl::Backend>(42)), "unknown");
  // The public enum's values are part of the API.
  EXPECT_EQ(static_cast<int>(fl::Backend::kSm90), 1);
  EXPECT_EQ(static_cast<int>(fl::Backend::kReferenceCuda), 2);
  EXPECT_EQ(static_cast<int>(fl::Backend::kReferenceCpu), 3);
  EXPECT_EQ(static_cast<int>(fl::Backend::kSm100), 4);
  EXPECT_EQ(static_cast<int>(fl::Backend::kCudnn), 5);
}

TEST(Dispatch, UnregisteredBackendValueIsAnArgumentError) {
  HostProblem hp;
  fl::Plan plan;
  const fl::Status st =
      fl::select(hp.p, fl::Direction::kForward, fl::Request{static_cast<fl::Backend>(42), true},
                 &plan);
  EXPECT_EQ(st.code(), fl::ErrorCode::kInvalidArgument) << st.to_string();
}

TEST(Dispatch, EveryRuleTagIsNamespacedByItsBackendAndUnique) {
  std::set<std::string> tags;
  for (const auto& r : fl::detail::applicability_rules()) {
    const std::string prefix = std::string(fl::backend_name(r.backend)) + ".";
    EXPECT_EQ(std::string(r.tag).rfind(prefix, 0), 0u) << r.tag;
    EXPECT_TRUE(tags.insert(r.tag).second) << "duplicate tag " << r.tag;
    EXPECT_GT(std::string(r.description).size(), 5u);
  }
  // Every backend of the priority list has at least one rule.
  for (auto b : fl::backend_priority()) {
    bool found = false;
    for (const auto& r : fl::detail::applicability_rules()) found |= r.backend == b;
    EXPECT_TRUE(found) << fl::backend_name(b);
  }
}

TEST(Dispatch, MatrixMarkdownListsEveryRule) {
  const std::string md = fl::detail::applicability_markdown();
  for (const auto& r : fl::detail::applicability_rules()) {
    EXPECT_NE(md.find(r.tag), std::string::npos) << r.tag;
  }
  EXPECT_EQ(fl::detail::applicability_json()["rules"].size(),
            fl::detail::applicability_rules().size());
}

TEST(Dispatch, AutoOnHostTensorsRunsReferenceCpuAndListsSkipped) {
  HostProblem hp;
  fl::Status st = fl::forward(hp.p, fl::Request{});
  ASSERT_TRUE(st.ok()) << st.to_string();
  const fl::Receipt& r = fl::last_receipt();
  EXPECT_EQ(r.requested_backend, "auto");
  EXPECT_EQ(r.actual_backend, "reference_cpu");
  EXPECT_EQ(r.runtime_mode, "fwd");
  EXPECT_EQ(r.surface, "dense_fwd");  // the catalog's id (dispatch/surfaces.h)
  EXPECT_EQ(r.status, "ok");
  ASSERT_EQ(r.skipped.size(), 2u);
  EXPECT_EQ(r.skipped[0].backend, "sm90");
  EXPECT_EQ(r.skipped[1].backend, "reference_cuda");
  EXPECT_EQ(r.skipped[1].reason, have_cuda() ? "reference_cuda.requires_cuda_tensors"
                                             : "reference_cuda.no_cuda_device");
  EXPECT_EQ(r.fallback_reason, r.skipped[0].reason);
  // The output was written: no poison left.
  for (uint16_t x : hp.o) ASSERT_NE(x, 0xffff);
}

TEST(Dispatch, StrictRefusalNamesTheTagAndWritesNothing) {
  HostProblem hp;
  const auto poisoned = hp.o;
  fl::Status st = fl::forward(hp.p, fl::Request{fl::Backend::kSm90, true});
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), fl::ErrorCode::kBackendInapplicable);
  EXPECT_EQ(st.reason_tag().rfind("sm90.", 0), 0u) << st.reason_tag();
  EXPECT_EQ(hp.o, poisoned);
  const fl::Receipt& r = fl::last_receipt();
  EXPECT_EQ(r.requested_backend, "sm90");
  EXPECT_TRUE(r.actual_backend.empty());
  EXPECT_EQ(r.status, "backend_inapplicable");
  EXPECT_EQ(r.error_reason, st.reason_tag());
}

TEST(Dispatch, StrictReservedBackendsFailClosed) {
  HostProblem hp;
  for (auto b : {fl::Backend::kSm100, fl::Backend::kCudnn}) {
    fl::Status st = fl::forward(hp.p, fl::Request{b, true});
    EXPECT_EQ(st.code(), fl::ErrorCode::kBackendInapplicable);
    EXPECT_EQ(st.reason_tag(), std::string(fl::backend_name(b)) + ".not_implemented");
  }
}

TEST(Dispatch, NonStrictNamedBackendFallsBackVisibly) {
  HostProblem hp;
  ASSERT_TRUE(fl::forward(hp.p, fl::Request{fl::Backend::kReferenceCuda, false}).ok());
  const fl::Receipt& r = fl::last_receipt();
  EXPECT_EQ(r.requested_backend, "reference_cuda");
  EXPECT_EQ(r.actual_backend, "reference_cpu");
  ASSERT_FALSE(r.skipped.empty());
  EXPECT_EQ(r.skipped[0].backend, "reference_cuda");
  EXPECT_EQ(r.fallback_reason, r.skipped[0].reason);
}

TEST(Dispatch, StrictReferenceCpuRunsWithNothingSkipped) {
  HostProblem hp;
  ASSERT_TRUE(fl::forward(hp.p, fl::Request{fl::Backend::kReferenceCpu, true}).ok());
  const fl::Receipt& r = fl::last_receipt();
  EXPECT_EQ(r.actual_backend, "reference_cpu");
  EXPECT_TRUE(r.skipped.empty());
  EXPECT_TRUE(r.fallback_reason.empty());
  EXPECT_TRUE(r.strict);
}

TEST(Dispatch, CudaTensorsOnHostOnlyMachineAreRefusedWithTags) {
  if (have_cuda()) GTEST_SKIP() << "this machine has a CUDA device; covered by the gpu tests";
  auto p = fake_cuda_problem(128);
  fl::Plan plan;
  fl::Status st = fl::select(p, fl::Direction::kForward, fl::Request{}, &plan);
  EXPECT_EQ(st.code(), fl::ErrorCode::kNoApplicableBackend);
  ASSERT_EQ(plan.skipped.size(), 3u);
  EXPECT_EQ(plan.skipped[1].reason, "reference_cuda.no_cuda_device");
  EXPECT_EQ(plan.skipped[2].reason, "reference_cpu.requires_host_tensors");
  st = fl::select(p, fl::Direction::kForward, fl::Request{fl::Backend::kSm90, true}, &plan);
  EXPECT_EQ(st.code(), fl::ErrorCode::kBackendInapplicable);
  EXPECT_TRUE(st.reason_tag() == "sm90.no_cuda_device" || st.reason_tag() == "sm90.not_compiled")
      << st.reason_tag();
}

TEST(Dispatch, ValidationErrorComesBeforeSelectionAndIsRecorded) {
  HostProblem hp;
  hp.p.softcap = -1.0;
  const auto poisoned = hp.o;
  fl::Status st = fl::forward(hp.p, fl::Request{fl::Backend::kReferenceCpu, true});
  EXPECT_EQ(st.code(), fl::ErrorCode::kSoftcapInvalid);
  EXPECT_EQ(hp.o, poisoned);
  EXPECT_EQ(fl::last_receipt().status, "softcap_invalid");
  EXPECT_TRUE(fl::last_receipt().actual_backend.empty());
}

TEST(Receipt, JsonRoundTrip) {
  fl::Receipt r;
  r.requested_backend = "auto";
  r.actual_backend = "reference_cuda";
  r.runtime_mode = "varlen_bwd";
  r.surface = "varlen_bwd";
  r.strict = false;
  r.fallback_reason = "sm90.bwd_not_implemented";
  r.skipped = {{"sm90", "sm90.bwd_not_implemented"}};
  r.variant = "reference_cuda_f32acc";
  r.device_name = "NVIDIA H100 \"80GB\"";
  r.sm = 90;
  r.deterministic = true;
  r.status = "ok";
  fl::Receipt back;
  ASSERT_TRUE(fl::receipt_from_json(fl::receipt_to_json(r), &back));
  EXPECT_EQ(back, r);
  EXPECT_FALSE(fl::receipt_from_json("{\"requested_backend\": 3}", &back));
  EXPECT_FALSE(fl::receipt_from_json("not json", &back));
}

TEST(Receipt, LastReceiptIsThreadLocalAndFileSinkIsSafeUnderThreads) {
  const std::string path = ::testing::TempDir() + "flashlane_receipts_test.jsonl";
  std::remove(path.c_str());
  ASSERT_EQ(setenv("FLASHLANE_RECEIPTS", path.c_str(), 1), 0);
  constexpr int kThreads = 8, kCalls = 25;
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &failures] {
      HostProblem hp(4 + t, 1, 8);
      // Even threads make valid calls, odd threads strict refusals: each thread's last receipt
      // must describe its own call.
      for (int i = 0; i < kCalls; ++i) {
        const bool good = t % 2 == 0;
        fl::Status st = fl::forward(
            hp.p, good ? fl::Request{fl::Backend::kReferenceCpu, true}
                       : fl::Request{fl::Backend::kSm90, true});
        const fl::Receipt& r = fl::last_receipt();
        if (st.ok() != good || (good ? r.actual_backend != "reference_cpu"
                                     : r.requested_backend != "sm90" || !r.actual_backend.empty()))
          ++failures[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  unsetenv("FLASHLANE_RECEIPTS");
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;

  std::ifstream in(path);
  std::string line;
  int lines = 0, ok = 0, refused = 0;
  while (std::getline(in, line)) {
    fl::Receipt r;
    ASSERT_TRUE(fl::receipt_from_json(line, &r)) << "torn or malformed line: " << line;
    ++lines;
    (r.status == "ok" ? ok : refused)++;
  }
  EXPECT_EQ(lines, kThreads * kCalls);
  EXPECT_EQ(ok, kThreads / 2 * kCalls);
  EXPECT_EQ(refused, kThreads / 2 * kCalls);
}

namespace {

/// `md` with the description cell of every build-dependent row (the head dims a build compiled)
/// replaced by "...": such cells differ between the build that regenerated the doc and this one.
std::string without_build_dependent_cells(const std::string& md) {
  std::string out;
  size_t pos = 0;
  while (pos < md.size()) {
    size_t end = md.find('\n', pos);
    if (end == std::string::npos) end = md.size();
    std::string line = md.substr(pos, end - pos);
    for (const auto& r : fl::detail::applicability_rules()) {
      if (!r.build_dependent) continue;
      const std::string cells = "| " + std::string(fl::backend_name(r.backend)) + " | " +
                                fl::detail::rule_kind_name(r.kind) + " | `" + r.tag + "` | ";
      if (line.rfind(cells, 0) == 0) line = cells + "... |";
    }
    out += line;
    if (end < md.size()) out += '\n';
    pos = end + 1;
  }
  return out;
}

}  // namespace

TEST(Dispatch, GeneratedApplicabilityDocMatchesTheTable) {
  // docs/applicability.md is generated by `flashlane matrix > docs/applicability.md`; a rule
  // changed without regenerating it fails here. Rows whose description names what a build
  // compiled (Rule::build_dependent) are compared without that cell.
  std::ifstream in(std::string(FLASHLANE_SOURCE_DIR) + "/docs/applicability.md");
  ASSERT_TRUE(in.good()) << "docs/applicability.md missing";
  std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(without_build_dependent_cells(doc),
            without_build_dependent_cells(fl::detail::applicability_markdown()))
      << "regenerate with: build/tools/flashlane matrix > docs/applicability.md";
}

TEST(Dispatch, ExecutionRowsAreNeverEvaluatedBySelection) {
  // Execution rows have no predicate; every backend's selection rows come before them.
  bool any = false;
  for (const fl::Backend b : fl::registered_backends()) {
    bool seen_execution = false;
    for (const auto& r : fl::detail::applicability_rules()) {
      if (r.backend != b) continue;
      if (r.kind == fl::detail::RuleKind::kExecution) {
        any = true;
        seen_execution = true;
        EXPECT_EQ(r.holds, nullptr) << r.tag;
      } else {
        EXPECT_NE(r.holds, nullptr) << r.tag;
        EXPECT_FALSE(seen_execution) << "selection row after an execution row: " << r.tag;
      }
    }
  }
  EXPECT_TRUE(any);
  const std::string md = fl::detail::applicability_markdown();
  EXPECT_NE(md.find("| sm90 | execution | `sm90.launch_failed` |"), std::string::npos) << md;
  bool json_kind = false;
  const nlohmann::json table = fl::detail::applicability_json();
  for (const auto& row : table["rules"])
    json_kind |= row["tag"] == "sm90.launch_failed" && row["kind"] == "execution";
  EXPECT_TRUE(json_kind);
}

TEST(Dispatch, Sm90ForwardGridRowFollowsTheForwardHeadDimRow) {
  std::vector<std::string> sm90;
  for (const auto& r : fl::detail::applicability_rules())
    if (r.backend == fl::Backend::kSm90) sm90.push_back(r.tag);
  const auto at = [&](const char* tag) {
    return std::find(sm90.begin(), sm90.end(), tag) - sm90.begin();
  };
  ASSERT_LT(at("sm90.grid_too_large"), static_cast<long>(sm90.size()));
  EXPECT_EQ(at("sm90.grid_too_large"), at("sm90.head_dim_unsupported") + 1);
  // The head-dim rows describe the kernel table through sm90_head_dims_text().
  for (const auto& r : fl::detail::applicability_rules()) {
    if (r.tag == "sm90.head_dim_unsupported" || r.tag == "sm90.bwd_head_dim_unsupported") {
      EXPECT_TRUE(r.build_dependent) << r.tag;
    }
  }
}

TEST(CudaErrorPending, CodeAndNameAreStable) {
  EXPECT_EQ(static_cast<int>(fl::ErrorCode::kCudaErrorPending), 301);
  EXPECT_STREQ(fl::error_code_name(fl::ErrorCode::kCudaErrorPending), "cuda_error_pending");
}

TEST(CudaErrorPending, PeekedErrorBecomesTheCallersStatus) {
  EXPECT_TRUE(fl::detail::pending_cuda_error_status(cudaSuccess).ok());
  const fl::Status st = fl::detail::pending_cuda_error_status(cudaErrorInvalidConfiguration);
  EXPECT_EQ(st.code(), fl::ErrorCode::kCudaErrorPending);
  EXPECT_NE(st.message().find("cudaErrorInvalidConfiguration"), std::string::npos) << st.message();
  EXPECT_TRUE(st.reason_tag().empty());
  EXPECT_EQ(fl::detail::pending_cuda_error_status(cudaErrorMemoryAllocation).code(),
            fl::ErrorCode::kCudaErrorPending);
  // A runtime that cannot be used at all is no error of the caller: the rules refuse the CUDA
  // backends with their tags instead.
  for (cudaError_t e : {cudaErrorInsufficientDriver, cudaErrorNoDevice}) {
    EXPECT_TRUE(fl::detail::pending_cuda_error_status(e).ok()) << cudaGetErrorName(e);
  }
}

TEST(CudaErrorPending, HostOnlyMachineStillRefusesWithTheRuleTags) {
  if (have_cuda()) GTEST_SKIP() << "this machine has a CUDA device; covered by the gpu tests";
  // Without a driver every runtime call, cudaPeekAtLastError too, reports it: no pending error.
  const fl::Status st = fl::forward(fake_cuda_problem(128));
  EXPECT_EQ(st.code(), fl::ErrorCode::kNoApplicableBackend) << st.to_string();
  EXPECT_EQ(fl::last_receipt().status, "no_applicable_backend");
}
