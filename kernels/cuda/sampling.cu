// Sampling on the GPU: steps 1-8 of kernels/sampling.h with the arithmetic of
// kernels/sampling_math.h, so every row gets the CPU's token, logprob and
// last kept index bit for bit (this library is built with -fmad=false and
// sampling_math.h uses IEEE +, -, *, / only).
//
// One block of a constant 1024 threads per row (grid-stride over rows; about
// 142 KiB of dynamic shared memory, for per-warp histograms). With
// adjustments the block first writes its adjusted row to the workspace and
// reads it from there. The kept set is a prefix of the order O, i.e. "OrderKey
// >= threshold" (OrderKey is unique per entry), and the thresholds are found
// by an 8-bit radix descent over the 64-bit keys: by counts for top_k, by
// integer masses for top_p. Every histogram, sum, minimum and maximum is over
// integers (or exact comparisons), so no result depends on the order of the
// atomics or of the threads: only the row's own values decide.
//
// Why the shortcuts are exact:
//  - z_max is z of the argmax of a (division by T > 0 and the clamp are
//    monotone), except for a zero maximum, whose sign a second pass takes
//    from the first zero as the CPU does;
//  - a digit's bucket holding one entry ends the descent with that entry's
//    key (the full descent could only end there);
//  - digit 24 of every key is 0xFF (indices < 2^24), so it is never scanned;
//  - the first pass of a descent sees every counted entry, so its histogram
//    total is the count (top_k off when <= top_k) or the total mass (the
//    top_p target), as the CPU computes them;
//  - Gumbel noise is computed (exactly) only for entries whose key may reach
//    the exact key of the first entry of O (MayReach: a conservative bound);
//    the others are below the winner's key, so they can neither win nor tie.
#include "kernels/cuda/sampling.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/sampling_math.h"

namespace lockstep::kernels::cuda {
namespace {

namespace sm = ::lockstep::kernels::sampling_math;

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
// Loads each thread has in flight per loop step: a row pass is bound by load
// latency otherwise (one SM walks the whole row).
constexpr int kUnroll = 8;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr uint64_t kLow32 = 0xFFFFFFFFull;

__device__ __forceinline__ float NegInf() {
  return -__int_as_float(0x7f800000);
}
__device__ __forceinline__ float QuietNaN() {
  return __int_as_float(0x7fc00000);
}

// ---------------------------------------------------------------------------
// Exact block reductions (max / min / sum of integers): any combination order
// gives the same result. Each contains barriers; every thread gets the result.

__device__ __forceinline__ unsigned long long MaxU64(unsigned long long a,
                                                     unsigned long long b) {
  return a > b ? a : b;
}
__device__ __forceinline__ unsigned long long MinU64(unsigned long long a,
                                                     unsigned long long b) {
  return a < b ? a : b;
}

template <typename Op>
__device__ __forceinline__ unsigned long long WarpReduceU64(
    unsigned long long v, Op op) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    v = op(v, __shfl_xor_sync(kFullMask, v, off));
  }
  return v;
}

template <typename Op>
__device__ unsigned long long BlockReduceU64(unsigned long long v, Op op,
                                             unsigned long long* scratch) {
  v = WarpReduceU64(v, op);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  unsigned long long r = scratch[0];
#pragma unroll 4
  for (int i = 1; i < kWarps; ++i) r = op(r, scratch[i]);
  __syncthreads();
  return r;
}

struct MaxOp {
  __device__ unsigned long long operator()(unsigned long long a,
                                           unsigned long long b) const {
    return MaxU64(a, b);
  }
};
struct MinOp {
  __device__ unsigned long long operator()(unsigned long long a,
                                           unsigned long long b) const {
    return MinU64(a, b);
  }
};
struct SumOp {
  __device__ unsigned long long operator()(unsigned long long a,
                                           unsigned long long b) const {
    return a + b;
  }
};

// Gumbel-max winner: larger key, ties to the lower index.
struct Best {
  unsigned long long key;  // OrderedDoubleBits of z + g; 0: none
  uint32_t index;          // 0xFFFFFFFF: none
};

__device__ __forceinline__ Best Better(Best a, Best b) {
  if (a.key != b.key) return a.key > b.key ? a : b;
  return a.index <= b.index ? a : b;
}

