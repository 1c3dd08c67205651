// Tag coverage and the backend registry.
//
// Every reason tag a backend can return must be a row of the applicability table (selection or
// execution), so that `flashlane matrix` and docs/applicability.md name every tag a receipt or a
// Status can carry. The test scans every file under the source tree's src/ for quoted tag
// literals ("<backend>.<tag>", <backend> a registered backend's name) and fails on any that is
// not a row's tag: a new tag in a kernel's error path must come with its row in the backend's
// file under src/dispatch/backends/. The scan reads the files when the test runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "dispatch/applicability.h"
#include "dispatch/backend_registry.h"
#include "flashlane/flashlane.h"
#include "support/host_problem.h"

namespace fl = flashlane;
namespace fs = std::filesystem;

namespace {

/// Where each quoted tag literal of src/ first occurs: tag -> "path:line".
std::map<std::string, std::string> tag_literals_in_src(size_t* files_scanned) {
  std::string names;
  for (const fl::detail::BackendDef* d : fl::detail::backend_registry())
    names += (names.empty() ? "" : "|") + std::string(d->name);
  // "sm90.requires_sm90": a backend name, a dot, a snake_case tag, inside double quotes.
  const std::regex literal("\"((?:" + names + ")\\.[A-Za-z0-9_]+)\"");
  std::map<std::string, std::string> found;
  *files_scanned = 0;
  const fs::path src = fs::path(FLASHLANE_SOURCE_DIR) / "src";
  for (const auto& entry : fs::recursive_directory_iterator(src)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    if (!in) continue;
    ++*files_scanned;
    std::string line;
    int line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.find('"') == std::string::npos) continue;
      for (std::sregex_iterator it(line.begin(), line.end(), literal), end; it != end; ++it) {
        const std::string tag = (*it)[1].str();
        found.emplace(tag, fs::relative(entry.path(), FLASHLANE_SOURCE_DIR).string() + ":" +
                               std::to_string(line_no));
      }
    }
  }
  return found;
}

}  // namespace

TEST(TagCoverage, EveryTagLiteralInSrcIsARowOfTheTable) {
  std::set<std::string> rows;
  for (const auto& r : fl::detail::applicability_rules()) rows.insert(r.tag);
  size_t files = 0;
  const auto literals = tag_literals_in_src(&files);
  // The scan really ran over the tree: the table's own rows are literals of src/.
  ASSERT_GT(files, 20u) << "scanned " << FLASHLANE_SOURCE_DIR << "/src";
  ASSERT_GE(literals.size(), rows.size()) << "fewer tag literals in src/ than rows";
  for (const auto& [tag, where] : literals) {
    EXPECT_TRUE(rows.count(tag)) << where << ": tag \"" << tag
                                 << "\" is no row of the applicability table; add a selection "
                                    "or execution row to its backend's file under "
                                    "src/dispatch/backends/";
  }
}

TEST(TagCoverage, EveryRowIsNamespacedByItsBackend) {
  for (const fl::detail::BackendDef* d : fl::detail::backend_registry()) {
    ASSERT_FALSE(d->rules.empty()) << d->name;
    for (const auto& r : d->rules) {
      EXPECT_EQ(r.backend, d->id) << r.tag;
      EXPECT_EQ(r.tag.rfind(std::string(d->name) + ".", 0), 0u) << r.tag;
      EXPECT_EQ(r.kind == fl::detail::RuleKind::kSelection, r.holds != nullptr) << r.tag;
    }
  }
}

TEST(BackendRegistry, NamesAndIdsAreUniqueAndRoundTrip) {
  std::set<std::string> names;
  std::set<int> ids;
  for (const fl::detail::BackendDef* d : fl::detail::backend_registry()) {
    EXPECT_TRUE(names.insert(d->name).second) << "duplicate name " << d->name;
    EXPECT_TRUE(ids.insert(static_cast<int>(d->id)).second) << "duplicate id " << d->name;
    EXPECT_NE(d->id, fl::Backend::kAuto) << d->name;
    EXPECT_NE(std::string(d->name), "auto");
    EXPECT_STREQ(fl::backend_name(d->id), d->name);
    fl::Backend parsed = fl::Backend::kAuto;
    ASSERT_TRUE(fl::parse_backend(d->name, &parsed)) << d->name;
    EXPECT_EQ(parsed, d->id);
    EXPECT_EQ(fl::detail::find_backend(d->id), d);
    EXPECT_EQ(fl::detail::find_backend(std::string_view(d->name)), d);
  }
  EXPECT_EQ(names.size(), fl::registered_backends().size());
  // Every value of the public enum but kAuto is registered.
  for (auto b : {fl::Backend::kSm90, fl::Backend::kReferenceCuda, fl::Backend::kReferenceCpu,
                 fl::Backend::kSm100, fl::Backend::kCudnn}) {
    EXPECT_NE(fl::detail::find_backend(b), nullptr) << static_cast<int>(b);
  }
}

