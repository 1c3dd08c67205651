// Validation tests: every malformed input of include/flashlane/problem.h gets its specific
// ErrorCode and a message naming the argument; valid bshd, varlen and > 2^31-element problems
// pass with every ProblemInfo field checked; a validation error leaves outputs untouched, also
// through flashlane::forward. Runs without a GPU: data pointers are fake (aligned, never
// dereferenced) except cu_seqlens / seqused_k, which validation reads and which live on the host.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "flashlane/flashlane.h"

namespace fl = flashlane;
using fl::AttentionProblem;
using fl::Device;
using fl::Direction;
using fl::DType;
using fl::ErrorCode;
using fl::MaskType;
using fl::ProblemInfo;
using fl::Status;
using fl::TensorView;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

/// Distinct, 4 KiB-aligned fake addresses; validation must never dereference them.
void* fake_ptr(int slot) {
  return reinterpret_cast<void*>((uintptr_t{1} << 36) + static_cast<uintptr_t>(slot) * 0x1000000);
}
void* offset_ptr(void* p, uintptr_t bytes) {
  return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) + bytes);
}

struct Dims {
  int64_t batch = 2, seqlen_q = 128, seqlen_k = 96, heads_q = 8, heads_kv = 2;
  int64_t head_dim = 64, head_dim_v = 64;
};

/// A valid bshd problem with fake pointers: forward q, k, v, o, lse; backward adds the rest.
AttentionProblem bshd_problem(Direction dir, const Dims& s = {}, DType dt = DType::kBFloat16,
                              Device dev = Device::cpu()) {
  AttentionProblem p;
  p.q = TensorView::contiguous(fake_ptr(0), dt, {s.batch, s.seqlen_q, s.heads_q, s.head_dim}, dev);
  p.k = TensorView::contiguous(fake_ptr(1), dt, {s.batch, s.seqlen_k, s.heads_kv, s.head_dim}, dev);
  p.v = TensorView::contiguous(fake_ptr(2), dt, {s.batch, s.seqlen_k, s.heads_kv, s.head_dim_v},
                               dev);
  p.o = TensorView::contiguous(fake_ptr(3), dt, {s.batch, s.seqlen_q, s.heads_q, s.head_dim_v},
                               dev);
  p.lse = TensorView::contiguous(fake_ptr(4), DType::kFloat32, {s.batch, s.heads_q, s.seqlen_q},
                                 dev);
  if (dir == Direction::kBackward) {
    p.dout = p.o;
    p.dout.data = fake_ptr(5);
    p.dq = p.q;
    p.dq.data = fake_ptr(6);
    p.dk = p.k;
    p.dk.data = fake_ptr(7);
    p.dv = p.v;
    p.dv.data = fake_ptr(8);
  }
  return p;
}

/// A valid varlen problem; owns its host cu_seqlens / seqused_k, so keep it alive while the
/// problem is used. Sequences: q lengths 5, 0, 12; k lengths 7, 2, 11.
struct Varlen {
  std::vector<int32_t> cu_q{0, 5, 5, 17};
  std::vector<int32_t> cu_k{0, 7, 9, 20};
  std::vector<int32_t> used{6, 2, 0};
  int64_t heads_q = 6, heads_kv = 3, head_dim = 128, head_dim_v = 64;

  AttentionProblem make(Direction dir, DType dt = DType::kFloat16, bool with_seqused = false) {
    const Device dev = Device::cpu();
    const int64_t total_q = cu_q.back(), total_k = cu_k.back();
    AttentionProblem p;
    p.q = TensorView::contiguous(fake_ptr(0), dt, {total_q, heads_q, head_dim}, dev);
    p.k = TensorView::contiguous(fake_ptr(1), dt, {total_k, heads_kv, head_dim}, dev);
    p.v = TensorView::contiguous(fake_ptr(2), dt, {total_k, heads_kv, head_dim_v}, dev);
    p.o = TensorView::contiguous(fake_ptr(3), dt, {total_q, heads_q, head_dim_v}, dev);
    p.lse = TensorView::contiguous(fake_ptr(4), DType::kFloat32, {heads_q, total_q}, dev);
    if (dir == Direction::kBackward) {
      p.dout = p.o;
      p.dout.data = fake_ptr(5);
      p.dq = p.q;
      p.dq.data = fake_ptr(6);
      p.dk = p.k;
      p.dk.data = fake_ptr(7);
      p.dv = p.v;
      p.dv.data = fake_ptr(8);
    }
    const int64_t n = static_cast<int64_t>(cu_q.size());
    p.cu_seqlens_q = TensorView::contiguous(cu_q.data(), DType::kInt32, {n}, dev);
    p.cu_seqlens_k =
        TensorView::contiguous(cu_k.data(), DType::kInt32, {static_cast<int64_t>(cu_k.size())}, dev);
    if (with_seqused) {
      p.seqused_k = TensorView::contiguous(used.data(), DType::kInt32,
                                           {static_cast<int64_t>(used.size())}, dev);
    }
    return p;
  }
};

/// Validates and requires `code` with every needle in the message; also requires `info` to be
/// left untouched on failure.
::testing::AssertionResult Fails(const AttentionProblem& p, Direction dir, ErrorCode code,
                                 std::initializer_list<const char*> needles) {
  ProblemInfo info;
  info.batch = -777;
  const Status st = fl::validate(p, dir, &info);
  if (st.code() != code) {
    return ::testing::AssertionFailure()
           << "expected " << fl::error_code_name(code) << ", got " << st.to_string();
  }
  for (const char* needle : needles) {
    if (st.message().find(needle) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "message \"" << st.message() << "\" does not contain \"" << needle << "\"";
    }
  }
  if (info.batch != -777) return ::testing::AssertionFailure() << "info written on failure";
  return ::testing::AssertionSuccess() << st.to_string();
}

::testing::AssertionResult Passes(const AttentionProblem& p, Direction dir,
                                  ProblemInfo* info = nullptr) {
  const Status st = fl::validate(p, dir, info);
  if (!st.ok()) return ::testing::AssertionFailure() << st.to_string();
  return ::testing::AssertionSuccess();
}

constexpr Direction kFwd = Direction::kForward;
constexpr Direction kBwd = Direction::kBackward;

}  // namespace

// ------------------------------------------------------------------------------------------------
// Null pointers / missing tensors (kNullPointer), one parameterized case per required tensor.

struct NullCase {
  const char* name;
  TensorView AttentionProblem::*member;
  Direction dir;
};

class ValidationNullTest : public ::testing::TestWithParam<NullCase> {};

TEST_P(ValidationNullTest, NullDataPointer) {
  const NullCase& c = GetParam();
  AttentionProblem p = bshd_problem(c.dir);
  (p.*c.member).data = nullptr;
  const std::string needle = std::string(c.name) + ": data pointer is null";
  EXPECT_TRUE(Fails(p, c.dir, ErrorCode::kNullPointer, {needle.c_str()}));
}

TEST_P(ValidationNullTest, NotGiven) {
  const NullCase& c = GetParam();
  AttentionProblem p = bshd_problem(c.dir);
  p.*c.member = TensorView{};
  const std::string needle = std::string(c.name) + ": not given";
  EXPECT_TRUE(Fails(p, c.dir, ErrorCode::kNullPointer, {needle.c_str(), "required"}));
}

INSTANTIATE_TEST_SUITE_P(
    Validation, ValidationNullTest,
    ::testing::Values(NullCase{"q", &AttentionProblem::q, kFwd},
                      NullCase{"k", &AttentionProblem::k, kFwd},
                      NullCase{"v", &AttentionProblem::v, kFwd},
                      NullCase{"o", &AttentionProblem::o, kFwd},
                      NullCase{"q", &AttentionProblem::q, kBwd},
                      NullCase{"k", &AttentionProblem::k, kBwd},
                      NullCase{"v", &AttentionProblem::v, kBwd},
                      NullCase{"o", &AttentionProblem::o, kBwd},
                      NullCase{"lse", &AttentionProblem::lse, kBwd},
                      NullCase{"dout", &AttentionProblem::dout, kBwd},
                      NullCase{"dq", &AttentionProblem::dq, kBwd},
                      NullCase{"dk", &AttentionProblem::dk, kBwd},
                      NullCase{"dv", &AttentionProblem::dv, kBwd}),
    [](const ::testing::TestParamInfo<NullCase>& param_info) {
      return std::string(param_info.param.dir == kFwd ? "forward_" : "backward_") +
             param_info.param.name;
    });