__device__ Best BlockBest(Best v, unsigned long long* key_scratch,
                          uint32_t* index_scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Best o;
    o.key = __shfl_xor_sync(kFullMask, v.key, off);
    o.index = __shfl_xor_sync(kFullMask, v.index, off);
    v = Better(v, o);
  }
  if ((threadIdx.x & 31) == 0) {
    key_scratch[threadIdx.x >> 5] = v.key;
    index_scratch[threadIdx.x >> 5] = v.index;
  }
  __syncthreads();
  Best r{key_scratch[0], index_scratch[0]};
  for (int i = 1; i < kWarps; ++i) {
    r = Better(r, Best{key_scratch[i], index_scratch[i]});
  }
  __syncthreads();
  return r;
}

// Monotone map of a double to uint64 (larger = larger), -0 folded onto +0 so
// that equal values tie (the CPU compares with `>`). Finite inputs only.
__device__ __forceinline__ unsigned long long OrderedDoubleBits(double x) {
  unsigned long long b =
      static_cast<unsigned long long>(__double_as_longlong(x));
  if ((b << 1) == 0) b = 0;
  return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}

// Argmax key of the CPU's ArgmaxRow: value with -0 == +0 (OrderedBits folds
// them), ties to the lower index; NaN only wins when every entry is NaN
// (then index 0).
__device__ __forceinline__ unsigned long long ArgmaxKey(float x, int64_t j) {
  const uint64_t hi =
      isnan(x) ? 0ull : static_cast<uint64_t>(OrderedBits(x)) + 1;
  return (hi << 32) | (kLow32 - static_cast<uint64_t>(j));
}

__device__ __forceinline__ int32_t IndexOfKey(unsigned long long key) {
  return static_cast<int32_t>(kLow32 - (key & kLow32));
}

// ---------------------------------------------------------------------------
// Step 1 and 3 arithmetic, as kernels/cpu/sampling.cc writes it.

// One definition for both devices (-fmad=false: no contraction here).
__device__ __forceinline__ float ApplyAdjustment(float v,
                                                 const LogitAdjustment& e) {
  return sampling_math::AdjustedLogit(v, e.bias, e.repetition, e.subtract, e.banned != 0);
}

__device__ __forceinline__ bool AdjustmentIsBad(const LogitAdjustment& e,
                                                int64_t vocab) {
  return e.token < 0 || e.token >= vocab || !isfinite(e.bias) ||
         !isfinite(e.subtract) || !isfinite(e.repetition) ||
         !(e.repetition > 0.0f);
}

__device__ __forceinline__ bool ParamsAreBad(const SamplingParams& sp) {
  return !(sp.temperature >= 0.0f && sp.temperature <= FLT_MAX) ||
         !(sp.top_p > 0.0f && sp.top_p <= 1.0f) ||
         !(sp.min_p >= 0.0f && sp.min_p <= 1.0f) || sp.top_k < 0;
}

__device__ __forceinline__ bool IsCandidate(float v) {
  return !isnan(v) && v != NegInf();
}

// z = clamp(a / T, +-FLT_MAX); a is a candidate (not NaN), T > 0.
__device__ __forceinline__ float Scaled(float v, float t) {
  return fminf(fmaxf(__fdiv_rn(v, t), -FLT_MAX), FLT_MAX);
}

// False only when z + g(u), g(u) = -log(-log u) as sm::Gumbel computes it,
// is surely below `bound` (a key some kept entry has exactly): then the
// entry can neither win nor tie, and its Gumbel noise is not computed. The
// test is conservative: -log u >= w + w^2 / 2 with w = 1 - u (shrunk by
// 2^-40 for rounding), e^-tau <= 1.01 __expf(-tau) for |tau| <= 80 (the
// intrinsic is within 1e-4 there), and tau keeps a slack well above the
// rounding of the keys and the ~1e-14 error of the computed g.
__device__ __forceinline__ bool MayReach(double u, float z, double bound) {
  const double zd = static_cast<double>(z);
  const double slack = 1e-6 + 1e-12 * (fabs(bound) + fabs(zd));
  const double tau = (bound - zd) - slack;  // reach needs g(u) >= tau
  if (tau < -80.0) return true;
  if (tau > 80.0) return false;  // g(u) <= 36.8 for every 52-bit u
  const double w = 1.0 - u;
  const double log_lower = (w + 0.5 * (w * w)) * (1.0 - 0x1p-40);
  const float exp_upper = __expf(static_cast<float>(-tau)) * 1.01f;
  return !(log_lower > static_cast<double>(exp_upper));
}

// What every thread of the block knows about the row being sampled.
struct RowView {
  const float* a;  // [vocab] adjusted logits
  int64_t vocab;
  float temperature;
  double zmax;  // max z over the candidates (the CPU's bits)
  bool use_min_p;
  double log_min_p;  // PortableLog(min_p)
};

