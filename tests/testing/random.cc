#include "tests/testing/random.h"

namespace lockstep::testing {

std::vector<float> RandomFloats(int64_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (auto& v : out) v = dist(rng);
  return out;
}

std::vector<int32_t> RandomInts(int64_t n, uint64_t seed, int32_t lo,
                                int32_t hi) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> out(n);
  for (auto& v : out) v = dist(rng);
  return out;
}

}  // namespace lockstep::testing