TEST(ValidationTest, ForwardLseIsOptional) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse = TensorView{};
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kFwd, &info));
  EXPECT_FALSE(info.has_lse);
}

TEST(ValidationTest, ForwardGivenLseWithNullPointer) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse.data = nullptr;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kNullPointer, {"lse: data pointer is null"}));
}

TEST(ValidationTest, ForwardIgnoresGradientTensors) {
  AttentionProblem p = bshd_problem(kFwd);
  p.dq = TensorView::contiguous(nullptr, DType::kInt32, {1}, Device::cuda(3));
  EXPECT_TRUE(Passes(p, kFwd));
}

TEST(ValidationTest, VarlenCuSeqlensKMissing) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.cu_seqlens_k = TensorView{};
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kNullPointer, {"cu_seqlens_k: not given"}));
}

TEST(ValidationTest, VarlenCuSeqlensNullPointer) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.cu_seqlens_q.data = nullptr;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kNullPointer, {"cu_seqlens_q: data pointer is null"}));
}

TEST(ValidationTest, SequsedKNullPointer) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd, DType::kFloat16, true);
  p.seqused_k.data = nullptr;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kNullPointer, {"seqused_k: data pointer is null"}));
}

TEST(ValidationTest, CuSeqlensKWithoutCuSeqlensQ) {
  Varlen vl;
  AttentionProblem p = bshd_problem(kFwd);
  p.cu_seqlens_k = vl.make(kFwd).cu_seqlens_k;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kInvalidArgument, {"cu_seqlens_k", "cu_seqlens_q"}));
}

// ------------------------------------------------------------------------------------------------
// Dtypes.

TEST(ValidationTest, UnsupportedDTypeQ) {
  AttentionProblem p = bshd_problem(kFwd);
  p.q.dtype = DType::kInt32;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kUnsupportedDType, {"q.dtype = int32"}));
}

TEST(ValidationTest, UnsupportedDTypeV) {
  AttentionProblem p = bshd_problem(kFwd);
  p.v.dtype = DType::kInt32;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kUnsupportedDType, {"v.dtype = int32"}));
}

TEST(ValidationTest, UnsupportedDTypeDv) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dv.dtype = DType::kInt32;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kUnsupportedDType, {"dv.dtype = int32"}));
}

TEST(ValidationTest, UnsupportedDTypeOutOfEnum) {
  AttentionProblem p = bshd_problem(kFwd);
  p.q.dtype = static_cast<DType>(42);
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kUnsupportedDType, {"q.dtype = unknown(42)"}));
}

TEST(ValidationTest, DTypeMismatchK) {
  AttentionProblem p = bshd_problem(kFwd);
  p.k.dtype = DType::kFloat32;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kDTypeMismatch,
                    {"k.dtype = float32 does not match q.dtype = bfloat16"}));
}

TEST(ValidationTest, DTypeMismatchO) {
  AttentionProblem p = bshd_problem(kFwd);
  p.o.dtype = DType::kFloat16;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kDTypeMismatch,
                    {"o.dtype = float16 does not match q.dtype = bfloat16"}));
}

TEST(ValidationTest, DTypeMismatchDq) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dq.dtype = DType::kFloat32;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kDTypeMismatch, {"dq.dtype = float32", "bfloat16"}));
}

TEST(ValidationTest, LseNotFloat32) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse.dtype = DType::kBFloat16;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kUnsupportedDType, {"lse.dtype = bfloat16", "float32"}));
}

TEST(ValidationTest, CuSeqlensNotInt32) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.cu_seqlens_q.dtype = DType::kFloat32;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kCuSeqlensInvalid, {"cu_seqlens_q.dtype = float32"}));
  p = vl.make(kFwd);
  p.cu_seqlens_k.dtype = DType::kFloat64;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kCuSeqlensInvalid, {"cu_seqlens_k.dtype = float64"}));
}

TEST(ValidationTest, SequsedKNotInt32) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd, DType::kFloat16, true);
  p.seqused_k.dtype = DType::kFloat32;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kSequsedInvalid, {"seqused_k.dtype = float32"}));
}

TEST(ValidationTest, AllFloatingDTypesAccepted) {
  for (DType dt : {DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kFloat64}) {
    SCOPED_TRACE(fl::dtype_name(dt));
    ProblemInfo info;
    ASSERT_TRUE(Passes(bshd_problem(kBwd, {}, dt), kBwd, &info));
    EXPECT_EQ(info.dtype, dt);
  }
}

// ------------------------------------------------------------------------------------------------
// Ranks.

TEST(ValidationTest, RankMismatchBshdQ) {
  AttentionProblem p = bshd_problem(kFwd);
  p.q = TensorView::contiguous(fake_ptr(0), DType::kBFloat16, {256, 8, 64}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kRankMismatch, {"q.rank = 3", "expected 4"}));
}

TEST(ValidationTest, RankMismatchBshdLse) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse = TensorView::contiguous(fake_ptr(4), DType::kFloat32, {8, 256}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kRankMismatch, {"lse.rank = 2", "expected 3"}));
}

TEST(ValidationTest, RankMismatchBshdDk) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dk.rank = 2;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kRankMismatch, {"dk.rank = 2"}));
}

TEST(ValidationTest, RankMismatchVarlenK) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.k = TensorView::contiguous(fake_ptr(1), DType::kFloat16, {1, 20, 3, 128}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kRankMismatch, {"k.rank = 4", "expected 3", "varlen"}));
}

TEST(ValidationTest, RankMismatchVarlenLse) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.lse = TensorView::contiguous(fake_ptr(4), DType::kFloat32, {1, 6, 17}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kRankMismatch, {"lse.rank = 3", "expected 2"}));
}

TEST(ValidationTest, RankMismatchCuSeqlens) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.cu_seqlens_k = TensorView::contiguous(vl.cu_k.data(), DType::kInt32, {2, 2}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kRankMismatch, {"cu_seqlens_k.rank = 2"}));
}

TEST(ValidationTest, RankOutOfRange) {
  AttentionProblem p = bshd_problem(kFwd);
  p.v.rank = 9;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kRankMismatch, {"v.rank = 9"}));
}

TEST(ValidationTest, SequsedKRankNotOne) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.seqused_k = TensorView::contiguous(vl.used.data(), DType::kInt32, {3, 1}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kSequsedInvalid, {"seqused_k.rank = 2"}));
}

// ------------------------------------------------------------------------------------------------
// Shapes (kShapeMismatch): each relation between the tensors.

TEST(ValidationTest, ShapeNegativeDim) {
  AttentionProblem p = bshd_problem(kFwd);
  p.k.shape[1] = -96;
  p.v.shape[1] = -96;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"k.shape[1] = -96 is negative"}));
}

TEST(ValidationTest, ShapeKBatch) {
  AttentionProblem p = bshd_problem(kFwd);
  p.k.shape[0] = 3;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"k.shape[0] = 3 does not match q.shape[0] = 2 (batch)"}));
}

TEST(ValidationTest, ShapeKHeadDim) {
  AttentionProblem p = bshd_problem(kFwd);
  p.k.shape[3] = 128;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"k.shape[3] = 128 does not match q.shape[3] = 64 (head_dim)"}));
}

TEST(ValidationTest, ShapeVBatch) {
  AttentionProblem p = bshd_problem(kFwd);
  p.v.shape[0] = 1;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"v.shape[0] = 1", "k.shape[0] = 2"}));
}

TEST(ValidationTest, ShapeVSeqlenK) {
  AttentionProblem p = bshd_problem(kFwd);
  p.v.shape[1] = 97;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"v.shape[1] = 97 does not match k.shape[1] = 96 (seqlen_k)"}));
}

TEST(ValidationTest, ShapeVHeadsKv) {
  AttentionProblem p = bshd_problem(kFwd);
  p.v.shape[2] = 4;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"v.shape[2] = 4", "(heads_kv)"}));
}

TEST(ValidationTest, ShapeOBatch) {
  AttentionProblem p = bshd_problem(kFwd);
  p.o.shape[0] = 4;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"o.shape[0] = 4", "q.shape[0] = 2"}));
}

