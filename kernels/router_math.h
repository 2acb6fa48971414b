// One row of kernels/router.h's contract, written once for the CPU and the
// GPU (see sampling_math.h for why the exponential is the portable one).
#ifndef LOCKSTEP_KERNELS_ROUTER_MATH_H_
#define LOCKSTEP_KERNELS_ROUTER_MATH_H_

#include <cstdint>

#include "kernels/sampling_math.h"

namespace lockstep::kernels::router_math {

// The rank key of probability p: NaN ranks below every number (p >= 0).
LOCKSTEP_HD float RankKey(float p) { return p == p ? p : -1.0f; }

// True when expert a (probability pa) ranks before expert b (pb).
LOCKSTEP_HD bool RanksBefore(float pa, int64_t a, float pb, int64_t b) {
  const float ka = RankKey(pa), kb = RankKey(pb);
  return ka > kb || (ka == kb && a < b);
}

// Routes one row: x [experts] -> weights [k], ids [k], and probs [experts]
// when non-null. Selection by repeated scans (O(E k), no scratch): the r-th
// expert is the best one ranking after the (r-1)-th.
LOCKSTEP_HD void RouteRow(const float* x, int64_t experts, int64_t k, bool normalize,
                          float* weights, int32_t* ids, float* probs) {
  float m = x[0];
  for (int64_t j = 1; j < experts; ++j) m = x[j] > m || m != m ? x[j] : m;
  double z = 0.0;
  for (int64_t j = 0; j < experts; ++j) {
    z += sampling_math::PortableExpNonPositive(static_cast<double>(x[j]) - m);
  }
  auto prob = [&](int64_t j) {
    return static_cast<float>(
        sampling_math::PortableExpNonPositive(static_cast<double>(x[j]) - m) / z);
  };
  if (probs != nullptr) {
    for (int64_t j = 0; j < experts; ++j) probs[j] = prob(j);
  }
  float prev_p = 0.0f;
  int64_t prev = -1;
  for (int64_t r = 0; r < k; ++r) {
    int64_t best = -1;
    float best_p = 0.0f;
    for (int64_t j = 0; j < experts; ++j) {
      const float p = probs != nullptr ? probs[j] : prob(j);
      if (prev >= 0 && !RanksBefore(prev_p, prev, p, j)) continue;  // already taken
      if (best < 0 || RanksBefore(p, j, best_p, best)) {
        best = j;
        best_p = p;
      }
    }
    ids[r] = static_cast<int32_t>(best);
    weights[r] = best_p;
    prev = best;
    prev_p = best_p;
  }
  if (normalize) {
    float s = weights[0];
    for (int64_t r = 1; r < k; ++r) s = s + weights[r];
    for (int64_t r = 0; r < k; ++r) weights[r] = weights[r] / s;
  }
}

}  // namespace lockstep::kernels::router_math

#endif  // LOCKSTEP_KERNELS_ROUTER_MATH_H_
