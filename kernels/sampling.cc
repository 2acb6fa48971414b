#include "kernels/sampling.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/sampling.h"
#include "kernels/dispatch.h"
#include "kernels/sampling_math.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/sampling.h"
#endif

namespace lockstep::kernels {
namespace {

absl::Status CheckLogits(const char* op, const float* logits, int64_t ld,
                         int64_t rows, int64_t vocab, int64_t max_vocab) {
  if (rows < 0 || vocab <= 0 || vocab > max_vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": need rows >= 0 and vocab in [1, ", max_vocab, "], got rows=", rows,
        " vocab=", vocab));
  }
  if (rows > 0 && logits == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": logits must be non-null"));
  }
  if (rows > 0 && ld < vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ld=", ld, " < vocab=", vocab));
  }
  return absl::OkStatus();
}

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter,
                                   std::array<uint32_t, 2> key) {
  const sampling_math::Words4 w = sampling_math::Philox(
      counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
  return {w.w[0], w.w[1], w.w[2], w.w[3]};
}

double PhiloxUniform(uint64_t key, int64_t position, int64_t index) {
  return sampling_math::UniformFromBits(
      sampling_math::StreamBits(key, position, index));
}

uint64_t SampleStreamKey(uint64_t seed, uint64_t prompt_index,
                         uint64_t sample_index) {
  // Each stage adds the golden-ratio increment before mixing, so (0, 0, 0)
  // is not a fixed point and every input bit reaches every output bit.
  uint64_t h = Mix64(seed + 0x9E3779B97F4A7C15ull);
  h = Mix64(h ^ (prompt_index + 0x9E3779B97F4A7C15ull * 2));
  return Mix64(h ^ (sample_index + 0x9E3779B97F4A7C15ull * 3));
}

absl::Status CheckSamplingParams(const SamplingParams& sp, int64_t row) {
  if (!std::isfinite(sp.temperature) || sp.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: params[", row, "].temperature = ", sp.temperature,
                     " must be finite and >= 0"));
  }
  if (!(sp.top_p > 0.0f && sp.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Sample: params[", row, "].top_p = ", sp.top_p, " is not in (0, 1]"));
  }
  if (!(sp.min_p >= 0.0f && sp.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Sample: params[", row, "].min_p = ", sp.min_p, " is not in [0, 1]"));
  }
  if (sp.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: params[", row, "].top_k = ", sp.top_k, " < 0"));
  }
  return absl::OkStatus();
}

absl::Status CheckLogitAdjustment(const LogitAdjustment& e, int64_t vocab,
                                  int64_t row) {
  if (e.token < 0 || e.token >= vocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: row ", row, " adjusts token ", e.token,
                     " outside [0, ", vocab, ")"));
  }
  if (!std::isfinite(e.bias) || !std::isfinite(e.subtract) ||
      !std::isfinite(e.repetition) || !(e.repetition > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Sample: row ", row, " token ", e.token, " adjustment (bias ", e.bias,
        ", repetition ", e.repetition, ", subtract ", e.subtract,
        ") must be finite with repetition > 0"));
  }
  return absl::OkStatus();
}

absl::Status Sample(const SampleArgs& args, const ExecContext& ctx) {
  absl::Status s = CheckLogits("Sample", args.logits, args.ld, args.rows,
                               args.vocab, sampling_math::kMaxSampleVocab);
  if (!s.ok()) return s;
  if (args.rows == 0) return absl::OkStatus();
  if (args.params == nullptr) {
    return absl::InvalidArgumentError("Sample: params must be non-null");
  }
  if (args.targets == nullptr &&
      (args.positions == nullptr || args.tokens_out == nullptr)) {
    return absl::InvalidArgumentError(
        "Sample: sampling needs positions and tokens_out");
  }
  if (args.adjust_offsets == nullptr && args.adjustments != nullptr) {
    return absl::InvalidArgumentError("Sample: adjustments without adjust_offsets");
  }
  if (ctx.device == Device::kCuda && args.adjust_offsets != nullptr &&
      args.workspace == nullptr) {
    return absl::InvalidArgumentError(
        "Sample: adjustments on CUDA need a [rows, vocab] workspace");
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::Sample(args),
                           cuda::Sample(args, ctx.cuda_stream));
}

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out,
                    const ExecContext& ctx) {
  absl::Status s = CheckLogits("Argmax", logits, ld, rows, vocab,
                               std::numeric_limits<int32_t>::max());
  if (!s.ok()) return s;
  if (rows == 0) return absl::OkStatus();
  if (tokens_out == nullptr) {
    return absl::InvalidArgumentError("Argmax: tokens_out must be non-null");
  }
  return LOCKSTEP_DISPATCH(
      ctx, cpu::Argmax(logits, ld, rows, vocab, tokens_out),
      cuda::Argmax(logits, ld, rows, vocab, tokens_out, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