TEST(ValidationTest, ShapeOSeqlenQ) {
  AttentionProblem p = bshd_problem(kFwd);
  p.o.shape[1] = 96;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"o.shape[1] = 96", "(seqlen_q)"}));
}

TEST(ValidationTest, ShapeOHeadsQ) {
  AttentionProblem p = bshd_problem(kFwd);
  p.o.shape[2] = 2;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"o.shape[2] = 2", "(heads_q)"}));
}

TEST(ValidationTest, ShapeOHeadDimV) {
  Dims d;
  d.head_dim_v = 128;
  AttentionProblem p = bshd_problem(kFwd, d);
  p.o.shape[3] = 64;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"o.shape[3] = 64 does not match v.shape[3] = 128 (head_dim_v)"}));
}

TEST(ValidationTest, ShapeLseBatch) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse.shape[0] = 1;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"lse.shape[0] = 1", "(batch)"}));
}

TEST(ValidationTest, ShapeLseHeads) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse.shape[1] = 2;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"lse.shape[1] = 2 does not match q.shape[2] = 8 (heads_q)"}));
}

TEST(ValidationTest, ShapeLseSeqlenQ) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse.shape[2] = 96;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"lse.shape[2] = 96 does not match q.shape[1] = 128 (seqlen_q)"}));
}

TEST(ValidationTest, ShapeLseTransposedBshd) {
  // [batch, seqlen_q, heads_q] (a common mistake) instead of [batch, heads_q, seqlen_q].
  AttentionProblem p = bshd_problem(kFwd);
  p.lse = TensorView::contiguous(fake_ptr(4), DType::kFloat32, {2, 128, 8}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"lse.shape[1] = 128"}));
}

TEST(ValidationTest, ShapeDoutLikeO) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dout.shape[1] = 64;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kShapeMismatch,
                    {"dout.shape[1] = 64 does not match o.shape[1] = 128"}));
}

TEST(ValidationTest, ShapeDqLikeQ) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dq.shape[3] = 128;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kShapeMismatch, {"dq.shape[3] = 128", "q.shape[3] = 64"}));
}

TEST(ValidationTest, ShapeDkLikeK) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dk.shape[2] = 8;  // a common mistake: dk with heads_q heads under GQA
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kShapeMismatch, {"dk.shape[2] = 8", "k.shape[2] = 2"}));
}

TEST(ValidationTest, ShapeDvLikeV) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dv.shape[0] = 1;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kShapeMismatch, {"dv.shape[0] = 1", "v.shape[0] = 2"}));
}

TEST(ValidationTest, ShapeVarlenVTotalK) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.v.shape[0] = 19;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"v.shape[0] = 19 does not match k.shape[0] = 20 (total_k)"}));
}

TEST(ValidationTest, ShapeVarlenOTotalQ) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.o.shape[0] = 16;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"o.shape[0] = 16", "(total_q)"}));
}

TEST(ValidationTest, ShapeVarlenLse) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.lse = TensorView::contiguous(fake_ptr(4), DType::kFloat32, {17, 6}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"lse.shape[0] = 17 does not match q.shape[1] = 6 (heads_q)"}));
}

TEST(ValidationTest, ShapeCuSeqlensLengthsDiffer) {
  Varlen vl;
  vl.cu_k = {0, 7, 20};
  AttentionProblem p = vl.make(kFwd);
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch,
                    {"cu_seqlens_k.shape[0] = 3 does not match cu_seqlens_q.shape[0] = 4"}));
}

TEST(ValidationTest, ShapeCuSeqlensEmpty) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.cu_seqlens_q.shape[0] = 0;
  p.cu_seqlens_k.shape[0] = 0;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"cu_seqlens_q.shape[0] = 0"}));
}

TEST(ValidationTest, SequsedKLengthNotBatch) {
  AttentionProblem p = bshd_problem(kFwd);
  std::vector<int32_t> used{1, 2, 3};
  p.seqused_k = TensorView::contiguous(used.data(), DType::kInt32, {3}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kSequsedInvalid,
                    {"seqused_k.shape[0] = 3 does not match batch = 2"}));
}

// ------------------------------------------------------------------------------------------------
// Heads and head dims.

TEST(ValidationTest, HeadsNotDivisible) {
  Dims d;
  d.heads_kv = 3;
  EXPECT_TRUE(Fails(bshd_problem(kFwd, d), kFwd, ErrorCode::kHeadsNotDivisible,
                    {"heads_q = 8", "heads_kv = 3"}));
}

TEST(ValidationTest, HeadsKvZero) {
  Dims d;
  d.heads_kv = 0;
  EXPECT_TRUE(
      Fails(bshd_problem(kFwd, d), kFwd, ErrorCode::kHeadsNotDivisible, {"heads_kv = 0"}));
}

TEST(ValidationTest, HeadsGqaAndMqaAccepted) {
  for (int64_t hkv : {1, 2, 4, 8}) {
    Dims d;
    d.heads_kv = hkv;
    ProblemInfo info;
    ASSERT_TRUE(Passes(bshd_problem(kBwd, d), kBwd, &info));
    EXPECT_EQ(info.heads_kv, hkv);
  }
}

TEST(ValidationTest, HeadDimZero) {
  Dims d;
  d.head_dim = 0;
  EXPECT_TRUE(Fails(bshd_problem(kFwd, d), kFwd, ErrorCode::kHeadDimInvalid,
                    {"head_dim = 0 (q.shape[3])", "multiple of 8 in [8, 256]"}));
}

TEST(ValidationTest, HeadDimAbove256) {
  Dims d;
  d.head_dim = 264;
  EXPECT_TRUE(Fails(bshd_problem(kFwd, d), kFwd, ErrorCode::kHeadDimInvalid,
                    {"head_dim = 264", "multiple of 8 in [8, 256]"}));
}

TEST(ValidationTest, HeadDimNotMultipleOf8) {
  Dims d;
  d.head_dim = 60;
  EXPECT_TRUE(Fails(bshd_problem(kFwd, d), kFwd, ErrorCode::kHeadDimInvalid, {"head_dim = 60"}));
}

TEST(ValidationTest, HeadDim72IsValid) {
  // 72 is a multiple of 8 in [8, 256]: valid by problem.h's rule. Whether a fast kernel exists for
  // it is the dispatcher's question (sm90.head_dim_unsupported), not validation's.
  Dims d;
  d.head_dim = 72;
  d.head_dim_v = 72;
  ProblemInfo info;
  ASSERT_TRUE(Passes(bshd_problem(kFwd, d), kFwd, &info));
  EXPECT_EQ(info.head_dim, 72);
  EXPECT_DOUBLE_EQ(info.softmax_scale, 1.0 / std::sqrt(72.0));
}

TEST(ValidationTest, HeadDimBoundsAccepted) {
  for (int64_t hd : {8, 256}) {
    Dims d;
    d.head_dim = hd;
    d.head_dim_v = hd;
    EXPECT_TRUE(Passes(bshd_problem(kFwd, d), kFwd)) << hd;
  }
}

TEST(ValidationTest, HeadDimVZero) {
  Dims d;
  d.head_dim_v = 0;
  EXPECT_TRUE(Fails(bshd_problem(kFwd, d), kFwd, ErrorCode::kHeadDimInvalid,
                    {"head_dim_v = 0 (v.shape[3])"}));
}

TEST(ValidationTest, HeadDimVAbove256) {
  Dims d;
  d.head_dim_v = 512;
  EXPECT_TRUE(Fails(bshd_problem(kFwd, d), kFwd, ErrorCode::kHeadDimInvalid, {"head_dim_v = 512"}));
}

TEST(ValidationTest, HeadDimVNotMultipleOf8) {
  Varlen vl;
  vl.head_dim_v = 20;
  EXPECT_TRUE(Fails(vl.make(kFwd), kFwd, ErrorCode::kHeadDimInvalid,
                    {"head_dim_v = 20 (v.shape[2])"}));
}

// ------------------------------------------------------------------------------------------------
// Strides and alignment.

TEST(ValidationTest, LastDimNotContiguousQ) {
  AttentionProblem p = bshd_problem(kFwd);
  p.q.stride[3] = 2;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kNotContiguous, {"q.stride[3] = 2"}));
}

