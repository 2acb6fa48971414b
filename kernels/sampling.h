// Batch-invariant sampling: Gumbel-max with a counter-based RNG (Philox4x32-10)
// keyed by (request seed, position), and greedy argmax with a fixed tie rule.
// A row's token depends only on its logits, its parameters, its seed and its
// position — never on the batch.
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

// Uniform in (0, 1) for vocabulary index `index` at sequence position
// `position` of a request with `seed`: key = seed (lo, hi words); counter =
// (position lo, position hi, index / 4, 0); w = word index % 4;
// u = ((w >> 9) + 0.5) * 2^-23 (23 bits: exact in fp32 and never 0 or 1;
// with 24 bits, (k + 0.5) * 2^-24 rounds in fp32 and the top bin becomes 1).
float PhiloxUniform(uint64_t seed, int64_t position, int64_t index);

// Per-row sampling parameters.
struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy argmax; > 0: Gumbel-max sampling
  int32_t top_k = 0;         // 0: off; else keep the k largest logits
                             // (ties: lower index first)
  float top_p = 1.0f;        // in (0, 1]; keep the smallest prefix of the
                             // descending order whose probability mass
                             // (at this temperature) reaches top_p
  uint64_t seed = 0;
};

struct SampleArgs {
  const float* logits = nullptr;        // [rows, vocab], row stride ld
  int64_t ld = 0;
  int64_t rows = 0;
  int64_t vocab = 0;
  const SamplingParams* params = nullptr;  // [rows]
  const int64_t* positions = nullptr;   // [rows] position of the token being
                                        // sampled (the RNG counter)
  int32_t* tokens_out = nullptr;        // [rows]
};

// token = argmax_j (x_j / T + g_j) over the kept set, g_j = -log(-log(u_j)),
// u_j = PhiloxUniform(seed, position, j); ties -> lowest index. temperature 0
// -> Argmax. INVALID_ARGUMENT on T < 0, top_p outside (0, 1], top_k < 0 or
// NaN parameters.
absl::Status Sample(const SampleArgs& args, const ExecContext& ctx = {});

// tokens_out[i] = lowest j with x_j maximal (NaN never wins unless all are).
absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out,
                    const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_SAMPLING_H_
