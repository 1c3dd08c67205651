// Host 16-bit conversions: every float16 / bfloat16 bit pattern round-trips through float, and
// rounding a double picks the nearest representable value (ties to even), the property the
// float64 reference relies on when it stores its outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>

#include "core/numeric.h"

namespace nm = flashlane::numeric;

TEST(Numeric, EveryHalfPatternRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    const float f16 = nm::fp16_to_float(bits);
    const float b16 = nm::bf16_to_float(bits);
    if (!std::isnan(f16)) EXPECT_EQ(nm::float_to_fp16(f16), bits) << std::hex << h;
    if (!std::isnan(b16)) EXPECT_EQ(nm::float_to_bf16(b16), bits) << std::hex << h;
    if (std::isnan(f16)) EXPECT_TRUE(std::isnan(nm::fp16_to_float(nm::float_to_fp16(f16))));
  }
}

namespace {
// The nearest 16-bit value to d by brute force over the two neighbours of a float guess.
double nearest(flashlane::DType dt, double d) {
  const bool bf = dt == flashlane::DType::kBFloat16;
  const uint16_t guess = bf ? nm::float_to_bf16(static_cast<float>(d)) : nm::float_to_fp16(static_cast<float>(d));
  double best = 0, best_err = INFINITY;
  for (int delta = -2; delta <= 2; ++delta) {
    const uint16_t cand = static_cast<uint16_t>(guess + delta);
    const double v = bf ? nm::bf16_to_float(cand) : nm::fp16_to_float(cand);
    if (std::isnan(v)) continue;
    const double err = std::fabs(v - d);
    const bool even = ((bf ? nm::float_to_bf16(static_cast<float>(v)) : nm::float_to_fp16(static_cast<float>(v))) & 1) == 0;
    if (err < best_err || (err == best_err && even)) { best = v; best_err = err; }
  }
  return best;
}
}  // namespace

TEST(Numeric, DoubleRoundsToTheNearest16BitValue) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> expo(-20, 12);
  for (auto dt : {flashlane::DType::kBFloat16, flashlane::DType::kFloat16}) {
    for (int i = 0; i < 200000; ++i) {
      const double d = std::ldexp(mant(rng), expo(rng)) * (i % 2 ? -1 : 1);
      ASSERT_EQ(nm::round_to(dt, d), nearest(dt, d)) << flashlane::dtype_name(dt) << " " << d;
    }
    // A double just above a tie: the float chain would round it down to the tie, then to even.
    const double tie_up = (dt == flashlane::DType::kBFloat16 ? 1.0 + 1.0 / 256 : 1.0 + 1.0 / 2048) + 1e-12;
    EXPECT_EQ(nm::round_to(dt, tie_up), nearest(dt, tie_up));
    EXPECT_GT(nm::round_to(dt, tie_up), 1.0);
  }
}