TEST(ValidationTest, LastDimNotContiguousDk) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dk = TensorView::strided(fake_ptr(7), DType::kBFloat16, {2, 96, 2, 64},
                             {96 * 2 * 64, 1, 96 * 64 * 2, 96}, Device::cpu());
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kNotContiguous, {"dk.stride[3] = 96"}));
}

TEST(ValidationTest, LastDimNotContiguousLse) {
  AttentionProblem p = bshd_problem(kFwd);
  p.lse.stride[2] = 8;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kNotContiguous, {"lse.stride[2] = 8"}));
}

TEST(ValidationTest, CuSeqlensNotContiguous) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.cu_seqlens_q.stride[0] = 2;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kNotContiguous, {"cu_seqlens_q.stride[0] = 2"}));
}

TEST(ValidationTest, NonLastStridesAreFree) {
  // q as a slice of a packed qkv tensor [b, s, 3, h, d]: strides (s*3*h*d, 3*h*d, d, 1).
  AttentionProblem p = bshd_problem(kFwd);
  p.q = TensorView::strided(fake_ptr(0), DType::kBFloat16, {2, 128, 8, 64},
                            {128 * 3 * 8 * 64, 3 * 8 * 64, 64, 1}, Device::cpu());
  EXPECT_TRUE(Passes(p, kFwd));
}

TEST(ValidationTest, MisalignedPointerCuda) {
  AttentionProblem p = bshd_problem(kFwd, {}, DType::kBFloat16, Device::cuda(0));
  p.v.data = offset_ptr(p.v.data, 8);
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kMisaligned, {"v: data pointer", "16-byte aligned"}));
}

TEST(ValidationTest, MisalignedPointerCudaGradient) {
  AttentionProblem p = bshd_problem(kBwd, {}, DType::kFloat16, Device::cuda(0));
  p.dq.data = offset_ptr(p.dq.data, 2);
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kMisaligned, {"dq: data pointer"}));
}

TEST(ValidationTest, MisalignedStrideCuda) {
  // Head stride of 68 bf16 elements = 136 bytes: not a multiple of 16.
  AttentionProblem p = bshd_problem(kFwd, {}, DType::kBFloat16, Device::cuda(0));
  p.k = TensorView::strided(fake_ptr(1), DType::kBFloat16, {2, 96, 2, 64},
                            {96 * 2 * 68, 2 * 68, 68, 1}, Device::cuda(0));
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kMisaligned,
                    {"k.stride[2] = 68 elements = 136 bytes", "cuda:0"}));
}

TEST(ValidationTest, MisalignedStrideCudaExactMessage) {
  AttentionProblem p = bshd_problem(kFwd, {}, DType::kFloat32, Device::cuda(0));
  p.o.stride[2] = 66;  // 264 bytes; dims 0 and 1 keep aligned strides
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kMisaligned,
                    {"o.stride[2] = 66 elements = 264 bytes", "not a multiple of 16 bytes"}));
}

TEST(ValidationTest, CudaAlignedProblemAccepted) {
  ProblemInfo info;
  ASSERT_TRUE(Passes(bshd_problem(kBwd, {}, DType::kBFloat16, Device::cuda(0)), kBwd, &info));
  EXPECT_EQ(info.device, Device::cuda(0));
}

TEST(ValidationTest, HostTensorsNeedNoAlignment) {
  AttentionProblem p = bshd_problem(kFwd);
  p.q.data = offset_ptr(p.q.data, 2);
  p.k.stride[2] = 65;  // only non-last strides, still last-dim contiguous
  EXPECT_TRUE(Passes(p, kFwd));
}

TEST(ValidationTest, CudaLseNeedsNoAlignment) {
  AttentionProblem p = bshd_problem(kFwd, {}, DType::kBFloat16, Device::cuda(0));
  p.lse.data = offset_ptr(p.lse.data, 4);
  EXPECT_TRUE(Passes(p, kFwd));
}

// ------------------------------------------------------------------------------------------------
// Devices.

TEST(ValidationTest, DeviceMismatchCpuCuda) {
  AttentionProblem p = bshd_problem(kFwd);
  p.k.device = Device::cuda(0);
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kDeviceMismatch,
                    {"k.device = cuda:0 does not match q.device = cpu"}));
}

TEST(ValidationTest, DeviceMismatchTwoGpus) {
  AttentionProblem p = bshd_problem(kBwd, {}, DType::kBFloat16, Device::cuda(0));
  p.dv.device = Device::cuda(1);
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kDeviceMismatch,
                    {"dv.device = cuda:1 does not match q.device = cuda:0"}));
}

TEST(ValidationTest, DeviceMismatchLse) {
  AttentionProblem p = bshd_problem(kFwd, {}, DType::kBFloat16, Device::cuda(0));
  p.lse.device = Device::cpu();
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kDeviceMismatch, {"lse.device = cpu", "cuda:0"}));
}

TEST(ValidationTest, DeviceMismatchCuSeqlensOnHostForCudaProblem) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  for (TensorView* t : {&p.q, &p.k, &p.v, &p.o, &p.lse}) t->device = Device::cuda(0);
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kDeviceMismatch,
                    {"cu_seqlens_q.device = cpu does not match q.device = cuda:0"}));
}

// ------------------------------------------------------------------------------------------------
// cu_seqlens and seqused_k contents.

TEST(ValidationTest, CuSeqlensNotStartingAtZero) {
  Varlen vl;
  vl.cu_q = {1, 5, 5, 17};
  EXPECT_TRUE(
      Fails(vl.make(kFwd), kFwd, ErrorCode::kCuSeqlensInvalid, {"cu_seqlens_q[0] = 1", "be 0"}));
}

TEST(ValidationTest, CuSeqlensDecreasing) {
  Varlen vl;
  vl.cu_k = {0, 7, 12, 10, 20};
  vl.cu_q = {0, 5, 5, 5, 17};
  EXPECT_TRUE(Fails(vl.make(kFwd), kFwd, ErrorCode::kCuSeqlensInvalid,
                    {"cu_seqlens_k[3] = 10 < cu_seqlens_k[2] = 12 (must be non-decreasing)"}));
}

TEST(ValidationTest, CuSeqlensInconsistentWithPackedLengthQ) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  vl.cu_q[3] = 16;  // q still packs 17 tokens
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kCuSeqlensInvalid,
                    {"cu_seqlens_q[3] = 16", "total_q (q.shape[0]) = 17"}));
}

TEST(ValidationTest, CuSeqlensInconsistentWithPackedLengthK) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  vl.cu_k[3] = 21;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kCuSeqlensInvalid,
                    {"cu_seqlens_k[3] = 21", "total_k (k.shape[0]) = 20"}));
}

TEST(ValidationTest, MaxSeqlenSmallerThanLongestSequence) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.max_seqlen_q = 11;  // longest query sequence is 12
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kCuSeqlensInvalid, {"max_seqlen_q = 11", "(12)"}));
  p.max_seqlen_q = 0;
  p.max_seqlen_k = 10;  // longest key sequence is 11
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kCuSeqlensInvalid, {"max_seqlen_k = 10", "(11)"}));
}

TEST(ValidationTest, MaxSeqlenNegative) {
  AttentionProblem p = bshd_problem(kFwd);
  p.max_seqlen_k = -1;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kInvalidArgument, {"max_seqlen_k = -1"}));
}

TEST(ValidationTest, VarlenWithoutValueChecksNeedsMaxSeqlens) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd);
  p.check_metadata_values = false;
  p.max_seqlen_q = 12;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kInvalidArgument,
                    {"max_seqlen_k = 0", "check_metadata_values"}));
}

TEST(ValidationTest, CudaVarlenWithoutValueChecksIsNotRead) {
  // Fake CUDA pointers for cu_seqlens: with check_metadata_values false nothing is read.
  Varlen vl;
  AttentionProblem p = vl.make(kBwd);
  for (TensorView* t : {&p.q, &p.k, &p.v, &p.o, &p.lse, &p.dout, &p.dq, &p.dk, &p.dv,
                        &p.cu_seqlens_q, &p.cu_seqlens_k}) {
    t->device = Device::cuda(0);
  }
  p.cu_seqlens_q.data = fake_ptr(9);
  p.cu_seqlens_k.data = fake_ptr(10);
  p.seqused_k = TensorView::contiguous(fake_ptr(11), DType::kInt32, {3}, Device::cuda(0));
  p.check_metadata_values = false;
  p.max_seqlen_q = 12;
  p.max_seqlen_k = 16;
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kBwd, &info));
  EXPECT_TRUE(info.varlen);
  EXPECT_EQ(info.batch, 3);
  EXPECT_EQ(info.seqlen_q, 12);
  EXPECT_EQ(info.seqlen_k, 16);
  EXPECT_EQ(info.total_q, 17);
  EXPECT_EQ(info.total_k, 20);
  EXPECT_TRUE(info.has_seqused_k);
}