// Step 4 on an entry with candidate logit v and z = Scaled(v).
__device__ __forceinline__ bool PassesMinP(const RowView& row, float z) {
  return !row.use_min_p || static_cast<double>(z) - row.zmax >= row.log_min_p;
}

// ---------------------------------------------------------------------------
// The radix descent.

// Histograms are per warp, updated with native 32-bit shared atomics
// (64-bit ones are CAS loops on sm_90, and warp-aggregating lanes by digit
// costs more than it saves); masses (<= 2^44) go in three 16-bit limbs, whose
// per-warp sums stay below 2^30 (a warp sees <= 2^19 / 32 entries a pass).
// The block then folds them into kFoldGroups partial sums per digit.
constexpr int kFoldGroups = kThreads / 256;
static_assert(kFoldGroups * 256 == kThreads && kWarps % kFoldGroups == 0,
              "the fold maps threads onto (group, digit)");
static_assert(sm::kMaxSampleVocab / kThreads * 32 * 0xFFFF < (1u << 31),
              "per-warp limb sums fit 32 bits");

struct RowShared {
  unsigned int warp_count[kWarps][256];       // entries per digit
  unsigned int warp_mass[3][kWarps][256];     // 16-bit limbs of the masses
  unsigned int part_count[kFoldGroups][256];  // folded
  unsigned long long part_mass[kFoldGroups][256];
  unsigned long long key[256];     // some key of each digit (for count 1)
  unsigned long long red[kWarps];  // reduction scratch
  unsigned long long red2[kWarps];
  uint32_t red_index[kWarps];
  // Descent state, written by warp 0 between barriers.
  unsigned long long prefix;  // decided digits of the threshold
  unsigned long long mask;    // which digits are decided
  unsigned long long above;   // count / mass of counted keys above the range
  unsigned long long goal;    // count / mass the prefix must reach
  int done;                   // prefix is the full threshold
  int off;                    // the filter keeps every counted entry
};

// Adds one entry (digit < 0: none) to this warp's histograms.
__device__ __forceinline__ void AddToHistogram(int digit,
                                               unsigned long long key,
                                               unsigned long long m,
                                               bool by_mass, RowShared& sh) {
  if (digit < 0) return;
  const int warp = threadIdx.x >> 5;
  atomicAdd(&sh.warp_count[warp][digit], 1u);
  if (by_mass) {
#pragma unroll
    for (int limb = 0; limb < 3; ++limb) {
      const unsigned part = static_cast<unsigned>((m >> (16 * limb)) & 0xFFFF);
      if (part != 0) atomicAdd(&sh.warp_mass[limb][warp][digit], part);
    }
  }
  sh.key[digit] = key;
}

// Folds the warp histograms into part_* (thread t: digit t % 256, warps of
// group t / 256) and clears them for the next pass. Between barriers.
__device__ __forceinline__ void FoldHistograms(bool by_mass, RowShared& sh) {
  const int d = threadIdx.x & 255;
  const int g = threadIdx.x >> 8;
  constexpr int kPerGroup = kWarps / kFoldGroups;
  unsigned c = 0;
  unsigned long long m = 0;
#pragma unroll
  for (int w = g * kPerGroup; w < (g + 1) * kPerGroup; ++w) {
    c += sh.warp_count[w][d];
    sh.warp_count[w][d] = 0;
    if (by_mass) {
      m += sh.warp_mass[0][w][d] +
           (static_cast<unsigned long long>(sh.warp_mass[1][w][d]) << 16) +
           (static_cast<unsigned long long>(sh.warp_mass[2][w][d]) << 32);
      sh.warp_mass[0][w][d] = 0;
      sh.warp_mass[1][w][d] = 0;
      sh.warp_mass[2][w][d] = 0;
    }
  }
  sh.part_count[g][d] = c;
  sh.part_mass[g][d] = m;
}

// One histogram pass: the counted entries (candidates passing min_p with
// key >= floor_key) whose key matches the decided prefix, by their digit at
// `shift`.
__device__ void HistogramPass(const RowView& row, unsigned long long floor_key,
                              int shift, bool by_mass, RowShared& sh) {
  const unsigned long long prefix = sh.prefix;
  const unsigned long long mask = sh.mask;
  for (int64_t base = 0; base < row.vocab; base += kThreads * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * kThreads + threadIdx.x;
      v[u] = j < row.vocab ? row.a[j] : QuietNaN();  // NaN: not counted
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * kThreads + threadIdx.x;
      int digit = -1;
      unsigned long long key = 0, m = 0;
      if (IsCandidate(v[u])) {
        key = sm::OrderKey(v[u], j);
        if (key >= floor_key && (key & mask) == prefix) {
          const float z = Scaled(v[u], row.temperature);
          if (PassesMinP(row, z)) {
            digit = static_cast<int>((key >> shift) & 255);
            if (by_mass) m = sm::Mass(z, row.zmax);
          }
        }
      }
      AddToHistogram(digit, key, m, by_mass, sh);
    }
  }
}

