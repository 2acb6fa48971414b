#include "learner_service/mismatch.h"

#include <algorithm>
#include <cmath>

namespace lockstep::learner {

double MismatchStats::kl_k3() const {
  return tokens_compared == 0 ? 0.0
                              : sum_kl_k3 / static_cast<double>(tokens_compared);
}

double MismatchStats::mean_abs_diff() const {
  return tokens_compared == 0
             ? 0.0
             : sum_abs_diff / static_cast<double>(tokens_compared);
}

double MismatchStats::exact_fraction() const {
  return tokens_compared == 0
             ? 1.0
             : static_cast<double>(tokens_compared - tokens_mismatched) /
                   static_cast<double>(tokens_compared);
}

void MismatchStats::Merge(const MismatchStats& other) {
  tokens_compared += other.tokens_compared;
  tokens_mismatched += other.tokens_mismatched;
  tokens_stale += other.tokens_stale;
  max_abs_diff = std::max(max_abs_diff, other.max_abs_diff);
  sum_abs_diff += other.sum_abs_diff;
  sum_kl_k3 += other.sum_kl_k3;
  for (size_t i = 0; i < bucket_counts.size(); ++i) {
    bucket_counts[i] += other.bucket_counts[i];
  }
  overflow += other.overflow;
}

void CompareLogprobs(const float* learner, const float* rollout, int64_t n,
                     MismatchStats* stats) {
  for (int64_t i = 0; i < n; ++i) {
    ++stats->tokens_compared;
    const double a = learner[i];
    const double b = rollout[i];
    const bool equal = learner[i] == rollout[i];
    if (!equal) ++stats->tokens_mismatched;
    // Exact tokens contribute exactly 0 (no rounding noise from exp/log).
    const double diff = equal ? 0.0 : std::fabs(a - b);
    if (std::isnan(diff)) {
      ++stats->overflow;
      stats->max_abs_diff = diff;  // NaN poisons the max: visibly broken
      continue;
    }
    if (!std::isnan(stats->max_abs_diff)) {
      stats->max_abs_diff = std::max(stats->max_abs_diff, diff);
    }
    stats->sum_abs_diff += diff;
    if (!equal) {
      // k3 = r - 1 - log r with log r = a - b; expm1 keeps it accurate (and
      // >= 0) for tiny differences.
      const double log_r = a - b;
      stats->sum_kl_k3 += std::expm1(log_r) - log_r;
    }
    size_t k = 0;
    while (k < kAbsDiffBucketBounds.size() && diff > kAbsDiffBucketBounds[k]) {
      ++k;
    }
    if (k < kAbsDiffBucketBounds.size()) {
      ++stats->bucket_counts[k];
    } else {
      ++stats->overflow;
    }
  }
}

}  // namespace lockstep::learner
