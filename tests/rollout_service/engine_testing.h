// What the engine tests share: a sample's collected output, bitwise
// comparison, and waiting for a request's handle.
#ifndef LOCKSTEP_TESTS_ROLLOUT_SERVICE_ENGINE_TESTING_H_
#define LOCKSTEP_TESTS_ROLLOUT_SERVICE_ENGINE_TESTING_H_

#include <cstdint>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "rollout_service/engine.h"

namespace lockstep::rollout::testing {

// Everything a sample's updates carried, concatenated.
struct Output {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;  // raw
  std::vector<float> sampled;   // under the sampling distribution
  std::vector<uint64_t> versions;
  std::vector<TopList> top;
  FinishReason finish = FinishReason::kNone;
  int preemptions = 0;
};

inline bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Same tokens, raw and sampled logprob bits, versions and finish reason.
inline bool Same(const Output& a, const Output& b) {
  return a.tokens == b.tokens && SameBits(a.logprobs, b.logprobs) &&
         SameBits(a.sampled, b.sampled) && a.versions == b.versions && a.finish == b.finish;
}

// Waits for the handle and returns its per-sample outputs (or its error);
// `received` are updates already taken from the handle, counted first.
inline absl::StatusOr<std::vector<Output>> Collect(RequestHandle& h,
                                                   std::vector<SampleUpdate> received = {}) {
  std::vector<Output> out(h.num_samples());
  std::vector<SampleUpdate> updates = std::move(received);
  for (bool done = false; !done;) {
    done = h.Wait(absl::Milliseconds(100), &updates);
    for (SampleUpdate& u : updates) {
      Output& o = out.at(u.sample);
      o.tokens.insert(o.tokens.end(), u.tokens.begin(), u.tokens.end());
      o.logprobs.insert(o.logprobs.end(), u.logprobs.begin(), u.logprobs.end());
      o.sampled.insert(o.sampled.end(), u.sampled_logprobs.begin(), u.sampled_logprobs.end());
      o.versions.insert(o.versions.end(), u.versions.begin(), u.versions.end());
      o.top.insert(o.top.end(), u.top.begin(), u.top.end());
      if (u.finish != FinishReason::kNone) o.finish = u.finish;
      o.preemptions = u.preemptions;
    }
    updates.clear();
  }
  if (!h.status().ok()) return h.status();
  return out;
}

inline std::vector<int32_t> RandomPrompt(std::mt19937& rng, int len) {
  std::vector<int32_t> p(len);
  for (auto& t : p) t = static_cast<int32_t>(rng() % 64);
  return p;
}

}  // namespace lockstep::rollout::testing

#endif  // LOCKSTEP_TESTS_ROLLOUT_SERVICE_ENGINE_TESTING_H_