// The top_p target of the CPU: max(1, min(total, ceil(top_p * total))).
__device__ __forceinline__ unsigned long long TopPTarget(
    float top_p, unsigned long long total) {
  const double want =
      ceil(static_cast<double>(top_p) * static_cast<double>(total));
  if (want < 1.0) return 1;
  const unsigned long long w = static_cast<unsigned long long>(want);
  return w < total ? w : total;
}

// Warp 0: picks the first digit from the top at which the running total of
// the folded histograms reaches the goal, and updates the descent state.
// Lane l owns digits 255 - 8 l - i, i = 0..7 (descending).
__device__ void SelectDigit(int shift, bool first, bool by_mass, float top_p,
                            RowShared& sh) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  unsigned long long h[8];
  unsigned c[8];
  unsigned long long local = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int d = 255 - 8 * lane - i;
    c[i] = 0;
    unsigned long long mass = 0;
#pragma unroll
    for (int g = 0; g < kFoldGroups; ++g) {
      c[i] += sh.part_count[g][d];
      mass += sh.part_mass[g][d];
    }
    h[i] = by_mass ? mass : c[i];
    local += h[i];
  }
  unsigned long long incl = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const unsigned long long o = __shfl_up_sync(kFullMask, incl, off);
    if (lane >= off) incl += o;
  }
  const unsigned long long total = __shfl_sync(kFullMask, incl, 31);
  unsigned long long goal = sh.goal;
  bool off = false;
  if (first) {
    if (by_mass) {
      goal = TopPTarget(top_p, total);
    } else {
      off = total <= goal;  // top_k >= the number of counted entries
    }
  }
  unsigned long long run = sh.above + (incl - local);
  int found = -1;
  unsigned found_count = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if (found < 0) {
      if (run + h[i] >= goal) {
        found = i;
        found_count = c[i];
      } else {
        run += h[i];
      }
    }
  }
  const unsigned ballot = __ballot_sync(kFullMask, found >= 0);
  __syncwarp();
  if (lane == 0) {
    sh.goal = goal;
    if (off) sh.off = 1;
    if (ballot == 0 && !off) {
      // Unreachable (goal <= total): keep every counted entry.
      sh.off = 1;
    }
  }
  if (!off && ballot != 0 && lane == __ffs(ballot) - 1) {
    const int d = 255 - 8 * lane - found;
    unsigned long long prefix =
        sh.prefix | (static_cast<unsigned long long>(d) << shift);
    unsigned long long mask = sh.mask | (255ull << shift);
    if (shift == 32) {  // digit 24 is 0xFF for every key
      prefix |= 0xFFull << 24;
      mask |= 0xFFull << 24;
    }
    sh.above = run;
    if (found_count == 1) {
      prefix = sh.key[d];
      mask = ~0ull;
    }
    sh.prefix = prefix;
    sh.mask = mask;
    if (mask == ~0ull) sh.done = 1;
  }
}

// The threshold key of a top_k (by_mass false, goal = top_k) or top_p
// (by_mass true) filter over the entries counted above floor_key; 0 when the
// filter keeps them all.
__device__ unsigned long long Descend(const RowView& row,
                                      unsigned long long floor_key,
                                      bool by_mass, unsigned long long top_k,
                                      float top_p, RowShared& sh) {
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.mask = 0;
    sh.above = 0;
    sh.goal = top_k;
    sh.done = 0;
    sh.off = 0;
  }
  __syncthreads();
  // Digits at 56, 48, 40, 32, then 16, 8, 0 (24 is decided with 32).
  for (int s = 0; s < 7; ++s) {
    const int shift = s < 4 ? 56 - 8 * s : 48 - 8 * s;
    HistogramPass(row, floor_key, shift, by_mass, sh);
    __syncthreads();
    FoldHistograms(by_mass, sh);
    __syncthreads();
    SelectDigit(shift, s == 0, by_mass, top_p, sh);
    __syncthreads();
    if (sh.done || sh.off) break;
  }
  const unsigned long long threshold = sh.off ? 0ull : sh.prefix;
  __syncthreads();  // the state is reused by the next descent
  return threshold;
}