TEST(BackendRegistry, PriorityIsTheRegistrysAutoOrder) {
  std::vector<const fl::detail::BackendDef*> autos;
  for (const fl::detail::BackendDef* d : fl::detail::backend_registry())
    if (d->priority >= 0) autos.push_back(d);
  std::stable_sort(autos.begin(), autos.end(), [](auto* a, auto* b) { return a->priority < b->priority; });
  std::vector<fl::Backend> expected;
  for (const auto* d : autos) expected.push_back(d->id);
  EXPECT_EQ(fl::backend_priority(), expected);
  EXPECT_EQ(fl::backend_priority(),
            (std::vector<fl::Backend>{fl::Backend::kSm90, fl::Backend::kReferenceCuda,
                                      fl::Backend::kReferenceCpu}));
  // A backend auto can pick runs both directions.
  for (const auto* d : autos) {
    EXPECT_NE(d->forward, nullptr) << d->name;
    EXPECT_NE(d->backward, nullptr) << d->name;
  }
}

TEST(BackendRegistry, TableIsTheConcatenationOfTheRegisteredRules) {
  std::vector<std::string> expected;
  for (const fl::detail::BackendDef* d : fl::detail::backend_registry())
    for (const auto& r : d->rules) expected.push_back(r.tag);
  std::vector<std::string> got;
  for (const auto& r : fl::detail::applicability_rules()) got.push_back(r.tag);
  EXPECT_EQ(got, expected);
}

TEST(BackendRegistry, ABackendWithoutRunFunctionsFailsClosed) {
  // A backend missing a run function must never be selected: on host tensors and on (fake,
  // never dereferenced) CUDA tensors, both directions, a strict request is refused with a tag.
  fl::test_support::HostProblemConfig cfg;
  cfg.dtype = fl::DType::kBFloat16;
  cfg.seqlen_q = cfg.seqlen_k = 16;
  cfg.head_dim = 64;
  const fl::test_support::HostProblem hp(cfg);
  const fl::AttentionProblem on_host = hp.problem();
  fl::AttentionProblem on_cuda = on_host;
  auto* fake = reinterpret_cast<char*>(uintptr_t{1} << 40);
  for (fl::TensorView* t : {&on_cuda.q, &on_cuda.k, &on_cuda.v, &on_cuda.o, &on_cuda.lse,
                            &on_cuda.dout, &on_cuda.dq, &on_cuda.dk, &on_cuda.dv}) {
    t->data = fake;
    t->device = fl::Device::cuda(0);
    fake += 1 << 20;
  }
  int checked = 0;
  for (const fl::detail::BackendDef* d : fl::detail::backend_registry()) {
    for (const fl::Direction dir : {fl::Direction::kForward, fl::Direction::kBackward}) {
      if ((dir == fl::Direction::kForward ? d->forward : d->backward) != nullptr) continue;
      EXPECT_LT(d->priority, 0) << d->name << ": auto could pick it";
      for (const fl::AttentionProblem* p : {&on_host, static_cast<const fl::AttentionProblem*>(&on_cuda)}) {
        fl::Plan plan;
        const fl::Status st = fl::select(*p, dir, fl::Request{d->id, true}, &plan);
        EXPECT_EQ(st.code(), fl::ErrorCode::kBackendInapplicable) << d->name << " " << st.to_string();
        EXPECT_EQ(st.reason_tag().rfind(std::string(d->name) + ".", 0), 0u) << st.reason_tag();
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 0);  // sm100 and cudnn have none today
}
