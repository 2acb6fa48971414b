// Seeded random test data.
#ifndef LOCKSTEP_TESTS_TESTING_RANDOM_H_
#define LOCKSTEP_TESTS_TESTING_RANDOM_H_

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace lockstep::testing {

// n floats uniform in [lo, hi), deterministic for `seed`.
std::vector<float> RandomFloats(int64_t n, uint64_t seed, float lo = -1.0f,
                                float hi = 1.0f);

// n ints uniform in [lo, hi], deterministic for `seed`.
std::vector<int32_t> RandomInts(int64_t n, uint64_t seed, int32_t lo,
                                int32_t hi);

// True when the two buffers hold identical bytes.
template <typename T>
bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

}  // namespace lockstep::testing

#endif  // LOCKSTEP_TESTS_TESTING_RANDOM_H_