// This thread's ArgmaxKey maximum over a row, 0 when all its entries are
// NaN. A thread visits its entries in increasing index order, so `>` keeps
// the first of equal values (-0 == +0), as the CPU's ArgmaxRow does.
__device__ __forceinline__ unsigned long long ThreadArgmax(const float* x,
                                                           int64_t vocab) {
  float best_v = 0.0f;
  int64_t best_j = -1;
  for (int64_t base = 0; base < vocab; base += kThreads * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * kThreads + threadIdx.x;
      v[u] = j < vocab ? x[j] : QuietNaN();
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (!isnan(v[u]) && (best_j < 0 || v[u] > best_v)) {
        best_v = v[u];
        best_j = base + u * kThreads + threadIdx.x;
      }
    }
  }
  return best_j < 0 ? 0ull : ArgmaxKey(best_v, best_j);
}

// The index of a block's ArgmaxKey maximum (0 for an all-NaN row).
__device__ __forceinline__ int32_t ArgmaxIndex(unsigned long long key) {
  return key == 0 ? 0 : IndexOfKey(key);
}

// ---------------------------------------------------------------------------
// The sampling kernel.

struct SampleKernelParams {
  const float* logits;  // [rows, ld]
  int64_t ld;
  int64_t rows;
  int64_t vocab;
  const SamplingParams* params;        // [rows]
  const int64_t* positions;            // [rows] or null (scoring)
  const int64_t* adjust_offsets;       // [rows + 1] or null
  const LogitAdjustment* adjustments;  // indexed by adjust_offsets
  float* workspace;                    // [rows, vocab] with adjustments
  const int32_t* targets;              // [rows] or null
  int32_t* tokens_out;                 // [rows] or null
  float* logprobs_out;                 // [rows] or null
  int32_t* last_kept_out;              // [rows] or null
};

__device__ void WriteRow(const SampleKernelParams& p, int64_t r, int32_t token,
                         float logprob, int32_t last_kept) {
  if (p.tokens_out != nullptr) p.tokens_out[r] = token;
  if (p.logprobs_out != nullptr) p.logprobs_out[r] = logprob;
  if (p.last_kept_out != nullptr) p.last_kept_out[r] = last_kept;
}

