#include "kernels/cpu/softmax.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/threading.h"
#include "kernels/tree_reduce.h"

namespace lockstep::kernels::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Rows per task so that one task touches at least ~16K logits.
int64_t RowGrain(int64_t n) { return n >= 16384 ? 1 : 16384 / n; }

// Stats of leaves [seg_begin, seg_begin + seg_count) of a row of vocab_total
// logits; `x` points at the first logit of leaf seg_begin.
SoftmaxStats SubtreeStats(const float* x, int64_t vocab_total, int seg_begin,
                          int seg_count) {
  SoftmaxStats leaves[kTreeLeaves];
  const int64_t origin = seg_begin * vocab_total / kTreeLeaves;
  for (int i = 0; i < seg_count; ++i) {
    const int64_t lo = (seg_begin + i) * vocab_total / kTreeLeaves;
    const int64_t hi = (seg_begin + i + 1) * vocab_total / kTreeLeaves;
    leaves[i] = LeafStats(x + (lo - origin), hi - lo);
  }
  return TreeStats(leaves, seg_count);
}

float Lse(SoftmaxStats s) { return s.max + std::log(s.sum); }

}  // namespace

SoftmaxStats LeafStats(const float* x, int64_t n) {
  float m = kNegInf;
  for (int64_t j = 0; j < n; ++j) m = x[j] > m ? x[j] : m;
  // All -inf (or empty): every term would be expf(-inf - -inf) = NaN, while
  // the true sum of exp over such a leaf is 0.
  if (m == kNegInf) return {kNegInf, 0.0f};
  float z = 0.0f;
  for (int64_t j = 0; j < n; ++j) z = z + std::exp(x[j] - m);
  return {m, z};
}

SoftmaxStats CombineStats(SoftmaxStats a, SoftmaxStats b) {
  const float m = a.max > b.max ? a.max : b.max;
  // A -inf side is an empty (or all -inf) leaf: its term is 0, and evaluating
  // it would give NaN when both sides are -inf.
  const float ta = a.max == kNegInf ? 0.0f : a.sum * std::exp(a.max - m);
  const float tb = b.max == kNegInf ? 0.0f : b.sum * std::exp(b.max - m);
  return {m, ta + tb};
}

SoftmaxStats TreeStats(const SoftmaxStats* leaves, int count) {
  SoftmaxStats level[kTreeLeaves];
  for (int i = 0; i < count; ++i) level[i] = leaves[i];
  for (int width = count; width > 1; width /= 2) {
    for (int i = 0; i < width / 2; ++i) {
      level[i] = CombineStats(level[2 * i], level[2 * i + 1]);
    }
  }
  return level[0];
}

absl::Status LogSoftmax(const LogSoftmaxArgs& args) {
  if (args.targets != nullptr) {
    for (int64_t r = 0; r < args.rows; ++r) {
      if (args.targets[r] < 0 || args.targets[r] >= args.vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("LogSoftmax: targets[", r, "] = ", args.targets[r],
                         " is outside [0, vocab=", args.vocab, ")"));
      }
    }
  }
  if (args.rows == 0) return absl::OkStatus();
  ParallelFor(args.rows, RowGrain(args.vocab), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = args.logits + r * args.ld;
      const float lse = Lse(SubtreeStats(x, args.vocab, 0, kTreeLeaves));
      if (args.lse != nullptr) args.lse[r] = lse;
      if (args.targets != nullptr) {
        args.target_logprobs[r] = x[args.targets[r]] - lse;
      }
      if (args.logprobs != nullptr) {
        float* out = args.logprobs + r * args.ld_out;
        for (int64_t j = 0; j < args.vocab; ++j) out[j] = x[j] - lse;
      }
    }
  });
  return absl::OkStatus();
}

absl::Status SegmentStats(const SegmentStatsArgs& args) {
  if (args.rows == 0) return absl::OkStatus();
  const int64_t local =
      (args.seg_begin + args.seg_count) * args.vocab_total / kTreeLeaves -
      args.seg_begin * args.vocab_total / kTreeLeaves;
  ParallelFor(args.rows, RowGrain(local > 0 ? local : 1),
              [&](int64_t begin, int64_t end) {
                for (int64_t r = begin; r < end; ++r) {
                  args.stats_out[r] =
                      SubtreeStats(args.logits + r * args.ld, args.vocab_total,
                                   args.seg_begin, args.seg_count);
                }
              });
  return absl::OkStatus();
}

absl::Status CombineSegmentStats(const SoftmaxStats* gathered, int t,
                                 int64_t rows, float* lse_out) {
  for (int64_t r = 0; r < rows; ++r) {
    SoftmaxStats leaves[kTreeLeaves];
    for (int i = 0; i < t; ++i) leaves[i] = gathered[i * rows + r];
    lse_out[r] = Lse(TreeStats(leaves, t));
  }
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
