// Log-softmax over the vocabulary with a fixed segment tree, and the gather
// of a chosen token's log-probability.
//
// Contract: the vocabulary [0, V) is cut into kTreeLeaves = 8 segments,
// segment s = [s*V/8, (s+1)*V/8). Per segment, in index order:
//   m_s = max x_j;  z_s = sum_j expf(x_j - m_s)  (sequential adds).
// Two (m, z) pairs combine as  m = max(m_a, m_b),
//   z = z_a * expf(m_a - m) + z_b * expf(m_b - m),
// along the fixed tree of tree_reduce.h. Then lse = m + logf(z) and
// logprob_j = x_j - lse. A vocabulary-parallel rank owning whole segments
// computes its subtree with SegmentStats and the gathered stats combine with
// CombineSegmentStats to the same bits as the single-device call.
#ifndef LOCKSTEP_KERNELS_SOFTMAX_H_
#define LOCKSTEP_KERNELS_SOFTMAX_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"
#include "kernels/tree_reduce.h"

namespace lockstep::kernels {

// (max, sum of exp) of a set of logits.
struct SoftmaxStats {
  float max;
  float sum;
};

struct LogSoftmaxArgs {
  const float* logits = nullptr;   // [rows, vocab], row stride ld
  int64_t ld = 0;
  int64_t rows = 0;
  int64_t vocab = 0;
  const int32_t* targets = nullptr;  // [rows] or null; ids in [0, vocab)
  float* target_logprobs = nullptr;  // [rows]; written when targets != null
  float* logprobs = nullptr;         // [rows, vocab] row stride ld_out, or null
  int64_t ld_out = 0;
  float* lse = nullptr;              // [rows] log-sum-exp, or null
};

// Computes whichever outputs are non-null.
absl::Status LogSoftmax(const LogSoftmaxArgs& args, const ExecContext& ctx = {});

// A rank's subtree of segment stats: logits hold vocab columns
// [seg_begin*V/8, (seg_begin+seg_count)*V/8) of a vocabulary of size
// vocab_total (V). stats_out: [rows].
struct SegmentStatsArgs {
  const float* logits = nullptr;  // [rows, local vocab], row stride ld
  int64_t ld = 0;
  int64_t rows = 0;
  int64_t vocab_total = 0;
  int seg_begin = 0;
  int seg_count = kTreeLeaves;   // 1, 2, 4, 8, aligned
  SoftmaxStats* stats_out = nullptr;
};

absl::Status SegmentStats(const SegmentStatsArgs& args,
                          const ExecContext& ctx = {});

// Combines t gathered subtree stats ([t, rows], rank-major) into the
// log-sum-exp of each row: lse_out [rows].
absl::Status CombineSegmentStats(const SoftmaxStats* gathered, int t,
                                 int64_t rows, float* lse_out,
                                 const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_SOFTMAX_H_