__device__ void SampleRow(const SampleKernelParams& p, int64_t r,
                          RowShared& sh) {
  const SamplingParams sp = p.params[r];
  const int64_t vocab = p.vocab;
  const int32_t target = p.targets != nullptr ? p.targets[r] : -1;
  const float* x = p.logits + r * p.ld;

  // Values in device memory are checked on the host unless the stream is
  // being captured; here a bad row only gets token -1 (and must not write
  // out of bounds).
  bool bad = ParamsAreBad(sp) ||
             (p.targets != nullptr && (target < 0 || target >= vocab));
  int64_t adj_begin = 0, adj_end = 0;
  if (p.adjust_offsets != nullptr) {
    adj_begin = p.adjust_offsets[r];
    adj_end = p.adjust_offsets[r + 1];
    if (adj_begin < 0 || adj_end < adj_begin ||
        (p.adjustments == nullptr && adj_end > adj_begin)) {
      bad = true;
    }
  }
  int local_bad = 0;
  if (!bad) {
    for (int64_t e = adj_begin + threadIdx.x; e < adj_end; e += kThreads) {
      if (AdjustmentIsBad(p.adjustments[e], vocab)) local_bad = 1;
    }
  }
  if (bad || __syncthreads_or(local_bad)) {
    if (threadIdx.x == 0) WriteRow(p, r, -1, QuietNaN(), -1);
    return;
  }

  // Step 1: the adjusted row (distinct tokens, so no two threads write the
  // same entry).
  const float* a = x;
  if (p.adjust_offsets != nullptr) {
    float* w = p.workspace + r * vocab;
    for (int64_t base = 0; base < vocab; base += kThreads * kUnroll) {
      float v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = base + u * kThreads + threadIdx.x;
        if (j < vocab) v[u] = x[j];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = base + u * kThreads + threadIdx.x;
        if (j < vocab) w[j] = v[u];
      }
    }
    __syncthreads();
    for (int64_t e = adj_begin + threadIdx.x; e < adj_end; e += kThreads) {
      const LogitAdjustment adj = p.adjustments[e];
      w[adj.token] = ApplyAdjustment(x[adj.token], adj);
    }
    __syncthreads();
    a = w;
  }

  // Step 2: greedy.
  const float temperature = sp.temperature;
  if (temperature < kMinSamplingTemperature) {
    const unsigned long long best =
        BlockReduceU64(ThreadArgmax(a, vocab), MaxOp{}, sh.red);
    if (threadIdx.x == 0) {
      const int32_t g = ArgmaxIndex(best);
      const int32_t token = target >= 0 ? target : g;
      WriteRow(p, r, token, token == g ? 0.0f : NegInf(), g);
    }
    return;
  }

  // Step 3: candidates and z_max. The argmax g of a (lowest index, NaN
  // never wins) is the first entry of O; the row has candidates unless a_g is
  // NaN or -inf. Division by T > 0 and the clamp are monotone, so z_max =
  // z_g -- the CPU's bits (the z of the lowest index holding the maximum)
  // unless z_g is a zero, whose sign is then the first zero's.
  const unsigned long long best =
      BlockReduceU64(ThreadArgmax(a, vocab), MaxOp{}, sh.red);
  const int32_t g = ArgmaxIndex(best);
  const float a_g = a[g];
  if (!IsCandidate(a_g)) {  // no candidate
    if (threadIdx.x == 0) {
      const int32_t token = target >= 0 ? target : g;
      WriteRow(p, r, token, NegInf(), token);
    }
    return;
  }
  const float z_g = Scaled(a_g, temperature);
  float zmax = z_g;
  if (z_g == 0.0f) {
    unsigned long long first = ~0ull;
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
      if (IsCandidate(a[j]) && Scaled(a[j], temperature) == 0.0f) {
        first = MinU64(first, static_cast<unsigned long long>(j));
      }
    }
    first = BlockReduceU64(first, MinOp{}, sh.red2);
    zmax = Scaled(a[first], temperature);
  }
  RowView row;
  row.a = a;
  row.vocab = vocab;
  row.temperature = temperature;
  row.zmax = static_cast<double>(zmax);
  row.use_min_p = sp.min_p > 0.0f;
  row.log_min_p =
      row.use_min_p ? sm::PortableLog(static_cast<double>(sp.min_p)) : 0.0;

  // Steps 4-6: thresholds (step 4 is the per-entry PassesMinP).
  unsigned long long threshold = 0;
  if (sp.top_k > 0) {
    threshold = Descend(row, 0, /*by_mass=*/false,
                        static_cast<unsigned long long>(sp.top_k), 0.0f, sh);
  }
  if (sp.top_p < 1.0f) {
    threshold = MaxU64(
        threshold, Descend(row, threshold, /*by_mass=*/true, 0, sp.top_p, sh));
  }

  // Steps 7-8 over the kept set: its mass, its last entry in O and the
  // Gumbel-max winner. Entries 2i and 2i + 1 share one Philox call.
  const bool sampling = p.targets == nullptr;
  const int64_t position = p.positions != nullptr ? p.positions[r] : 0;
  const uint64_t pos = static_cast<uint64_t>(position);
  unsigned long long kept_mass = 0, min_key = ~0ull;
  Best winner{0, 0xFFFFFFFFu};
  // The exact key of g (always kept) bounds the winner's key from below.
  const double key_bound =
      sampling ? static_cast<double>(z_g) + sm::Gumbel(sp.seed, position, g)
               : 0.0;
  const int64_t pairs = (vocab + 1) / 2;
  constexpr int kPairUnroll = kUnroll / 2;
  for (int64_t pbase = 0; pbase < pairs; pbase += kThreads * kPairUnroll) {
    float pv[kPairUnroll][2];
#pragma unroll
    for (int u = 0; u < kPairUnroll; ++u) {
      const int64_t i = pbase + u * kThreads + threadIdx.x;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        pv[u][c] = 2 * i + c < vocab ? a[2 * i + c] : QuietNaN();
      }
    }
