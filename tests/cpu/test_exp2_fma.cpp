// test_exp2_fma.cpp: the FMA-unit exp2 of the sm90 forward's softmax (src/sm90/common/exp2_fma.h)
// against 2^x in double precision. The function is host/device code with bit-identical results
// (fmaf is fused on both), so its error is measured here, on the CPU:
//  - the polynomial over every fp32 reduced argument f with |f| in [2^-14, 1/2] (both signs) and
//    a sample below: the maximum relative error is within kExp2FmaMaxRelError, and close to it
//    (a different, worse or better, polynomial would show);
//  - the whole path (range reduction, exponent insertion) over random x in the domain [-125, 64],
//    every integer and half-integer there, and the edges: -inf, values below the clamp, NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "sm90/common/exp2_fma.h"

namespace {

using flashlane::sm90::exp2_fma;
using flashlane::sm90::kExp2FmaMaxRelError;

double rel_error(float x) {
  const double want = std::exp2(double(x));
  return std::fabs(double(exp2_fma(x)) - want) / want;
}

float next_up(float x) { return std::nextafter(x, std::numeric_limits<float>::infinity()); }

TEST(Exp2Fma, PolynomialErrorOverEveryReducedArgument) {
  // For |x| <= 1/2 the reduction is the identity (j = 0, f = x): this is the polynomial alone.
  double worst = 0.0;
  float worst_at = 0.f;
  int64_t count = 0;
  for (int sign : {1, -1}) {
    for (float a = std::ldexp(1.f, -14); a <= 0.5f; a = next_up(a)) {
      const float x = float(sign) * a;
      const double e = rel_error(x);
      if (e > worst) {
        worst = e;
        worst_at = x;
      }
      ++count;
    }
  }
  // Below 2^-14 the polynomial is c0 + c1 f to within 1e-9: a sample suffices.
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> tiny(-std::ldexp(1.f, -14), std::ldexp(1.f, -14));
  for (int i = 0; i < 1000000; ++i) worst = std::max(worst, rel_error(tiny(gen)));
  worst = std::max(worst, rel_error(0.f));
  EXPECT_GT(count, 2 * 13 * (int64_t(1) << 23));
  EXPECT_LE(worst, kExp2FmaMaxRelError) << "at x = " << worst_at;
  // The minimax error of degree 4 is 2.59e-6; an error far below it would mean the test does
  // not measure the polynomial the header claims.
  EXPECT_GE(worst, 2.5e-6) << "at x = " << worst_at;
  std::printf("exp2_fma: max relative error %.4g over %lld reduced arguments (at %.9g)\n", worst,
              static_cast<long long>(count), double(worst_at));
}

TEST(Exp2Fma, WholeDomainRandomIntegersAndHalves) {
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> dist(-125.f, 64.f);
  double worst = 0.0;
  for (int i = 0; i < 2000000; ++i) worst = std::max(worst, rel_error(dist(gen)));
  for (int j = -125; j <= 64; ++j) {
    worst = std::max(worst, rel_error(float(j)));
    worst = std::max(worst, rel_error(float(j) + 0.5f));
    if (j > -125) worst = std::max(worst, rel_error(float(j) - 0.5f));
    worst = std::max(worst, rel_error(next_up(float(j) + 0.5f)));
  }
  EXPECT_LE(worst, kExp2FmaMaxRelError);
}

TEST(Exp2Fma, ScalingByIntegersIsExact) {
  // Range reduction: 2^(f + k) = 2^f * 2^k for every integer shift, bit for bit.
  std::mt19937 gen(13);
  std::uniform_real_distribution<float> frac(-0.5f, 0.5f);
  int64_t compared = 0;
  for (int i = 0; i < 20000; ++i) {
    const float f = frac(gen);
    const float base = exp2_fma(f);
    for (int k : {-124, -60, -7, -1, 1, 3, 8, 40, 63}) {
      const float x = f + float(k);  // exact: |f| <= 1/2 fits in the ulp budget of |k| < 2^7
      if (x - float(k) != f || std::fabs(f) == 0.5f) continue;
      EXPECT_EQ(exp2_fma(x), std::ldexp(base, k)) << "f = " << f << ", k = " << k;
      ++compared;
    }
  }
  EXPECT_GT(compared, 20000);  // most (f, k) pairs are exact sums
}

TEST(Exp2Fma, EdgesOfTheDomain) {
  const float inf = std::numeric_limits<float>::infinity();
  // -inf and anything below the clamp give 2^-125 * p(0): tiny, positive, normal.
  const float at_clamp = exp2_fma(-125.f);
  EXPECT_EQ(exp2_fma(-inf), at_clamp);
  EXPECT_EQ(exp2_fma(-1000.f), at_clamp);
  EXPECT_EQ(exp2_fma(-125.4f), at_clamp);
  EXPECT_GT(at_clamp, 0.f);
  EXPECT_TRUE(std::isnormal(at_clamp));
  EXPECT_LE(at_clamp, std::ldexp(1.f, -124));
  // NaN propagates (a NaN score must stay visible in the output).
  EXPECT_TRUE(std::isnan(exp2_fma(std::numeric_limits<float>::quiet_NaN())));
  // The top of the domain: no overflow, no wrap of the exponent.
  EXPECT_LE(rel_error(64.f), kExp2FmaMaxRelError);
  EXPECT_TRUE(std::isfinite(exp2_fma(64.f)));
  // Values the softmax produces: 0 for the row maximum, up to its rescaling threshold above.
  for (float x : {0.f, -0.f, 1e-30f, -1e-30f, 8.f, 7.999f, -0.49999997f, 0.49999997f}) {
    EXPECT_LE(rel_error(x), kExp2FmaMaxRelError) << x;
  }
}

}  // namespace