TEST(ValidationTest, SequsedKLargerThanSequenceBshd) {
  AttentionProblem p = bshd_problem(kFwd);
  std::vector<int32_t> used{96, 97};
  p.seqused_k = TensorView::contiguous(used.data(), DType::kInt32, {2}, Device::cpu());
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kSequsedInvalid,
                    {"seqused_k[1] = 97 is outside [0, 96]", "sequence 1"}));
}

TEST(ValidationTest, SequsedKLargerThanSequenceVarlen) {
  Varlen vl;
  vl.used = {6, 3, 0};  // sequence 1 has 2 keys
  EXPECT_TRUE(Fails(vl.make(kFwd, DType::kFloat16, true), kFwd, ErrorCode::kSequsedInvalid,
                    {"seqused_k[1] = 3 is outside [0, 2]"}));
}

TEST(ValidationTest, SequsedKNegative) {
  Varlen vl;
  vl.used = {6, 2, -1};
  EXPECT_TRUE(Fails(vl.make(kFwd, DType::kFloat16, true), kFwd, ErrorCode::kSequsedInvalid,
                    {"seqused_k[2] = -1"}));
}

TEST(ValidationTest, SequsedKValuesNotCheckedWhenDisabled) {
  AttentionProblem p = bshd_problem(kFwd);
  std::vector<int32_t> used{1000, -5};
  p.seqused_k = TensorView::contiguous(used.data(), DType::kInt32, {2}, Device::cpu());
  p.check_metadata_values = false;
  EXPECT_TRUE(Passes(p, kFwd));
}

// ------------------------------------------------------------------------------------------------
// Mask, window, scale, softcap, dropout.

TEST(ValidationTest, WindowLeftBelowMinusOne) {
  AttentionProblem p = bshd_problem(kFwd);
  p.window_left = -2;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kWindowInvalid, {"window_left = -2"}));
}

TEST(ValidationTest, WindowRightBelowMinusOne) {
  AttentionProblem p = bshd_problem(kFwd);
  p.window_right = -7;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kWindowInvalid, {"window_right = -7"}));
}

TEST(ValidationTest, CausalWithWindowRight5) {
  for (MaskType m : {MaskType::kCausal, MaskType::kCausalBottomRight}) {
    AttentionProblem p = bshd_problem(kFwd);
    p.mask = m;
    p.window_right = 5;
    EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kWindowInvalid,
                      {"window_right = 5", fl::mask_type_name(m)}));
  }
}

TEST(ValidationTest, CausalWindowRightNormalized) {
  for (int64_t right : {-1, 0}) {
    AttentionProblem p = bshd_problem(kFwd);
    p.mask = MaskType::kCausal;
    p.window_left = 16;
    p.window_right = right;
    ProblemInfo info;
    ASSERT_TRUE(Passes(p, kFwd, &info));
    EXPECT_EQ(info.window_right, 0);
    EXPECT_EQ(info.window_left, 16);
    EXPECT_FALSE(info.bottom_right);
    EXPECT_TRUE(info.is_causal());
  }
}

TEST(ValidationTest, UnknownMaskType) {
  AttentionProblem p = bshd_problem(kFwd);
  p.mask = static_cast<MaskType>(7);
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kInvalidArgument, {"mask = 7"}));
}

TEST(ValidationTest, SoftmaxScaleInvalid) {
  const struct {
    double value;
    const char* text;
  } cases[] = {{kNaN, "softmax_scale = nan"},
               {kInf, "softmax_scale = inf"},
               {-kInf, "softmax_scale = -inf"},
               {0.0, "softmax_scale = 0"},
               {-1.0, "softmax_scale = -1"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    AttentionProblem p = bshd_problem(kFwd);
    p.softmax_scale = c.value;
    EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kSoftmaxScaleInvalid, {c.text}));
  }
}

TEST(ValidationTest, SoftcapInvalid) {
  const struct {
    double value;
    const char* text;
  } cases[] = {{-1.0, "softcap = -1"}, {kNaN, "softcap = nan"}, {kInf, "softcap = inf"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    AttentionProblem p = bshd_problem(kFwd);
    p.softcap = c.value;
    EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kSoftcapInvalid, {c.text}));
  }
}

TEST(ValidationTest, DropoutUnsupported) {
  AttentionProblem p = bshd_problem(kFwd);
  p.dropout_p = 0.1;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kDropoutUnsupported, {"dropout_p = 0.1"}));
  p.dropout_p = kNaN;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kDropoutUnsupported, {"dropout_p = nan"}));
}

TEST(ValidationTest, InvalidDirection) {
  EXPECT_TRUE(Fails(bshd_problem(kBwd), static_cast<Direction>(5), ErrorCode::kInvalidArgument,
                    {"direction = 5"}));
}

// ------------------------------------------------------------------------------------------------
// Order: the most basic problem is reported first.

TEST(ValidationTest, MostBasicErrorFirst) {
  AttentionProblem p = bshd_problem(kBwd);
  p.dropout_p = 0.5;
  p.softcap = -1;
  p.q.stride[3] = 3;
  p.k.shape[3] = 32;
  p.dv.dtype = DType::kFloat32;
  p.dk.data = nullptr;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kNullPointer, {"dk"}));
  p.dk.data = fake_ptr(7);
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kDTypeMismatch, {"dv"}));
  p.dv.dtype = DType::kBFloat16;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kShapeMismatch, {"k.shape[3]"}));
  p.k.shape[3] = 64;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kNotContiguous, {"q.stride[3]"}));
  p.q.stride[3] = 1;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kSoftcapInvalid, {"softcap"}));
  p.softcap = 0;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kDropoutUnsupported, {"dropout_p"}));
  p.dropout_p = 0;
  EXPECT_TRUE(Passes(p, kBwd));
}

// ------------------------------------------------------------------------------------------------
// Valid problems fill ProblemInfo.

TEST(ValidationTest, ValidBshdFillsInfo) {
  Dims d;
  d.head_dim_v = 128;
  AttentionProblem p = bshd_problem(kBwd, d, DType::kBFloat16);
  p.mask = MaskType::kCausalBottomRight;
  p.window_left = 32;
  p.softcap = 30.0;
  p.deterministic = true;
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kBwd, &info));
  EXPECT_EQ(info.direction, kBwd);
  EXPECT_EQ(info.dtype, DType::kBFloat16);
  EXPECT_EQ(info.device, Device::cpu());
  EXPECT_FALSE(info.varlen);
  EXPECT_EQ(info.batch, 2);
  EXPECT_EQ(info.seqlen_q, 128);
  EXPECT_EQ(info.seqlen_k, 96);
  EXPECT_EQ(info.total_q, 256);
  EXPECT_EQ(info.total_k, 192);
  EXPECT_EQ(info.heads_q, 8);
  EXPECT_EQ(info.heads_kv, 2);
  EXPECT_EQ(info.head_dim, 64);
  EXPECT_EQ(info.head_dim_v, 128);
  EXPECT_TRUE(info.has_lse);
  EXPECT_FALSE(info.has_seqused_k);
  EXPECT_DOUBLE_EQ(info.softmax_scale, 0.125);
  EXPECT_EQ(info.softcap, 30.0);
  EXPECT_EQ(info.mask, MaskType::kCausalBottomRight);
  EXPECT_TRUE(info.bottom_right);
  EXPECT_EQ(info.window_left, 32);
  EXPECT_EQ(info.window_right, 0);
  EXPECT_TRUE(info.deterministic);
  EXPECT_TRUE(info.is_causal());
  EXPECT_TRUE(info.has_window());
}