#pragma unroll
    for (int u = 0; u < kPairUnroll; ++u) {
      const int64_t i = pbase + u * kThreads + threadIdx.x;
      bool kept[2] = {false, false};
      float z[2] = {0.0f, 0.0f};
      unsigned long long key[2] = {0, 0};
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t j = 2 * i + c;
        const float v = pv[u][c];
        if (!IsCandidate(v)) continue;  // also j >= vocab
        key[c] = sm::OrderKey(v, j);
        if (key[c] < threshold) continue;
        z[c] = Scaled(v, temperature);
        kept[c] = PassesMinP(row, z[c]);
      }
      if (!kept[0] && !kept[1]) continue;
      sm::Words4 words{{0, 0, 0, 0}};
      if (sampling) {
        words = sm::Philox(
            static_cast<uint32_t>(pos), static_cast<uint32_t>(pos >> 32),
            static_cast<uint32_t>(i), 0u, static_cast<uint32_t>(sp.seed),
            static_cast<uint32_t>(sp.seed >> 32));
      }
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        if (!kept[c]) continue;
        kept_mass += sm::Mass(z[c], row.zmax);
        min_key = MinU64(min_key, key[c]);
        if (sampling) {
          // sm::StreamBits / sm::Gumbel, with the counter shared by the pair.
          const uint64_t bits =
              (static_cast<uint64_t>(words.w[2 * c]) << 32) |
              words.w[2 * c + 1];
          const double uniform = sm::UniformFromBits(bits);
          const int64_t j = 2 * i + c;
          if (j != g && !MayReach(uniform, z[c], key_bound)) continue;
          const double noise = -sm::PortableLog(-sm::PortableLog(uniform));
          const double k = static_cast<double>(z[c]) + noise;
          winner = Better(winner,
                          Best{OrderedDoubleBits(k), static_cast<uint32_t>(j)});
        }
      }
    }
  }
  kept_mass = BlockReduceU64(kept_mass, SumOp{}, sh.red);
  min_key = BlockReduceU64(min_key, MinOp{}, sh.red2);
  if (sampling) winner = BlockBest(winner, sh.red, sh.red_index);
  if (threadIdx.x == 0) {
    const int32_t last = IndexOfKey(min_key);
    int32_t token;
    float logprob;
    if (sampling) {
      token = static_cast<int32_t>(winner.index);
      logprob =
          sm::KeptLogprob(Scaled(a[token], temperature), row.zmax, kept_mass);
    } else {
      token = target;
      const float v = a[token];
      bool in = IsCandidate(v) && sm::OrderKey(v, token) >= threshold;
      float zt = 0.0f;
      if (in) {
        zt = Scaled(v, temperature);
        in = PassesMinP(row, zt);
      }
      logprob = in ? sm::KeptLogprob(zt, row.zmax, kept_mass) : NegInf();
    }
    WriteRow(p, r, token, logprob, last);
  }
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const SampleKernelParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  RowShared& sh = *reinterpret_cast<RowShared*>(smem);
  for (int i = threadIdx.x; i < kWarps * 256; i += kThreads) {
    (&sh.warp_count[0][0])[i] = 0;  // FoldHistograms clears them after use
    (&sh.warp_mass[0][0][0])[i] = 0;
    (&sh.warp_mass[1][0][0])[i] = 0;
    (&sh.warp_mass[2][0][0])[i] = 0;
  }
  __syncthreads();
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    SampleRow(p, r, sh);
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------
// Argmax and the harness's Philox.

struct ArgmaxParams {
  const float* logits;  // [rows, ld]
  int64_t ld;
  int64_t rows;
  int64_t vocab;
  int32_t* out;  // [rows]
};

__global__ void __launch_bounds__(kThreads) ArgmaxKernel(const ArgmaxParams p) {
  __shared__ unsigned long long scratch[kWarps];
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const unsigned long long best = BlockReduceU64(
        ThreadArgmax(p.logits + r * p.ld, p.vocab), MaxOp{}, scratch);
    if (threadIdx.x == 0) p.out[r] = ArgmaxIndex(best);
  }
}

__global__ void PhiloxUniformKernel(uint64_t key, int64_t position,
                                    int64_t count, double* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = sm::UniformFromBits(sm::StreamBits(key, position, i));
  }
}

int RowGrid(int64_t rows) {
  return static_cast<int>(std::min<int64_t>(rows, SmCount() * 16LL));
}

// Copies [count] T at device `src` to `dst` on `s` (not synchronised).
template <typename T>
absl::Status ReadBack(const T* src, int64_t count, std::vector<T>* dst,
                      cudaStream_t s) {
  dst->resize(count);
  if (count == 0) return absl::OkStatus();
  LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
      dst->data(), src, count * sizeof(T), cudaMemcpyDeviceToHost, s));
  return absl::OkStatus();
}

