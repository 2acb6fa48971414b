#include "kernels/sampling.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/sampling.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/sampling.h"
#endif

namespace lockstep::kernels {
namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

absl::Status CheckLogits(const char* op, const float* logits, int64_t ld,
                         int64_t rows, int64_t vocab) {
  if (rows < 0 || vocab <= 0 || vocab > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": need rows >= 0 and vocab in [1, 2^31), got rows=", rows,
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

}  // namespace

std::array<uint32_t, 4> Philox4x32(std::array<uint32_t, 4> counter,
                                   std::array<uint32_t, 2> key) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += kPhiloxW0;
      key[1] += kPhiloxW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * counter[0];
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * counter[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32);
    const uint32_t lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32);
    const uint32_t lo1 = static_cast<uint32_t>(p1);
    counter = {hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0};
  }
  return counter;
}

float PhiloxUniform(uint64_t seed, int64_t position, int64_t index) {
  const uint64_t pos = static_cast<uint64_t>(position);
  const std::array<uint32_t, 4> words = Philox4x32(
      {static_cast<uint32_t>(pos), static_cast<uint32_t>(pos >> 32),
       static_cast<uint32_t>(index / 4), 0u},
      {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  return cpu::UniformFromWord(words[index % 4]);
}

absl::Status Sample(const SampleArgs& args, const ExecContext& ctx) {
  absl::Status s =
      CheckLogits("Sample", args.logits, args.ld, args.rows, args.vocab);
  if (!s.ok()) return s;
  if (args.rows == 0) return absl::OkStatus();
  if (args.params == nullptr || args.positions == nullptr ||
      args.tokens_out == nullptr) {
    return absl::InvalidArgumentError(
        "Sample: params, positions and tokens_out must be non-null");
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::Sample(args),
                           cuda::Sample(args, ctx.cuda_stream));
}

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out,
                    const ExecContext& ctx) {
  absl::Status s = CheckLogits("Argmax", logits, ld, rows, vocab);
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
