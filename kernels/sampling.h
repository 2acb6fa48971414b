// Batch-invariant sampling. A row's token and logprobs depend only on its
// logits, its parameters, its adjustments, its stream key and its position --
// never on the batch or the device: the arithmetic is kernels/sampling_math.h
// on the CPU and on the GPU alike.
//
// The sampling distribution of a row (the one the token is drawn from and
// whose logprob is reported as "sampled"), with x the row's fp32 logits:
//  1. adjusted logits a = x with the row's LogitAdjustments applied (logit
//     bias, repetition / frequency / presence penalties, min_tokens bans);
//  2. temperature below kMinSamplingTemperature (0 included): greedy, token = lowest index of the maximal a (NaN never
//     wins unless every entry is NaN: then 0), sampled logprob 0;
//  3. z = a / T (fp32 division, clamped to +-FLT_MAX). Candidates: entries
//     with a neither NaN nor -inf, in the order O = "a descending, ties lower
//     index first" (no candidate: the greedy token, sampled logprob -inf);
//  4. min_p > 0: keep z_j - z_max >= log(min_p) (in double);
//  5. 0 < top_k: keep the first top_k of what is left (in the order O);
//  6. top_p < 1: masses m_j = floor(e^(z_j - z_max) * 2^44) (integers, so
//     sums are exact); keep the shortest prefix (in O) of what is left whose
//     mass reaches ceil(top_p * total), at least one entry;
//  7. token = argmax over the kept set K of z_j + g_j in double, ties lower
//     index; g_j = -log(-log u_j), u_j a 52-bit uniform of Philox4x32-10
//     with key = params.seed (the sample's stream key) and counter
//     (position, j / 2);
//  8. sampled logprob of a token t in K: (z_t - z_max) - log(sum_K m / 2^44)
//     in double, rounded once to fp32; -inf for t outside K.
// Every step is a prefix of O, so the kept set is {j : j at or before
// last_kept in O}, which the learner turns into a mask.
#ifndef LOCKSTEP_KERNELS_SAMPLING_H_
#define LOCKSTEP_KERNELS_SAMPLING_H_

#include <array>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"

namespace lockstep::kernels {

// Philox4x32 with 10 rounds (Salmon et al. 2011): counter, key -> 4 words.
std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter,
                                   std::array<uint32_t, 2> key);

// The uniform (in (0, 1), 52 random bits, exact in double) that drives
// vocabulary entry `index` at `position` of the stream `key` (step 7).
double PhiloxUniform(uint64_t key, int64_t position, int64_t index);

// Stream key of sample `sample_index` of prompt `prompt_index` of a request
// seeded `seed`: a 64-bit mix (SplitMix64's finaliser, chained) of the three,
// so streams of different (seed, prompt, sample) never coincide by
// arithmetic accident (as seed + i * n + j did).
uint64_t SampleStreamKey(uint64_t seed, uint64_t prompt_index,
                         uint64_t sample_index);

// Temperatures below this (as vLLM's 1e-5) sample greedily.
inline constexpr float kMinSamplingTemperature = 1e-5f;

// Per-row sampling parameters (the adjustments are separate: they are
// sparse and depend on the row's history).
struct SamplingParams {
  float temperature = 1.0f;  // >= 0, finite; 0: greedy
  int32_t top_k = 0;         // >= 0; 0: off
  float top_p = 1.0f;        // in (0, 1]; 1: off
  float min_p = 0.0f;        // in [0, 1]; 0: off
  uint64_t seed = 0;         // the stream key (SampleStreamKey)
};

// One adjusted vocabulary entry of a row: a = x + bias, then, when
// repetition != 1, a = a > 0 ? a / repetition : a * repetition, then
// a = a - subtract; banned entries become -inf. Built on the host
// (LogitAdjuster) identically for the rollout and the learner.
struct LogitAdjustment {
  int32_t token = 0;
  float bias = 0.0f;
  float repetition = 1.0f;
  float subtract = 0.0f;
  int32_t banned = 0;
};

// INVALID_ARGUMENT naming params[row] unless every field is in range.
absl::Status CheckSamplingParams(const SamplingParams& params, int64_t row);

// INVALID_ARGUMENT naming row `row` unless the entry's token is in
// [0, vocab), its values finite and repetition > 0.
absl::Status CheckLogitAdjustment(const LogitAdjustment& adjustment,
                                  int64_t vocab, int64_t row);

struct SampleArgs {
  const float* logits = nullptr;        // [rows, vocab], row stride ld
  int64_t ld = 0;
  int64_t rows = 0;
  int64_t vocab = 0;                    // <= 2^19
  const SamplingParams* params = nullptr;  // [rows]
  const int64_t* positions = nullptr;   // [rows] RNG counter (position of the
                                        // token being sampled)
  // Optional adjustments: row r owns entries [adjust_offsets[r],
  // adjust_offsets[r + 1]) of `adjustments`, tokens in [0, vocab), strictly
  // ascending within a row.
  const int64_t* adjust_offsets = nullptr;     // [rows + 1] or null
  const LogitAdjustment* adjustments = nullptr;  // [adjust_offsets[rows]];
                                                 // may be null when 0
  // CUDA only, required when adjustments are given: [rows, vocab] fp32
  // workspace for the adjusted rows.
  float* workspace = nullptr;
  // Given: score these tokens instead of sampling (tokens_out may be null).
  const int32_t* targets = nullptr;     // [rows] or null
  int32_t* tokens_out = nullptr;        // [rows] (required when sampling)
  float* logprobs_out = nullptr;        // [rows] sampled logprob, or null
  int32_t* last_kept_out = nullptr;     // [rows] last kept index in O (the
                                        // greedy token at T = 0), or null
};

// Runs steps 1-8 for every row. INVALID_ARGUMENT on T < 0 or non-finite,
// top_p outside (0, 1], min_p outside [0, 1], top_k < 0, NaN parameters,
// vocab > 2^19, adjustment tokens outside [0, vocab) or not strictly
// ascending in their row, non-finite adjustment values, adjustments null
// while a row has entries, targets outside [0, vocab).
absl::Status Sample(const SampleArgs& args, const ExecContext& ctx = {});

// tokens_out[i] = lowest j with x_j maximal (NaN never wins unless all are).
absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out,
                    const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_SAMPLING_H_
