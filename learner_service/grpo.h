// GRPO's group-relative advantages and the reward statistics of a batch
// (plain C++; the clipped policy loss itself lives in the trainer).
#ifndef LOCKSTEP_LEARNER_SERVICE_GRPO_H_
#define LOCKSTEP_LEARNER_SERVICE_GRPO_H_

#include <cstdint>
#include <string>
#include <vector>

namespace lockstep::learner {

struct AdvantageOptions {
  // Divide (reward - group mean) by the group's standard deviation (GRPO as
  // published). False gives Dr. GRPO's unscaled advantages.
  bool scale_by_std = true;
  // Added to the standard deviation before dividing.
  double epsilon = 1e-6;
};

// Advantage of every trajectory: A_i = (r_i - mean_g) / (std_g + epsilon)
// over the trajectories of its group g (population std, i.e. divided by the
// group size). `group_of[i]` is the group index of trajectory i (any
// integers; only equality matters). A group of one, or a group whose rewards
// are all equal, gets advantage 0 for every member. Computed in double, in
// index order, so the result depends only on the inputs.
std::vector<float> GroupRelativeAdvantages(const std::vector<float>& rewards,
                                           const std::vector<int64_t>& group_of,
                                           const AdvantageOptions& options);

// Dense group indices 0..G-1 of string group ids, numbered by first
// appearance.
std::vector<int64_t> GroupIndices(const std::vector<std::string>& group_ids);

// Mean, population standard deviation, minimum and maximum of a batch's
// rewards (all zero for an empty batch).
struct RewardStats {
  double mean = 0.0;
  double std = 0.0;
  double min = 0.0;
  double max = 0.0;
};
RewardStats ComputeRewardStats(const std::vector<float>& rewards);

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_GRPO_H_