// The CPU's checks (kernels/cpu/sampling.cc), in its order, on the values
// read back from the device.
absl::Status CheckOnHost(const SampleArgs& args, cudaStream_t s) {
  std::vector<SamplingParams> params;
  std::vector<int32_t> targets;
  std::vector<int64_t> offsets;
  if (absl::Status st = ReadBack(args.params, args.rows, &params, s);
      !st.ok()) {
    return st;
  }
  if (args.targets != nullptr) {
    if (absl::Status st = ReadBack(args.targets, args.rows, &targets, s);
        !st.ok()) {
      return st;
    }
  }
  if (args.adjust_offsets != nullptr) {
    if (absl::Status st =
            ReadBack(args.adjust_offsets, args.rows + 1, &offsets, s);
        !st.ok()) {
      return st;
    }
  }
  LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  // The adjustments of the rows before the first bad offset pair: entries
  // [offsets[0], offsets[good_rows]).
  std::vector<LogitAdjustment> adjustments;
  int64_t adj_base = 0;
  if (args.adjust_offsets != nullptr) {
    int64_t good_rows = 0;
    while (good_rows < args.rows && offsets[good_rows] >= 0 &&
           offsets[good_rows + 1] >= offsets[good_rows]) {
      ++good_rows;
    }
    adj_base = offsets[0] >= 0 ? offsets[0] : 0;
    const int64_t count = good_rows > 0 ? offsets[good_rows] - adj_base : 0;
    if (count > 0 && args.adjustments == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("Sample: adjust_offsets name ", count,
                       " adjustments but adjustments is null"));
    }
    if (absl::Status st =
            ReadBack(args.adjustments + adj_base, count, &adjustments, s);
        !st.ok()) {
      return st;
    }
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  }
  for (int64_t r = 0; r < args.rows; ++r) {
    if (absl::Status st = CheckSamplingParams(params[r], r); !st.ok()) {
      return st;
    }
    if (args.targets != nullptr &&
        (targets[r] < 0 || targets[r] >= args.vocab)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Sample: targets[", r, "] = ", targets[r],
                       " is outside [0, ", args.vocab, ")"));
    }
    if (args.adjust_offsets == nullptr) continue;
    const int64_t begin = offsets[r], end = offsets[r + 1];
    if (begin < 0 || end < begin) {
      return absl::InvalidArgumentError(
          absl::StrCat("Sample: adjust_offsets[", r, "..", r + 1, "] = ", begin,
                       ", ", end, " decrease"));
    }
    for (int64_t e = begin; e < end; ++e) {
      if (absl::Status st =
              CheckLogitAdjustment(adjustments[e - adj_base], args.vocab, r);
          !st.ok()) {
        return st;
      }
      if (e > begin &&
          adjustments[e - adj_base].token <= adjustments[e - 1 - adj_base].token) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Sample: row ", r, " adjustment tokens must be distinct and ascending"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Sample(const SampleArgs& args, void* stream) {
  if (args.rows <= 0) return absl::OkStatus();
  cudaStream_t s = AsStream(stream);
  if (!StreamIsCapturing(s)) {
    absl::Status st = CheckOnHost(args, s);
    if (!st.ok()) return st;
  }
  SampleKernelParams p;
  p.logits = args.logits;
  p.ld = args.ld;
  p.rows = args.rows;
  p.vocab = args.vocab;
  p.params = args.params;
  p.positions = args.positions;
  p.adjust_offsets = args.adjust_offsets;
  p.adjustments = args.adjustments;
  p.workspace = args.workspace;
  p.targets = args.targets;
  p.tokens_out = args.tokens_out;
  p.logprobs_out = args.logprobs_out;
  p.last_kept_out = args.last_kept_out;
  // The per-warp histograms need more than the default 48 KiB of shared
  // memory: opt in once per device.
  static std::atomic<uint64_t> opted_in{0};
  int device = 0;
  LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit == 0 || (opted_in.load() & bit) == 0) {
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        SampleKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(sizeof(RowShared))));
    opted_in.fetch_or(bit);
  }
  SampleKernel<<<RowGrid(args.rows), kThreads, sizeof(RowShared), s>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("SampleKernel");
  return absl::OkStatus();
}

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out, void* stream) {
  if (rows <= 0) return absl::OkStatus();
  const ArgmaxParams p{logits, ld, rows, vocab, tokens_out};
  ArgmaxKernel<<<RowGrid(rows), kThreads, 0, AsStream(stream)>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("ArgmaxKernel");
  return absl::OkStatus();
}

absl::Status PhiloxUniformDevice(uint64_t key, int64_t position, int64_t count,
                                 double* out, void* stream) {
  if (count <= 0) return absl::OkStatus();
  const int grid =
      static_cast<int>(std::min<int64_t>((count + 255) / 256, SmCount() * 8LL));
  PhiloxUniformKernel<<<grid, 256, 0, AsStream(stream)>>>(key, position, count,
                                                          out);
  LOCKSTEP_CUDA_CHECK_LAUNCH("PhiloxUniformKernel");
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cuda