TEST(ValidationTest, ValidBshdNoMaskWindowAndExplicitScale) {
  AttentionProblem p = bshd_problem(kFwd, {}, DType::kFloat32);
  p.lse = TensorView{};
  p.window_left = 4;
  p.window_right = 9;
  p.softmax_scale = 0.5;
  std::vector<int32_t> used{0, 96};
  p.seqused_k = TensorView::contiguous(used.data(), DType::kInt32, {2}, Device::cpu());
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kFwd, &info));
  EXPECT_EQ(info.direction, kFwd);
  EXPECT_EQ(info.dtype, DType::kFloat32);
  EXPECT_FALSE(info.has_lse);
  EXPECT_TRUE(info.has_seqused_k);
  EXPECT_EQ(info.softmax_scale, 0.5);
  EXPECT_EQ(info.softcap, 0.0);
  EXPECT_EQ(info.mask, MaskType::kNoMask);
  EXPECT_TRUE(info.bottom_right);
  EXPECT_EQ(info.window_left, 4);
  EXPECT_EQ(info.window_right, 9);
  EXPECT_FALSE(info.deterministic);
  EXPECT_FALSE(info.is_causal());
  EXPECT_TRUE(info.has_window());
}

TEST(ValidationTest, ValidVarlenFillsInfo) {
  Varlen vl;
  AttentionProblem p = vl.make(kFwd, DType::kFloat16, true);
  p.mask = MaskType::kCausal;
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kFwd, &info));
  EXPECT_EQ(info.direction, kFwd);
  EXPECT_EQ(info.dtype, DType::kFloat16);
  EXPECT_EQ(info.device, Device::cpu());
  EXPECT_TRUE(info.varlen);
  EXPECT_EQ(info.batch, 3);
  EXPECT_EQ(info.seqlen_q, 12);  // longest query sequence, computed from cu_seqlens_q
  EXPECT_EQ(info.seqlen_k, 11);
  EXPECT_EQ(info.total_q, 17);
  EXPECT_EQ(info.total_k, 20);
  EXPECT_EQ(info.heads_q, 6);
  EXPECT_EQ(info.heads_kv, 3);
  EXPECT_EQ(info.head_dim, 128);
  EXPECT_EQ(info.head_dim_v, 64);
  EXPECT_TRUE(info.has_lse);
  EXPECT_TRUE(info.has_seqused_k);
  EXPECT_DOUBLE_EQ(info.softmax_scale, 1.0 / std::sqrt(128.0));
  EXPECT_EQ(info.softcap, 0.0);
  EXPECT_EQ(info.mask, MaskType::kCausal);
  EXPECT_FALSE(info.bottom_right);
  EXPECT_EQ(info.window_left, -1);
  EXPECT_EQ(info.window_right, 0);
  EXPECT_FALSE(info.deterministic);
  EXPECT_FALSE(info.has_window());
}

TEST(ValidationTest, ValidVarlenGivenMaxSeqlensAreKept) {
  Varlen vl;
  AttentionProblem p = vl.make(kBwd);
  p.max_seqlen_q = 64;  // a valid (loose) bound is kept as given
  p.max_seqlen_k = 11;  // exact
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kBwd, &info));
  EXPECT_EQ(info.direction, kBwd);
  EXPECT_EQ(info.seqlen_q, 64);
  EXPECT_EQ(info.seqlen_k, 11);
}

TEST(ValidationTest, EmptyProblemsAreValid) {
  Dims d;
  d.batch = 0;
  ProblemInfo info;
  ASSERT_TRUE(Passes(bshd_problem(kFwd, d), kFwd, &info));
  EXPECT_EQ(info.batch, 0);
  EXPECT_EQ(info.total_q, 0);
  d = Dims{};
  d.seqlen_q = 0;
  d.seqlen_k = 0;
  ASSERT_TRUE(Passes(bshd_problem(kBwd, d), kBwd, &info));
  EXPECT_EQ(info.seqlen_q, 0);
  Varlen vl;
  vl.cu_q = {0};
  vl.cu_k = {0};
  ASSERT_TRUE(Passes(vl.make(kFwd), kFwd, &info));
  EXPECT_EQ(info.batch, 0);
  EXPECT_EQ(info.total_q, 0);
}

TEST(ValidationTest, NullInfoIsAllowed) { EXPECT_TRUE(Passes(bshd_problem(kBwd), kBwd, nullptr)); }

TEST(ValidationTest, TensorsBeyond2To31ElementsAccepted) {
  // q [1, 2^22, 64, 128] has 2^35 elements; the pointer is fake and never dereferenced.
  const int64_t seqlen = int64_t{1} << 22;
  Dims d;
  d.batch = 1;
  d.seqlen_q = seqlen;
  d.seqlen_k = seqlen;
  d.heads_q = 64;
  d.heads_kv = 8;
  d.head_dim = 128;
  d.head_dim_v = 128;
  AttentionProblem p = bshd_problem(kBwd, d, DType::kBFloat16, Device::cuda(0));
  ASSERT_EQ(p.q.numel(), int64_t{1} << 35);
  ASSERT_EQ(p.q.stride[0], int64_t{1} << 35);
  p.mask = MaskType::kCausal;
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kBwd, &info));
  EXPECT_EQ(info.seqlen_q, seqlen);
  EXPECT_EQ(info.seqlen_k, seqlen);
  EXPECT_EQ(info.total_q, seqlen);
  EXPECT_EQ(info.heads_q, 64);
  // Causal, seqlen_q == seqlen_k = n: n (n + 1) / 2 pairs per head, exactly representable.
  const double n = static_cast<double>(seqlen);
  EXPECT_EQ(info.visible_pairs(nullptr, nullptr, nullptr), n * (n + 1) / 2 * 64);

  // Varlen: 2^22 tokens x 64 heads x 128 = 2^35 elements too.
  std::vector<int32_t> cu{0, 1 << 21, 1 << 22};
  AttentionProblem v;
  const Device dev = Device::cpu();
  v.q = TensorView::contiguous(fake_ptr(0), DType::kFloat16, {seqlen, 64, 128}, dev);
  v.k = TensorView::contiguous(fake_ptr(1), DType::kFloat16, {seqlen, 8, 128}, dev);
  v.v = TensorView::contiguous(fake_ptr(2), DType::kFloat16, {seqlen, 8, 128}, dev);
  v.o = TensorView::contiguous(fake_ptr(3), DType::kFloat16, {seqlen, 64, 128}, dev);
  v.lse = TensorView::contiguous(fake_ptr(4), DType::kFloat32, {64, seqlen}, dev);
  v.cu_seqlens_q = TensorView::contiguous(cu.data(), DType::kInt32, {3}, dev);
  v.cu_seqlens_k = v.cu_seqlens_q;
  ASSERT_TRUE(Passes(v, kFwd, &info));
  EXPECT_EQ(info.total_q, seqlen);
  EXPECT_EQ(info.seqlen_q, seqlen / 2);
  EXPECT_EQ(info.batch, 2);
}

// ------------------------------------------------------------------------------------------------
// Nothing is written: validation itself, and flashlane::forward on a validation error.

TEST(ValidationTest, ValidationNeverWritesTensors) {
  // Real host buffers, poisoned; validation reads only cu_seqlens / seqused_k.
  Varlen vl;
  const size_t total_q = 17, total_k = 20;
  std::vector<uint16_t> q(total_q * 6 * 128), k(total_k * 3 * 128), v(total_k * 3 * 64),
      o(total_q * 6 * 64);
  std::vector<float> lse(6 * total_q);
  for (auto* buf : {&q, &k, &v, &o}) std::memset(buf->data(), 0x7f, buf->size() * 2);
  std::memset(lse.data(), 0x7f, lse.size() * 4);
  const auto q0 = q, k0 = k, v0 = v, o0 = o;
  const auto lse0 = lse;
  const auto cu_q0 = vl.cu_q, cu_k0 = vl.cu_k, used0 = vl.used;
  AttentionProblem p = vl.make(kFwd, DType::kFloat16, true);
  p.q.data = q.data();
  p.k.data = k.data();
  p.v.data = v.data();
  p.o.data = o.data();
  p.lse.data = lse.data();
  ASSERT_TRUE(Passes(p, kFwd));
  p.softcap = -3;
  ASSERT_FALSE(fl::validate(p, kFwd, nullptr).ok());
  EXPECT_EQ(q, q0);
  EXPECT_EQ(k, k0);
  EXPECT_EQ(v, v0);
  EXPECT_EQ(o, o0);
  EXPECT_EQ(0, std::memcmp(lse.data(), lse0.data(), lse.size() * 4));
  EXPECT_EQ(vl.cu_q, cu_q0);
  EXPECT_EQ(vl.cu_k, cu_k0);
  EXPECT_EQ(vl.used, used0);
}

