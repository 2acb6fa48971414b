// A stand-in common::Model for engine tests: logits are a hash of the whole
// token prefix as read back from the paged KV cache, so any paging mistake
// (wrong slot, wrong block table, a page shared that should not be, K/V
// computed by other weights) changes the logits or fails the forward. Batch
// invariant by construction; Score computes the same values
// straight from the token sequence.
#ifndef LOCKSTEP_TESTS_ROLLOUT_SERVICE_FAKE_MODEL_H_
#define LOCKSTEP_TESTS_ROLLOUT_SERVICE_FAKE_MODEL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/model/model.h"

namespace lockstep::rollout::testing {

struct FakeModelOptions {
  int64_t vocab = 64;
  int64_t max_position = 512;
  // Identifies the weights: K/V written by one FakeModel and read by one
  // with another `weights` id fail the forward (a mixed-version token).
  uint64_t weights = 1;
  // Slows each Forward down (to hold requests in flight in tests).
  int64_t forward_sleep_us = 0;
  // Slows each Score call down (one piece of a ComputeLogprobs request).
  int64_t score_sleep_us = 0;
};

class FakeModel : public common::Model {
 public:
  explicit FakeModel(const FakeModelOptions& options);

  const common::ModelConfig& config() const override { return config_; }
  const common::ModelOptions& options() const override { return options_; }
  int64_t KvBytesPerPage(int64_t page_size) const override {
    return page_size * 16;
  }
  absl::StatusOr<std::unique_ptr<common::KvCache>> CreateKvCache(
      int64_t num_pages, int64_t page_size) const override;
  absl::StatusOr<std::vector<float>> StepLogits(
      const common::ForwardBatch& batch, common::KvCache* cache) const override;
  absl::StatusOr<std::vector<std::vector<float>>> SequenceLogits(
      const std::vector<std::vector<int32_t>>& sequences) const override;
  absl::StatusOr<std::vector<std::vector<float>>> Score(
      const std::vector<std::vector<int32_t>>& sequences,
      const std::vector<int64_t>& prefix_lens) const override;
  const common::TensorMap& tensors() const override { return tensors_; }

  // Forward calls so far and the largest batch (tokens) seen.
  int64_t forward_calls() const { return forward_calls_.load(); }
  int64_t max_batch_tokens_seen() const { return max_tokens_.load(); }

  // Logits [vocab] following a prefix whose running hash is `h`.
  void LogitsFor(uint64_t h, float* out) const;
  // Running hash after appending (token, position).
  static uint64_t Mix(uint64_t h, int32_t token, int64_t position);

 private:
  FakeModelOptions fake_;
  common::ModelConfig config_;
  common::ModelOptions options_;
  common::TensorMap tensors_;
  mutable std::atomic<int64_t> forward_calls_{0};
  mutable std::atomic<int64_t> max_tokens_{0};
};

}  // namespace lockstep::rollout::testing

#endif  // LOCKSTEP_TESTS_ROLLOUT_SERVICE_FAKE_MODEL_H_
