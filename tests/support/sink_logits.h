// sink_logits.h: attention-sink values (flashlane/problem.h, learnable_sink) for the tests, one
// logit per query head, chosen so that every kind of sink is exercised.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace flashlane::test_support {

/// Sink logits for `heads` query heads. With at least 3 heads, head 0 gets `dominant` (far above
/// every score of unit-variance inputs: its rows' O is close to 0 and their LSE close to the
/// sink) and head 1 gets -30 (no effect); every other head is uniform in [lo, hi], around a
/// row's LSE for random inputs. Seeded: the same values on every platform.
inline std::vector<float> sink_logits(int64_t heads, uint64_t seed, float lo = -1.f,
                                      float hi = 8.f, float dominant = 40.f) {
  std::vector<float> v(static_cast<size_t>(heads > 0 ? heads : 0));
  std::mt19937_64 rng(seed ^ 0x5157u);
  for (float& s : v) s = lo + (hi - lo) * static_cast<float>((rng() >> 40) * 0x1.0p-24);
  if (heads >= 3) {
    v[0] = dominant;
    v[1] = -30.f;
  }
  return v;
}

}  // namespace flashlane::test_support