TEST(ValidationTest, ForwardOnValidationErrorLeavesPoisonedOutputs) {
  // A host bshd problem with real buffers and one defect each time; o and lse are poisoned with
  // 0x7f bytes and must come back bit-identical from flashlane::forward.
  const int64_t b = 1, s = 16, h = 2, d = 32;
  const size_t n = static_cast<size_t>(b * s * h * d);
  std::vector<uint16_t> q(n, 0x3c00), k(n, 0x3c00), v(n, 0x3c00), o(n);
  std::vector<float> lse(static_cast<size_t>(b * h * s));
  struct Defect {
    const char* what;
    ErrorCode code;
    void (*apply)(AttentionProblem*);
  };
  const Defect defects[] = {
      {"k null", ErrorCode::kNullPointer, [](AttentionProblem* p) { p->k.data = nullptr; }},
      {"v dtype", ErrorCode::kDTypeMismatch,
       [](AttentionProblem* p) { p->v.dtype = DType::kBFloat16; }},
      {"o shape", ErrorCode::kShapeMismatch, [](AttentionProblem* p) { p->o.shape[1] = 8; }},
      {"softcap", ErrorCode::kSoftcapInvalid, [](AttentionProblem* p) { p->softcap = -1; }},
      {"dropout", ErrorCode::kDropoutUnsupported, [](AttentionProblem* p) { p->dropout_p = 0.1; }},
      {"window", ErrorCode::kWindowInvalid,
       [](AttentionProblem* p) {
         p->mask = MaskType::kCausal;
         p->window_right = 5;
       }},
  };
  for (const Defect& defect : defects) {
    SCOPED_TRACE(defect.what);
    std::memset(o.data(), 0x7f, o.size() * sizeof(uint16_t));
    std::memset(lse.data(), 0x7f, lse.size() * sizeof(float));
    const std::vector<uint16_t> o0 = o;
    const std::vector<float> lse0 = lse;
    AttentionProblem p;
    const Device dev = Device::cpu();
    p.q = TensorView::contiguous(q.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.k = TensorView::contiguous(k.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.v = TensorView::contiguous(v.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.o = TensorView::contiguous(o.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.lse = TensorView::contiguous(lse.data(), DType::kFloat32, {b, h, s}, dev);
    defect.apply(&p);
    const Status st = fl::forward(p, fl::Request{fl::Backend::kReferenceCpu});
    EXPECT_EQ(st.code(), defect.code) << st.to_string();
    EXPECT_EQ(0, std::memcmp(o.data(), o0.data(), o.size() * sizeof(uint16_t)));
    EXPECT_EQ(0, std::memcmp(lse.data(), lse0.data(), lse.size() * sizeof(float)));
  }
}

// ------------------------------------------------------------------------------------------------
// Attention sinks: learnable_sink (forward and backward) and dlearnable_sink (backward only),
// both float32 [heads_q] with stride 1 on q's device.

namespace {

/// `p` with sinks over fake pointers: learnable_sink always, dlearnable_sink in a backward.
AttentionProblem with_sinks(AttentionProblem p, Direction dir, int64_t heads_q) {
  p.learnable_sink = TensorView::contiguous(fake_ptr(9), DType::kFloat32, {heads_q}, p.q.device);
  if (dir == kBwd) {
    p.dlearnable_sink =
        TensorView::contiguous(fake_ptr(10), DType::kFloat32, {heads_q}, p.q.device);
  }
  return p;
}

/// The sink tensors of a problem, for the cases that apply to either of them.
struct SinkArg {
  const char* name;
  TensorView AttentionProblem::*member;
};
constexpr SinkArg kSinkArgs[] = {{"learnable_sink", &AttentionProblem::learnable_sink},
                                 {"dlearnable_sink", &AttentionProblem::dlearnable_sink}};

}  // namespace

TEST(ValidationSinkTest, BshdAndVarlenAcceptedAndInfoFilled) {
  ProblemInfo info;
  ASSERT_TRUE(Passes(with_sinks(bshd_problem(kFwd), kFwd, 8), kFwd, &info));
  EXPECT_TRUE(info.has_sink);
  EXPECT_FALSE(info.has_dsink);
  ASSERT_TRUE(Passes(with_sinks(bshd_problem(kBwd), kBwd, 8), kBwd, &info));
  EXPECT_TRUE(info.has_sink);
  EXPECT_TRUE(info.has_dsink);
  // The sink gradient is optional in a backward with sinks.
  AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
  p.dlearnable_sink = TensorView{};
  ASSERT_TRUE(Passes(p, kBwd, &info));
  EXPECT_TRUE(info.has_sink);
  EXPECT_FALSE(info.has_dsink);
  // Varlen: heads_q is q.shape[1].
  Varlen vl;
  ASSERT_TRUE(Passes(with_sinks(vl.make(kBwd, DType::kFloat16, true), kBwd, 6), kBwd, &info));
  EXPECT_TRUE(info.varlen);
  EXPECT_TRUE(info.has_sink);
  EXPECT_TRUE(info.has_dsink);
  // Without sinks both flags stay false.
  ASSERT_TRUE(Passes(bshd_problem(kBwd), kBwd, &info));
  EXPECT_FALSE(info.has_sink);
  EXPECT_FALSE(info.has_dsink);
}

TEST(ValidationSinkTest, ForwardIgnoresSinkGradient) {
  // A forward never reads or writes dlearnable_sink: even a malformed one on another device,
  // and one given without learnable_sink, pass.
  AttentionProblem p = bshd_problem(kFwd);
  p.dlearnable_sink = TensorView::contiguous(nullptr, DType::kInt32, {3, 3}, Device::cuda(2));
  ProblemInfo info;
  ASSERT_TRUE(Passes(p, kFwd, &info));
  EXPECT_FALSE(info.has_sink);
  EXPECT_FALSE(info.has_dsink);
  p = with_sinks(bshd_problem(kFwd), kFwd, 8);
  p.dlearnable_sink = TensorView::contiguous(fake_ptr(10), DType::kFloat32, {8}, Device::cpu());
  ASSERT_TRUE(Passes(p, kFwd, &info));
  EXPECT_TRUE(info.has_sink);
  EXPECT_FALSE(info.has_dsink);
}

TEST(ValidationSinkTest, SinkGradientWithoutSinks) {
  AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
  p.learnable_sink = TensorView{};
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kInvalidArgument, {"dlearnable_sink", "learnable_sink is not"}));
}

TEST(ValidationSinkTest, NullDataPointer) {
  for (const SinkArg& a : kSinkArgs) {
    SCOPED_TRACE(a.name);
    AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
    (p.*a.member).data = nullptr;
    const std::string needle = std::string(a.name) + ": data pointer is null";
    EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kNullPointer, {needle.c_str()}));
  }
}

TEST(ValidationSinkTest, NotFloat32) {
  for (const SinkArg& a : kSinkArgs) {
    for (DType dt : {DType::kFloat16, DType::kBFloat16, DType::kFloat64, DType::kInt32}) {
      SCOPED_TRACE(std::string(a.name) + " " + fl::dtype_name(dt));
      AttentionProblem p = with_sinks(bshd_problem(kBwd, {}, DType::kFloat32), kBwd, 8);
      (p.*a.member).dtype = dt;  // even q's own dtype is refused: sinks are float32 always
      const std::string needle = std::string(a.name) + ".dtype = " + fl::dtype_name(dt);
      EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kUnsupportedDType, {needle.c_str(), "float32"}));
    }
  }
  // float32 sinks with float16 / float64 data are fine.
  for (DType dt : {DType::kFloat16, DType::kFloat64}) {
    EXPECT_TRUE(Passes(with_sinks(bshd_problem(kBwd, {}, dt), kBwd, 8), kBwd));
  }
}

TEST(ValidationSinkTest, RankNotOne) {
  for (const SinkArg& a : kSinkArgs) {
    SCOPED_TRACE(a.name);
    AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
    p.*a.member = TensorView::contiguous(fake_ptr(11), DType::kFloat32, {1, 8}, Device::cpu());
    const std::string needle = std::string(a.name) + ".rank = 2";
    EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kRankMismatch, {needle.c_str(), "[heads_q]"}));
  }
}

