// Log-softmax with the fixed vocabulary-segment tree of softmax.h.
//
// One row per block of a constant 1024 threads: 8 groups of 128 threads, group
// s owning segment s = [s*V/8, (s+1)*V/8). Inside a segment, thread t takes
// the elements t, t+128, ... of the segment (offsets from the segment start):
// max first, then sum of expf(x - m_s) in that order; the 128 partial sums
// combine by a fixed butterfly/pairwise tree. The element -> thread map is
// relative to the segment start, so a vocabulary-parallel rank holding whole
// segments (SegmentStats) computes each segment's (m, z) with the same bits
// as the single-device LogSoftmax; segments then combine by the tree of
// tree_reduce.h, lower levels on the rank, top levels in CombineSegmentStats.
#include "kernels/cuda/softmax.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kSegThreads = 128;
constexpr int kThreads = kSegThreads * kTreeLeaves;  // 1024
constexpr int kSegWarps = kSegThreads / 32;

__device__ __forceinline__ float NegInf() { return -__int_as_float(0x7f800000); }

__device__ __forceinline__ SoftmaxStats Combine(SoftmaxStats a,
                                                SoftmaxStats b) {
  const float m = a.max > b.max ? a.max : b.max;
  const float ta =
      a.max == NegInf() ? 0.0f : __fmul_rn(a.sum, expf(__fsub_rn(a.max, m)));
  const float tb =
      b.max == NegInf() ? 0.0f : __fmul_rn(b.sum, expf(__fsub_rn(b.max, m)));
  return {m, __fadd_rn(ta, tb)};
}

// Level-by-level pairs, left operand first (TreeStats of the CPU path).
__device__ __forceinline__ SoftmaxStats TreeOf(SoftmaxStats* v, int count) {
  for (int width = count; width > 1; width /= 2) {
    for (int i = 0; i < width / 2; ++i) v[i] = Combine(v[2 * i], v[2 * i + 1]);
  }
  return v[0];
}

// Stats of the segments [seg_begin, seg_begin + seg_count) of one row whose
// first element (global column origin) is at `x`. Every thread of the block
// calls it; returns the subtree stats to every thread.
__device__ SoftmaxStats RowSubtreeStats(const float* x, int64_t vocab_total,
                                        int seg_begin, int seg_count,
                                        float* warp_scratch,
                                        SoftmaxStats* seg_stats) {
  const int group = threadIdx.x / kSegThreads;
  const int t = threadIdx.x % kSegThreads;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t origin = seg_begin * vocab_total / kTreeLeaves;
  const bool live = group < seg_count;
  int64_t lo = 0;
  int64_t len = 0;
  if (live) {
    lo = (seg_begin + group) * vocab_total / kTreeLeaves - origin;
    len = (seg_begin + group + 1) * vocab_total / kTreeLeaves - origin - lo;
  }
  const float* seg = x + lo;
  float mx = NegInf();
  for (int64_t j = t; j < len; j += kSegThreads) {
    const float v = seg[j];
    mx = v > mx ? v : mx;
  }
  mx = WarpMax(mx);
  if (lane == 0) warp_scratch[warp] = mx;
  __syncthreads();
  float m = warp_scratch[group * kSegWarps];
#pragma unroll
  for (int i = 1; i < kSegWarps; ++i) {
    const float o = warp_scratch[group * kSegWarps + i];
    m = o > m ? o : m;
  }
  __syncthreads();
  float z = 0.0f;
  if (m != NegInf()) {
    for (int64_t j = t; j < len; j += kSegThreads) {
      z = __fadd_rn(z, expf(__fsub_rn(seg[j], m)));
    }
  }
  z = WarpSumFixed(z);
  if (lane == 0) warp_scratch[warp] = z;
  __syncthreads();
  if (t == 0 && live) {
    const float* ws = warp_scratch + group * kSegWarps;
    const float sum = __fadd_rn(__fadd_rn(ws[0], ws[1]), __fadd_rn(ws[2], ws[3]));
    seg_stats[group] = m == NegInf() ? SoftmaxStats{m, 0.0f} : SoftmaxStats{m, sum};
  }
  __syncthreads();
  SoftmaxStats v[kTreeLeaves];
  for (int i = 0; i < seg_count; ++i) v[i] = seg_stats[i];
  const SoftmaxStats r = TreeOf(v, seg_count);
  __syncthreads();
  return r;
}

struct LogSoftmaxParams {
  const float* logits;
  int64_t ld;
  int64_t rows;
  int64_t vocab;
  const int32_t* targets;
  float* target_logprobs;
  float* logprobs;
  int64_t ld_out;
  float* lse;
};

