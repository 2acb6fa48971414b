// What shapes the distribution a sample is drawn from, in one place for the
// rollout (which samples from it) and the learner (which scores the sampled
// tokens under it): the kernel parameters (temperature, top_k, top_p, min_p)
// and the history-dependent adjustments (logit bias, repetition / presence /
// frequency penalties, min_tokens), plus the stop conditions the engine
// applies. docs/sampling.md describes every field.
#ifndef LOCKSTEP_COMMON_SAMPLING_SAMPLING_SPEC_H_
#define LOCKSTEP_COMMON_SAMPLING_SAMPLING_SPEC_H_

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/sampling.h"

namespace lockstep::common {

// Limits of the sampling parameters (vLLM's where it has them).
inline constexpr float kMaxAbsLogitBias = 100.0f;  // values are clamped to it
inline constexpr float kMaxAbsPenalty = 2.0f;      // presence / frequency
inline constexpr int kMaxTopLogprobs = 20;
inline constexpr int kMaxStopSequences = 16;
inline constexpr int kMaxStopSequenceTokens = 64;
inline constexpr int kMaxLogitBiasEntries = 1024;

struct SamplingSpec {
  // temperature, top_k, top_p, min_p; `seed` is each sample's stream key,
  // filled in per sample (kernels::SampleStreamKey).
  kernels::SamplingParams params;
  float repetition_penalty = 1.0f;  // > 0; 1: off
  float presence_penalty = 0.0f;    // [-2, 2]
  float frequency_penalty = 0.0f;   // [-2, 2]
  // (id, bias) with distinct ids in ascending order, values in [-100, 100].
  std::vector<std::pair<int32_t, float>> logit_bias;
  int64_t min_tokens = 0;  // EOS (unless ignore_eos) and stop ids banned before
  // Tokens to generate per sample; 0: until a stop condition, the context
  // length or the KV-cache capacity.
  int64_t max_tokens = 0;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::vector<int32_t>> stop_sequences;  // matched on output ids
  bool ignore_eos = false;
  int top_logprobs = 0;  // raw alternatives per position, 0..20

  // True when some position may get a LogitAdjustment.
  bool adjusts() const;
};

// INVALID_ARGUMENT naming the bad field unless every value is in range for a
// model of `vocab` ids (see the limits above and kernels::CheckSamplingParams).
absl::Status CheckSamplingSpec(const SamplingSpec& spec, int64_t vocab);

// The adjustments of one sample, position by position: starts from the
// prompt, Append() each generated token, AppendAdjustments() gives the
// entries for the next token. The rollout and the learner build them with
// this class, so both apply the same floats to the same ids.
class LogitAdjuster {
 public:
  // `spec` and `eos_ids` must outlive the adjuster.
  LogitAdjuster(const SamplingSpec& spec, absl::Span<const int64_t> eos_ids,
                absl::Span<const int32_t> prompt);

  void Append(int32_t token);
  int64_t output_len() const { return output_len_; }

  // Appends the entries for the next token, in ascending token order, one per
  // affected id: bias (logit_bias), repetition (tokens of the prompt or the
  // output so far), subtract = frequency * count + presence (output tokens;
  // two fp32 roundings, in that order), banned (min_tokens not reached).
  void AppendAdjustments(std::vector<kernels::LogitAdjustment>* out) const;

 private:
  const SamplingSpec& spec_;
  std::vector<int32_t> banned_;  // EOS (unless ignore_eos) + stop ids, sorted
  std::unordered_set<int32_t> seen_;  // prompt and output ids (repetition)
  std::unordered_map<int32_t, int64_t> counts_;  // output ids
  int64_t output_len_ = 0;
};

// Per-row adjustments of a whole completion in kernels::SampleArgs layout:
// offsets [n + 1] and entries, row i for completion token i (given prompt and
// completion[0..i)).
struct RowAdjustments {
  std::vector<int64_t> offsets;
  std::vector<kernels::LogitAdjustment> entries;
};
RowAdjustments CompletionAdjustments(const SamplingSpec& spec,
                                     absl::Span<const int64_t> eos_ids,
                                     absl::Span<const int32_t> prompt,
                                     absl::Span<const int32_t> completion);

// Sampled-distribution logprobs of `completion` under `spec` from the host
// logits [completion.size(), vocab] of its positions (row i predicts
// completion[i]): kernels::Sample in scoring mode on the CPU.
absl::StatusOr<std::vector<float>> SampledLogprobs(
    const float* logits, int64_t vocab, const SamplingSpec& spec,
    absl::Span<const int64_t> eos_ids, absl::Span<const int32_t> prompt,
    absl::Span<const int32_t> completion);

// True when `output` ends with one of spec.stop_sequences.
bool EndsWithStopSequence(const SamplingSpec& spec,
                          absl::Span<const int32_t> output);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_SAMPLING_SAMPLING_SPEC_H_
