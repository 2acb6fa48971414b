// Mismatch accounting between the learner's and the rollout's logprob of the
// same token: the evidence that training is really on-policy.
//
// Only tokens generated with the learner's current weight version are
// compared; tokens of older versions are "stale" (counted, never compared:
// their difference is policy lag, not numerics).
#ifndef LOCKSTEP_LEARNER_SERVICE_MISMATCH_H_
#define LOCKSTEP_LEARNER_SERVICE_MISMATCH_H_

#include <array>
#include <cstdint>

namespace lockstep::learner {

// Upper bounds of the lockstep_logprob_abs_diff histogram buckets. The first
// bucket, le="0", holds exactly the bit-identical tokens.
inline constexpr std::array<double, 9> kAbsDiffBucketBounds = {
    0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};

// Counts and moments of a set of compared tokens. Mergeable.
struct MismatchStats {
  int64_t tokens_compared = 0;    // tokens whose versions matched
  int64_t tokens_mismatched = 0;  // of those, the ones whose logprobs differ
  int64_t tokens_stale = 0;       // tokens of an older weight version
  double max_abs_diff = 0.0;      // max |lp_learner - lp_rollout|
  double sum_abs_diff = 0.0;      // sum of |lp_learner - lp_rollout|
  double sum_kl_k3 = 0.0;         // sum of the per-token k3 estimator
  // Non-cumulative counts per bucket of kAbsDiffBucketBounds (a token lands
  // in the first bucket whose bound is >= its |diff|); diffs above the last
  // bound (or NaN) go to `overflow`.
  std::array<int64_t, kAbsDiffBucketBounds.size()> bucket_counts{};
  int64_t overflow = 0;

  // Mean k3 estimate of KL(rollout || learner) over the compared tokens:
  // with r = exp(lp_learner - lp_rollout), k3 = r - 1 - log r (>= 0, exactly
  // 0 for identical logprobs). 0 when nothing was compared.
  double kl_k3() const;
  // Mean |diff| over the compared tokens (0 when none).
  double mean_abs_diff() const;
  // Fraction of compared tokens that are bit-identical (1 when none).
  double exact_fraction() const;

  void Merge(const MismatchStats& other);
};

// Compares `n` learner logprobs with the rollout's and adds them to `stats`.
// A token is mismatched when the two floats differ (either NaN counts as a
// difference). Pointers: learner [n], rollout [n].
void CompareLogprobs(const float* learner, const float* rollout, int64_t n,
                     MismatchStats* stats);

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_MISMATCH_H_