__global__ void __launch_bounds__(kThreads)
    LogSoftmaxKernel(const LogSoftmaxParams p) {
  __shared__ float warp_scratch[kThreads / 32];
  __shared__ SoftmaxStats seg_stats[kTreeLeaves];
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.logits + r * p.ld;
    const SoftmaxStats st =
        RowSubtreeStats(x, p.vocab, 0, kTreeLeaves, warp_scratch, seg_stats);
    const float lse = __fadd_rn(st.max, logf(st.sum));
    if (threadIdx.x == 0) {
      if (p.lse != nullptr) p.lse[r] = lse;
      if (p.targets != nullptr) {
        const int32_t tg = p.targets[r];
        p.target_logprobs[r] = (tg >= 0 && tg < p.vocab)
                                   ? __fsub_rn(x[tg], lse)
                                   : __int_as_float(0x7fc00000);
      }
    }
    if (p.logprobs != nullptr) {
      float* out = p.logprobs + r * p.ld_out;
      for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) {
        out[j] = __fsub_rn(x[j], lse);
      }
    }
  }
}

struct SegmentParams {
  const float* logits;
  int64_t ld;
  int64_t rows;
  int64_t vocab_total;
  int seg_begin;
  int seg_count;
  SoftmaxStats* out;
};

__global__ void __launch_bounds__(kThreads)
    SegmentStatsKernel(const SegmentParams p) {
  __shared__ float warp_scratch[kThreads / 32];
  __shared__ SoftmaxStats seg_stats[kTreeLeaves];
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const SoftmaxStats st =
        RowSubtreeStats(p.logits + r * p.ld, p.vocab_total, p.seg_begin,
                        p.seg_count, warp_scratch, seg_stats);
    if (threadIdx.x == 0) p.out[r] = st;
  }
}

__global__ void CombineStatsKernel(const SoftmaxStats* gathered, int t,
                                   int64_t rows, float* lse_out) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       r < rows; r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    SoftmaxStats v[kTreeLeaves];
    for (int i = 0; i < t; ++i) v[i] = gathered[i * rows + r];
    const SoftmaxStats st = TreeOf(v, t);
    lse_out[r] = __fadd_rn(st.max, logf(st.sum));
  }
}

int RowGrid(int64_t rows) {
  return static_cast<int>(std::min<int64_t>(rows, SmCount() * 2LL));
}

}  // namespace

absl::Status LogSoftmax(const LogSoftmaxArgs& args, void* stream) {
  if (args.rows <= 0) return absl::OkStatus();
  cudaStream_t s = AsStream(stream);
  if (args.targets != nullptr && !StreamIsCapturing(s)) {
    // Targets live on the device; one read-back per call (the learner calls
    // this once per forward) so that a bad id is an error, as on the CPU.
    std::vector<int32_t> tg(args.rows);
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
        tg.data(), args.targets, args.rows * sizeof(int32_t),
        cudaMemcpyDeviceToHost, s));
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
    for (int64_t r = 0; r < args.rows; ++r) {
      if (tg[r] < 0 || tg[r] >= args.vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("LogSoftmax: targets[", r, "] = ", tg[r],
                         " is outside [0, vocab=", args.vocab, ")"));
      }
    }
  }
  const LogSoftmaxParams p{args.logits,   args.ld,
                           args.rows,     args.vocab,
                           args.targets,  args.target_logprobs,
                           args.logprobs, args.ld_out,
                           args.lse};
  LogSoftmaxKernel<<<RowGrid(args.rows), kThreads, 0, s>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("LogSoftmaxKernel");
  return absl::OkStatus();
}

absl::Status SegmentStats(const SegmentStatsArgs& args, void* stream) {
  if (args.rows <= 0) return absl::OkStatus();
  const SegmentParams p{args.logits,      args.ld,       args.rows,
                        args.vocab_total, args.seg_begin, args.seg_count,
                        args.stats_out};
  SegmentStatsKernel<<<RowGrid(args.rows), kThreads, 0, AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("SegmentStatsKernel");
  return absl::OkStatus();
}

absl::Status CombineSegmentStats(const SoftmaxStats* gathered, int t,
                                 int64_t rows, float* lse_out, void* stream) {
  if (rows <= 0) return absl::OkStatus();
  if (!IsValidTreeSplit(t)) {
    return absl::InvalidArgumentError("CombineSegmentStats: t must be 1/2/4/8");
  }
  const int grid = static_cast<int>(
      std::min<int64_t>((rows + 255) / 256, SmCount() * 4LL));
  CombineStatsKernel<<<grid, 256, 0, AsStream(stream)>>>(gathered, t, rows,
                                                          lse_out);
  LOCKSTEP_CUDA_CHECK_LAUNCH("CombineStatsKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
