#include "learner_service/grpo.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace lockstep::learner {

std::vector<float> GroupRelativeAdvantages(const std::vector<float>& rewards,
                                           const std::vector<int64_t>& group_of,
                                           const AdvantageOptions& options) {
  struct Acc {
    double sum = 0.0;
    double sum_sq_dev = 0.0;
    int64_t n = 0;
    double mean = 0.0;
  };
  std::map<int64_t, Acc> groups;
  for (size_t i = 0; i < rewards.size(); ++i) {
    Acc& g = groups[group_of[i]];
    g.sum += rewards[i];
    ++g.n;
  }
  for (auto& [id, g] : groups) g.mean = g.sum / static_cast<double>(g.n);
  // Two passes (mean, then squared deviations) rather than sum of squares:
  // no cancellation when all rewards are equal, so such groups get exactly 0.
  for (size_t i = 0; i < rewards.size(); ++i) {
    Acc& g = groups[group_of[i]];
    const double d = rewards[i] - g.mean;
    g.sum_sq_dev += d * d;
  }
  std::vector<float> adv(rewards.size(), 0.0f);
  for (size_t i = 0; i < rewards.size(); ++i) {
    const Acc& g = groups[group_of[i]];
    if (g.n < 2) continue;
    const double d = rewards[i] - g.mean;
    if (d == 0.0) continue;
    double a = d;
    if (options.scale_by_std) {
      const double sd = std::sqrt(g.sum_sq_dev / static_cast<double>(g.n));
      a = d / (sd + options.epsilon);
    }
    adv[i] = static_cast<float>(a);
  }
  return adv;
}

std::vector<int64_t> GroupIndices(const std::vector<std::string>& group_ids) {
  std::map<std::string, int64_t> index;
  std::vector<int64_t> out;
  out.reserve(group_ids.size());
  for (const std::string& id : group_ids) {
    auto [it, inserted] =
        index.emplace(id, static_cast<int64_t>(index.size()));
    out.push_back(it->second);
  }
  return out;
}

RewardStats ComputeRewardStats(const std::vector<float>& rewards) {
  RewardStats s;
  if (rewards.empty()) return s;
  double sum = 0.0;
  s.min = rewards[0];
  s.max = rewards[0];
  for (float r : rewards) {
    sum += r;
    s.min = std::min<double>(s.min, r);
    s.max = std::max<double>(s.max, r);
  }
  s.mean = sum / static_cast<double>(rewards.size());
  double ss = 0.0;
  for (float r : rewards) ss += (r - s.mean) * (r - s.mean);
  s.std = std::sqrt(ss / static_cast<double>(rewards.size()));
  return s;
}

}  // namespace lockstep::learner
