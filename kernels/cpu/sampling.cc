#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/threading.h"

namespace lockstep::kernels::cpu {
namespace {

int32_t ArgmaxRow(const float* x, int64_t vocab) {
  int64_t best = -1;
  for (int64_t j = 0; j < vocab; ++j) {
    if (std::isnan(x[j])) continue;
    if (best < 0 || x[j] > x[best]) best = j;
  }
  return static_cast<int32_t>(best < 0 ? 0 : best);
}

// Strict total order "value descending, ties lower index first", NaN values
// after every number. Being total, it makes every sort below deterministic.
struct Descending {
  const float* v;
  bool operator()(int32_t a, int32_t b) const {
    const bool na = std::isnan(v[a]);
    const bool nb = std::isnan(v[b]);
    if (na != nb) return nb;
    if (!na && v[a] != v[b]) return v[a] > v[b];
    return a < b;
  }
};

// Sorts `order` far enough to know the kept set and returns its size n: the
// first n entries of `order` are kept. `z` = x / T, `probs` is scratch.
int64_t KeptPrefix(const float* x, const float* z, int64_t vocab, int32_t top_k,
                   float top_p, std::vector<float>& probs,
                   std::vector<int32_t>& order) {
  const bool use_k = top_k > 0 && top_k < vocab;
  const int64_t k_limit = use_k ? top_k : vocab;
  std::iota(order.begin(), order.end(), 0);
  const Descending cmp{x};
  if (top_p >= 1.0f) {
    std::nth_element(order.begin(), order.begin() + (k_limit - 1), order.end(),
                     cmp);
    return k_limit;
  }
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < vocab; ++j) m = z[j] > m ? z[j] : m;
  float sum = 0.0f;
  for (int64_t j = 0; j < vocab; ++j) {
    probs[j] = std::exp(z[j] - m);
    sum = sum + probs[j];
  }
  for (int64_t j = 0; j < vocab; ++j) probs[j] = probs[j] / sum;
  // Probabilities never increase along the logit order, so the running sums
  // at each prefix length equal those of the probability order (equal values
  // only trade places): the prefix length is the one the contract defines.
  // A growing head is sorted until the sum reaches top_p; the order is total,
  // so the result never depends on the head size.
  int64_t sorted = 0;
  int64_t head = std::min<int64_t>(k_limit, 64);
  float cum = 0.0f;
  while (true) {
    std::partial_sort(order.begin() + sorted, order.begin() + head, order.end(),
                      cmp);
    for (int64_t i = sorted; i < head; ++i) {
      cum = cum + probs[order[i]];
      if (cum >= top_p) return i + 1;
    }
    if (head == k_limit) return k_limit;
    sorted = head;
    head = std::min<int64_t>(k_limit, head * 4);
  }
}

int32_t SampleRow(const float* x, int64_t vocab, const SamplingParams& sp,
                  int64_t position, std::vector<float>& z,
                  std::vector<float>& probs, std::vector<int32_t>& order,
                  std::vector<char>& kept) {
  if (sp.temperature == 0.0f) return ArgmaxRow(x, vocab);
  for (int64_t j = 0; j < vocab; ++j) z[j] = x[j] / sp.temperature;
  const bool filtered = (sp.top_k > 0 && sp.top_k < vocab) || sp.top_p < 1.0f;
  if (filtered) {
    const int64_t n =
        KeptPrefix(x, z.data(), vocab, sp.top_k, sp.top_p, probs, order);
    std::fill(kept.begin(), kept.end(), 0);
    for (int64_t i = 0; i < n; ++i) kept[order[i]] = 1;
  }
  const std::array<uint32_t, 2> key = {static_cast<uint32_t>(sp.seed),
                                       static_cast<uint32_t>(sp.seed >> 32)};
  const uint64_t pos = static_cast<uint64_t>(position);
  std::array<uint32_t, 4> words{};
  int64_t words_block = -1;
  int64_t best = -1;
  float best_key = 0.0f;
  for (int64_t j = 0; j < vocab; ++j) {
    if (filtered && !kept[j]) continue;
    // One Philox call serves four consecutive indices (counter word 2 is
    // j / 4); it is recomputed only when the block changes.
    if (j / 4 != words_block) {
      words_block = j / 4;
      words = Philox4x32(
          {static_cast<uint32_t>(pos), static_cast<uint32_t>(pos >> 32),
           static_cast<uint32_t>(words_block), 0u},
          key);
    }
    const float u = UniformFromWord(words[j % 4]);
    const float g = -std::log(-std::log(u));
    const float k = z[j] + g;
    if (std::isnan(k)) continue;
    if (best < 0 || k > best_key) {
      best = j;
      best_key = k;
    }
  }
  if (best >= 0) return static_cast<int32_t>(best);
  // Every kept key is NaN: fall back to the lowest kept index.
  for (int64_t j = 0; j < vocab; ++j) {
    if (!filtered || kept[j]) return static_cast<int32_t>(j);
  }
  return 0;
}

absl::Status CheckParams(const SamplingParams& sp, int64_t row) {
  if (!std::isfinite(sp.temperature) || sp.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: params[", row, "].temperature = ", sp.temperature,
                     " must be finite and >= 0"));
  }
  if (!(sp.top_p > 0.0f && sp.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Sample: params[", row, "].top_p = ", sp.top_p, " is not in (0, 1]"));
  }
  if (sp.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Sample: params[", row, "].top_k = ", sp.top_k, " < 0"));
  }
  return absl::OkStatus();
}

}  // namespace

float UniformFromWord(uint32_t w) {
  // 23 bits so that the bin centre (k + 0.5) * 2^-23 is exact in fp32; with
  // 24 bits the upper half would round, the top bin to 1.0 (log(1) = 0 gives
  // an infinite Gumbel key).
  return (static_cast<float>(w >> 9) + 0.5f) * 0x1p-23f;
}

absl::Status Sample(const SampleArgs& args) {
  for (int64_t r = 0; r < args.rows; ++r) {
    absl::Status s = CheckParams(args.params[r], r);
    if (!s.ok()) return s;
  }
  if (args.rows == 0) return absl::OkStatus();
  ParallelFor(args.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> z(args.vocab), probs(args.vocab);
    std::vector<int32_t> order(args.vocab);
    std::vector<char> kept(args.vocab);
    for (int64_t r = begin; r < end; ++r) {
      args.tokens_out[r] =
          SampleRow(args.logits + r * args.ld, args.vocab, args.params[r],
                    args.positions[r], z, probs, order, kept);
    }
  });
  return absl::OkStatus();
}

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out) {
  if (rows == 0) return absl::OkStatus();
  const int64_t grain = vocab >= 16384 ? 1 : 16384 / vocab;
  ParallelFor(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      tokens_out[r] = ArgmaxRow(logits + r * ld, vocab);
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