TEST(ValidationSinkTest, ShapeNotHeadsQ) {
  for (const SinkArg& a : kSinkArgs) {
    for (int64_t n : {0, 2, 7, 9, 16}) {  // heads_q = 8, heads_kv = 2: neither kv heads nor 0
      SCOPED_TRACE(std::string(a.name) + " [" + std::to_string(n) + "]");
      AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
      (p.*a.member).shape[0] = n;
      const std::string needle = std::string(a.name) + ".shape[0] = " + std::to_string(n);
      EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kShapeMismatch, {needle.c_str(), "heads_q", "q.shape[2]"}));
    }
  }
  // Varlen: compared with q.shape[1].
  Varlen vl;
  AttentionProblem p = with_sinks(vl.make(kFwd), kFwd, 3);  // heads_kv, not heads_q
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"learnable_sink.shape[0] = 3", "q.shape[1]"}));
  p = with_sinks(bshd_problem(kFwd), kFwd, 8);
  p.learnable_sink.shape[0] = -8;
  EXPECT_TRUE(Fails(p, kFwd, ErrorCode::kShapeMismatch, {"learnable_sink.shape[0] = -8", "negative"}));
}

TEST(ValidationSinkTest, StrideNotOne) {
  for (const SinkArg& a : kSinkArgs) {
    for (int64_t s : {0, 2, -1}) {
      SCOPED_TRACE(std::string(a.name) + " stride " + std::to_string(s));
      AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
      (p.*a.member).stride[0] = s;
      const std::string needle = std::string(a.name) + ".stride[0] = " + std::to_string(s);
      EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kNotContiguous, {needle.c_str()}));
    }
  }
}

TEST(ValidationSinkTest, DeviceMismatch) {
  for (const SinkArg& a : kSinkArgs) {
    SCOPED_TRACE(a.name);
    AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
    (p.*a.member).device = Device::cuda(0);  // host problem, CUDA sink
    const std::string needle = std::string(a.name) + ".device = cuda:0";
    EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kDeviceMismatch, {needle.c_str(), "q.device = cpu"}));
    p = with_sinks(bshd_problem(kBwd, {}, DType::kBFloat16, Device::cuda(0)), kBwd, 8);
    (p.*a.member).device = Device::cuda(1);
    const std::string needle1 = std::string(a.name) + ".device = cuda:1";
    EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kDeviceMismatch, {needle1.c_str(), "q.device = cuda:0"}));
  }
}

TEST(ValidationSinkTest, CudaSinksNeedNoAlignment) {
  // float32 vectors read element by element: a 4-byte aligned pointer is enough.
  AttentionProblem p = with_sinks(bshd_problem(kBwd, {}, DType::kBFloat16, Device::cuda(0)), kBwd, 8);
  p.learnable_sink.data = offset_ptr(p.learnable_sink.data, 4);
  p.dlearnable_sink.data = offset_ptr(p.dlearnable_sink.data, 12);
  EXPECT_TRUE(Passes(p, kBwd));
}

TEST(ValidationSinkTest, MostBasicErrorFirst) {
  // Each fix reveals the next phase's error: presence, devices, dtypes, ranks, shapes, strides.
  AttentionProblem p = with_sinks(bshd_problem(kBwd), kBwd, 8);
  p.learnable_sink = TensorView{};
  p.dlearnable_sink.device = Device::cuda(0);
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kInvalidArgument, {"dlearnable_sink"}));
  p.learnable_sink = TensorView::contiguous(fake_ptr(9), DType::kFloat16, {2, 4}, Device::cpu());
  p.learnable_sink.stride[1] = 2;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kDeviceMismatch, {"dlearnable_sink.device"}));
  p.dlearnable_sink.device = Device::cpu();
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kUnsupportedDType, {"learnable_sink.dtype"}));
  p.learnable_sink.dtype = DType::kFloat32;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kRankMismatch, {"learnable_sink.rank"}));
  p.learnable_sink = TensorView::strided(fake_ptr(9), DType::kFloat32, {4}, {2}, Device::cpu());
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kShapeMismatch, {"learnable_sink.shape[0] = 4"}));
  p.learnable_sink.shape[0] = 8;
  EXPECT_TRUE(Fails(p, kBwd, ErrorCode::kNotContiguous, {"learnable_sink.stride[0] = 2"}));
  p.learnable_sink.stride[0] = 1;
  EXPECT_TRUE(Passes(p, kBwd));
}

TEST(ValidationSinkTest, BackwardOnValidationErrorLeavesPoisonedOutputs) {
  // A host bshd backward with sinks over real buffers and one defect each time; dq, dk, dv and
  // dlearnable_sink are poisoned with 0x7f bytes and must come back bit-identical from
  // flashlane::backward.
  const int64_t b = 1, s = 16, h = 2, d = 32;
  const size_t n = static_cast<size_t>(b * s * h * d);
  std::vector<uint16_t> q(n, 0x3c00), k(n, 0x3c00), v(n, 0x3c00), o(n, 0x3c00), dout(n, 0x3c00);
  std::vector<uint16_t> dq(n), dk(n), dv(n);
  std::vector<float> lse(static_cast<size_t>(b * h * s), 1.0f), sink(4, 0.5f), dsink(4);
  struct Defect {
    const char* what;
    ErrorCode code;
    void (*apply)(AttentionProblem*);
  };
  const Defect defects[] = {
      {"sink dtype", ErrorCode::kUnsupportedDType,
       [](AttentionProblem* p) { p->learnable_sink.dtype = DType::kFloat16; }},
      {"sink shape", ErrorCode::kShapeMismatch,
       [](AttentionProblem* p) { p->learnable_sink.shape[0] = 4; }},
      {"dsink shape", ErrorCode::kShapeMismatch,
       [](AttentionProblem* p) { p->dlearnable_sink.shape[0] = 1; }},
      {"dsink stride", ErrorCode::kNotContiguous,
       [](AttentionProblem* p) { p->dlearnable_sink.stride[0] = 2; }},
      {"dsink rank", ErrorCode::kRankMismatch,
       [](AttentionProblem* p) { p->dlearnable_sink.rank = 2; }},
      {"dsink without sink", ErrorCode::kInvalidArgument,
       [](AttentionProblem* p) { p->learnable_sink = TensorView{}; }},
  };
  for (const Defect& defect : defects) {
    SCOPED_TRACE(defect.what);
    for (auto* buf : {&dq, &dk, &dv}) std::memset(buf->data(), 0x7f, buf->size() * sizeof(uint16_t));
    std::memset(dsink.data(), 0x7f, dsink.size() * sizeof(float));
    const std::vector<uint16_t> dq0 = dq, dk0 = dk, dv0 = dv;
    const std::vector<float> dsink0 = dsink, sink0 = sink;
    AttentionProblem p;
    const Device dev = Device::cpu();
    p.q = TensorView::contiguous(q.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.k = TensorView::contiguous(k.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.v = TensorView::contiguous(v.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.o = TensorView::contiguous(o.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.dout = TensorView::contiguous(dout.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.dq = TensorView::contiguous(dq.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.dk = TensorView::contiguous(dk.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.dv = TensorView::contiguous(dv.data(), DType::kFloat16, {b, s, h, d}, dev);
    p.lse = TensorView::contiguous(lse.data(), DType::kFloat32, {b, h, s}, dev);
    p.learnable_sink = TensorView::contiguous(sink.data(), DType::kFloat32, {h}, dev);
    p.dlearnable_sink = TensorView::contiguous(dsink.data(), DType::kFloat32, {h}, dev);
    ASSERT_TRUE(Passes(p, kBwd));
    defect.apply(&p);
    const Status st = fl::backward(p, fl::Request{fl::Backend::kReferenceCpu});
    EXPECT_EQ(st.code(), defect.code) << st.to_string();
    EXPECT_EQ(dq, dq0);
    EXPECT_EQ(dk, dk0);
    EXPECT_EQ(dv, dv0);
    EXPECT_EQ(0, std::memcmp(dsink.data(), dsink0.data(), dsink.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(sink.data(), sink0.data(), sink.size() * sizeof(float)));
  }
}
