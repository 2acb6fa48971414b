// Tensor-core attention over bf16 K/V with the fixed block and split order of
// attention_tc.h. One device function (AttendBlock) holds all per-block
// arithmetic of a 16-row tile and one (FoldPlan/FoldValue) the split merge;
// the prefill kernel, the paged split kernel and the split combiner only
// differ in which rows they put in a tile and where bytes come from:
//  - PrefillTcKernel: a CTA of 8 warps owns 128 consecutive query tokens of
//    one query head, or 64 tokens of two query heads sharing a KV head; K/V
//    blocks of 64 keys are staged with cp.async (4 buffers, 3 blocks ahead)
//    and shared by the warps; each warp folds its splits inline.
//  - PagedTcKernel: one warp per (token, KV head, split); the tile's rows are
//    the query heads of that KV head (GQA packing), K/V rows are looked up
//    through the block table. A token with one split writes its output; with
//    more, each split writes (m, l, o) and CombineTcKernel folds them in
//    split order. When the batch alone fills the GPU (whole-token mode), one
//    warp per (token, KV head) walks all splits and folds them inline.
// mma.m16n8k16 computes every output element from its own row of A and
// column of B, so which other rows share a tile never changes a row's bits;
// keys beyond a row's position get p = 0 and alpha = 1 exactly, so visiting
// extra (masked) blocks leaves a row's state unchanged.
#include "kernels/cuda/attention_tc.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kBlocksPerSplit = kTcSplitKeys / kTcKeyBlock;  // 2
constexpr int kPrefillWarps = 8;
constexpr int kPrefillStages = 4;  // K/V block buffers per prefill CTA
static_assert(kPrefillStages >= 2, "blocks are prefetched");
static_assert(kTcKeyBlock == 64, "AttendBlock is written for 64-key blocks");
static_assert(kTcSplitKeys % kTcKeyBlock == 0, "splits hold whole blocks");

struct TcParams {
  const float* q;
  int64_t ldq;
  float* out;
  int64_t ldo;
  const uint16_t* k;
  const uint16_t* v;
  int64_t ldk;  // prefill: elements between consecutive tokens
  const int32_t* positions;
  const int32_t* seq_ids;
  const int32_t* block_tables;
  int64_t num_seqs;
  int64_t max_blocks;
  int64_t page_size;
  int64_t num_pages;
  int tokens;
  int hq;
  int hkv;
  int group;
  int vec;         // 16-byte cp.async legal for K/V rows
  int max_splits;  // paged: splits per token in the grid (1 in whole-token mode)
  int split_blocks;  // paged: key blocks per split (kBlocksPerSplit when invariant)
  int whole_tokens;  // paged: one warp folds all splits of a (token, KV head) inline
  float c;         // scale * log2(e)
  float* part_o;   // paged, max_splits > 1: [tokens, hq, max_splits, D]
  float* part_ml;  // [tokens, hq, max_splits, 2]
};

template <int D>
struct Layout {
  static constexpr int kStride = D * 2;  // bytes per staged row (unpadded)
  static constexpr int kTile = kTcKeyBlock * kStride;
  // Byte offset of byte `byte` of staged row `row` (rows counted from a
  // tile or q-tile base, which are multiples of 8 rows apart). The 16-byte
  // chunks of a row are XOR-swizzled by row % 8, so the 8 row addresses of
  // an ldmatrix phase (same column, 8 consecutive rows) hit 8 different
  // chunks, i.e. all 32 banks, without padding.
  __device__ __forceinline__ static int Offset(int row, int byte) {
    return row * kStride + ((((byte >> 4) ^ row) & 7) | ((byte >> 4) & ~7)) * 16 + (byte & 15);
  }
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
};

// Layout::Offset for the ldmatrix addresses of one lane, unrolled: the lane
// reads rows whose row % 8 is `row8` at 16-column steps j (32 bytes each)
// plus `half` (0 or 1) 16-byte chunks. Then the chunk is
// 8 (j / 4) + ((2 (j % 4)) ^ half ^ row8), so four per-lane offsets cover
// every step and the rest folds into immediates.
struct SwizzleSteps {
  int off[4];
  __device__ __forceinline__ SwizzleSteps(int half, int row8) {
#pragma unroll
    for (int k = 0; k < 4; ++k) off[k] = ((2 * k) ^ half ^ row8) * 16;
  }
  __device__ __forceinline__ int operator()(int j) const { return (j >> 2) * 128 + off[j & 3]; }
};

__device__ __forceinline__ float Ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// (bf16(lo), bf16(hi)) packed low half first, both rounded to nearest even
// (one cvt.rn.bf16x2.f32).
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddr(p)));
}

// c += a · b for one m16n8k16 bf16 tile, fp32 accumulate.
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4],
                                    uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Runs kSteps MMA steps whose B fragments come from ldmatrix: step i + 3's
// fragments are loaded while step i's MMAs issue (a ring of 4), so the MMAs
// do not wait on shared-memory latency. The MMA order is unchanged.
template <int kSteps, typename Load, typename Use>
__device__ __forceinline__ void FragmentPipeline(Load load, Use use) {
  constexpr int kRing = 4;
  uint32_t f[kRing][4];
#pragma unroll
  for (int i = 0; i < kRing - 1 && i < kSteps; ++i) load(f[i], i);
#pragma unroll
  for (int i = 0; i < kSteps; ++i) {
    if (i + kRing - 1 < kSteps) load(f[(i + kRing - 1) % kRing], i + kRing - 1);
    use(f[i % kRing], i);
  }
}

__device__ __forceinline__ float NegInf() { return -__int_as_float(0x7f800000); }

// Running softmax state of the two rows (lane/4 and lane/4 + 8) of a warp's
// 16-row tile that this thread holds, with its D/4 output values per row.
template <int D>
struct RowState {
  static constexpr int kNT = D / 8;
  float o[kNT][4];  // [n-tile][c0..c3]: rows (r, r, r+8, r+8)
  float m[2];
  float l[2];
  __device__ __forceinline__ void Reset() {
#pragma unroll
    for (int i = 0; i < kNT; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) o[i][e] = 0.0f;
    }
    m[0] = m[1] = NegInf();
    l[0] = l[1] = 0.0f;
  }
};

// The 16-row q tile's A fragments (bf16), from a staged tile.
template <int D>
__device__ __forceinline__ void LoadQFrags(uint32_t (&qf)[D / 16][4], const uint8_t* qs,
                                           int lane) {
  const SwizzleSteps sw(lane >> 4, lane & 7);
  const uint8_t* base = qs + (lane & 15) * Layout<D>::kStride;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    LdMatrixX4(qf[kk], base + sw(kk));
  }
}

// S = q · Kᵀ of a 16-row tile and the 64 keys staged in ks: each score is
// one chain over head_dim in 16-wide steps.
template <int D>
__device__ __forceinline__ void ScoreTile(float (&s)[8][4], const uint32_t (&qf)[D / 16][4],
                                          const uint8_t* ks, int lane) {
  const int mi = lane >> 3;
  const int r8 = lane & 7;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = 0.0f;
  }
  const SwizzleSteps sw(mi & 1, r8);
  const uint8_t* base = ks + ((mi >> 1) * 8 + r8) * Layout<D>::kStride;
  // Step i = (kk, pr): 16 dims of head_dim x 16 keys.
  FragmentPipeline<D / 16 * 4>(
      [&](uint32_t (&f)[4], int i) {
        const int kk = i / 4;
        const int pr = i % 4;
        LdMatrixX4(f, base + 16 * pr * Layout<D>::kStride + sw(kk));
      },
      [&](const uint32_t (&f)[4], int i) {
        const int kk = i / 4;
        const int pr = i % 4;
        Mma(s[2 * pr], qf[kk], f[0], f[1]);
        Mma(s[2 * pr + 1], qf[kk], f[2], f[3]);
      });
}

// The softmax half of the contract's block step for keys key0..key0+63 of a
// 16-row tile whose scores are s: masking, the running max and sum, and the
// rescale of o. Leaves bf16(p) in pa for AttendValues. pos0/pos1: positions
// of this thread's two rows (-1: padding row, everything masked).
// kMask false when no row that is ever written has a position below
// key0 + 63: masking would change nothing, so it is compiled out.
template <int D, bool kMask>
__device__ __forceinline__ void SoftmaxTile(RowState<D>& st, float (&s)[8][4], int key0,
                                            int pos0, int pos1, float c, int lane,
                                            uint32_t (&pa)[4][4]) {
  const int t = lane & 3;
  // Mask keys beyond each row's position; row max (exact in any order).
  const int pos[2] = {pos0, pos1};
  float mx[2] = {NegInf(), NegInf()};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + 8 * nt + 2 * t + (e & 1);
      if (kMask && key > pos[e >> 1]) s[nt][e] = NegInf();
      mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
    }
  }
  float alpha[2];
  float msc[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    const float mnew = fmaxf(st.m[r], mx[r]);
    msc[r] = mnew == NegInf() ? 0.0f : __fmul_rn(mnew, c);
    alpha[r] = mnew == st.m[r] ? 1.0f : Ex2(__fmaf_rn(st.m[r], c, -msc[r]));
    st.m[r] = mnew;
  }
  // p = 2^(s c - m c); per-row sum in a fixed order (thread-local in key
  // order, then the quad butterfly, whose partners hold equal bits).
  float rs[2] = {0.0f, 0.0f};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
    float pv[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      pv[e] = Ex2(__fmaf_rn(s[nt][e], c, -msc[e >> 1]));
      rs[e >> 1] = __fadd_rn(rs[e >> 1], pv[e]);
    }
    pa[nt >> 1][(nt & 1) * 2 + 0] = PackBf16(pv[0], pv[1]);
    pa[nt >> 1][(nt & 1) * 2 + 1] = PackBf16(pv[2], pv[3]);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    rs[r] = __fadd_rn(rs[r], __shfl_xor_sync(0xffffffffu, rs[r], 1));
    rs[r] = __fadd_rn(rs[r], __shfl_xor_sync(0xffffffffu, rs[r], 2));
    st.l[r] = __fmaf_rn(st.l[r], alpha[r], rs[r]);
  }
  // o *= alpha; skipped when every row of the warp keeps its max (alpha is
  // exactly 1, and x * 1 == x bit for bit).
  if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
    for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) st.o[nt][e] = __fmul_rn(st.o[nt][e], alpha[e >> 1]);
    }
  }
}

// ScoreTile + SoftmaxTile (the whole first half of a block step).
template <int D, bool kMask>
__device__ __forceinline__ void AttendScores(RowState<D>& st, const uint32_t (&qf)[D / 16][4],
                                             const uint8_t* ks, int key0, int pos0, int pos1,
                                             float c, int lane, uint32_t (&pa)[4][4]) {
  float s[8][4];
  ScoreTile<D>(s, qf, ks, lane);
  SoftmaxTile<D, kMask>(st, s, key0, pos0, pos1, c, lane, pa);
}

// AttendScores with masking when `mask` (warp-uniform) is true.
template <int D>
__device__ __forceinline__ void AttendScoresMasked(RowState<D>& st,
                                                   const uint32_t (&qf)[D / 16][4],
                                                   const uint8_t* ks, int key0, int pos0,
                                                   int pos1, bool mask, float c, int lane,
                                                   uint32_t (&pa)[4][4]) {
  if (mask) {
    AttendScores<D, true>(st, qf, ks, key0, pos0, pos1, c, lane, pa);
  } else {
    AttendScores<D, false>(st, qf, ks, key0, pos0, pos1, c, lane, pa);
  }
}

// Second half of the block step: o += bf16(p) · V in 16-key steps (V rows of
// the same 64 keys staged in vs).
template <int D>
__device__ __forceinline__ void AttendValues(RowState<D>& st, const uint32_t (&pa)[4][4],
                                             const uint8_t* vs, int lane) {
  const int mi = lane >> 3;
  const int r8 = lane & 7;
  const SwizzleSteps sw(mi >> 1, r8);
  const uint8_t* base = vs + ((mi & 1) * 8 + r8) * Layout<D>::kStride;
  // Step i = (kk, pr): 16 keys x 16 dims of head_dim.
  FragmentPipeline<4 * (D / 16)>(
      [&](uint32_t (&f)[4], int i) {
        const int kk = i / (D / 16);
        const int pr = i % (D / 16);
        LdMatrixX4Trans(f, base + 16 * kk * Layout<D>::kStride + sw(pr));
      },
      [&](const uint32_t (&f)[4], int i) {
        const int kk = i / (D / 16);
        const int pr = i % (D / 16);
        Mma(st.o[2 * pr], pa[kk], f[0], f[1]);
        Mma(st.o[2 * pr + 1], pa[kk], f[2], f[3]);
      });
}

// Split fold of one row: how the merged state (M, L, O) absorbs a split's
// (m, l, o). mode 0: empty split (skip), 1: first split (copy), 2: merge.
struct FoldStep {
  int mode;
  float fa;
  float fb;
  float m_new;
};

__device__ __forceinline__ FoldStep FoldPlan(float big_m, float m, float c) {
  if (m == NegInf()) return {0, 1.0f, 0.0f, big_m};
  if (big_m == NegInf()) return {1, 0.0f, 1.0f, m};
  const float mn = fmaxf(big_m, m);
  const float mnc = __fmul_rn(mn, c);
  const float fa = mn == big_m ? 1.0f : Ex2(__fmaf_rn(big_m, c, -mnc));
  const float fb = mn == m ? 1.0f : Ex2(__fmaf_rn(m, c, -mnc));
  return {2, fa, fb, mn};
}

__device__ __forceinline__ float FoldValue(const FoldStep& f, float acc, float x) {
  if (f.mode == 0) return acc;
  if (f.mode == 1) return x;
  return __fmaf_rn(x, f.fb, __fmul_rn(acc, f.fa));
}

// Folds a tile's split state into the merged state (M, L, O): M/L in
// registers, O wherever slot(nt, e) points (the thread's own values: shared
// memory in prefill, registers in the paged kernel's whole-token mode).
template <int D, typename Slot>
__device__ __forceinline__ void FoldTileInto(float (&big_m)[2], float (&big_l)[2], Slot slot,
                                             const RowState<D>& split, float c) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const FoldStep f = FoldPlan(big_m[r], split.m[r], c);
    big_l[r] = FoldValue(f, big_l[r], split.l[r]);
    // Branch on the mode (uniform across a warp but for padding rows), so
    // the loop carries FoldValue's arithmetic for that mode only.
    auto fold = [&](auto mode_const) {
      FoldStep fm = f;
      fm.mode = decltype(mode_const)::value;
#pragma unroll
      for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          float& o = slot(nt, e);
          o = FoldValue(fm, o, split.o[nt][e]);
        }
      }
    };
    if (f.mode == 2) {
      fold(std::integral_constant<int, 2>());
    } else if (f.mode == 1) {
      fold(std::integral_constant<int, 1>());
    }
    big_m[r] = f.m_new;
  }
}

// FoldTileInto with O in shared memory as [n-tile][c][lane] floats of this
// warp.
template <int D>
__device__ __forceinline__ void FoldTile(float (&big_m)[2], float (&big_l)[2], float* big_o,
                                         const RowState<D>& split, float c, int lane) {
  FoldTileInto<D>(
      big_m, big_l, [&](int nt, int e) -> float& { return big_o[(nt * 4 + e) * 32 + lane]; },
      split, c);
}

// Stages kRows q rows (fp32 -> bf16, round to nearest even) into a tile
// with kThreads threads; rows for which row_ptr returns nullptr are zero.
// All of a thread's loads are issued before the first conversion (one
// memory latency, not one per element). `pairs`: rows may be read as float2
// (8-byte aligned).
template <int D, int kRows, int kThreads, typename RowPtr>
__device__ __forceinline__ void StageQ(uint8_t* qs, int tid, bool pairs, RowPtr row_ptr) {
  constexpr int kPairs = D / 2;
  static_assert((kRows * kPairs) % kThreads == 0, "q staging covers the tile exactly");
  constexpr int kIters = kRows * kPairs / kThreads;
  float2 v[kIters];
#pragma unroll
  for (int j = 0; j < kIters; ++j) {
    const int i = tid + j * kThreads;
    const int r = i / kPairs;
    const int c2 = (i - r * kPairs) * 2;
    const float* qr = row_ptr(r);
    v[j] = qr == nullptr ? make_float2(0.0f, 0.0f)
           : pairs       ? *reinterpret_cast<const float2*>(qr + c2)
                         : make_float2(qr[c2], qr[c2 + 1]);
  }
#pragma unroll
  for (int j = 0; j < kIters; ++j) {
    const int i = tid + j * kThreads;
    const int r = i / kPairs;
    const int c2 = (i - r * kPairs) * 2;
    *reinterpret_cast<uint32_t*>(qs + Layout<D>::Offset(r, c2 * 2)) = PackBf16(v[j].x, v[j].y);
  }
}

// Stages rows key0..key0+63 of one tensor (K or V) into dst; row_off(r)
// gives the element offset of row r of the block (only asked for rows with
// key0 + r <= last); rows beyond last are zero (their p is 0 and 0 * 0 adds
// nothing).
template <int D, typename RowOff>
__device__ __forceinline__ void StageRows(const TcParams& p, const uint16_t* src, uint8_t* dst,
                                          int key0, int last, int tid, int threads,
                                          RowOff row_off) {
  constexpr int kChunks = Layout<D>::kChunks;
  for (int i = tid; i < kTcKeyBlock * kChunks; i += threads) {
    const int r = i / kChunks;
    const int ch = i - r * kChunks;
    uint8_t* d = dst + Layout<D>::Offset(r, ch * 16);
    const int64_t off = row_off(r) + ch * 8;  // every thread asks (shuffles)
    if (key0 + r > last) {
      *reinterpret_cast<uint4*>(d) = make_uint4(0, 0, 0, 0);
    } else if (p.vec) {
      CpAsync16(d, src + off);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) reinterpret_cast<uint16_t*>(d)[e] = src[off + e];
    }
  }
}

// Prefill CTA: kPrefillWarps warps of 16 query rows each; the CTA covers
// kHeads query heads of one KV head (GQA: they read the same K/V) and
// 16 * kPrefillWarps / kHeads consecutive tokens. K/V blocks of 64 keys are
// staged with cp.async through kPrefillStages buffers shared by all warps;
// each warp folds its splits inline into its own slice of shared memory.
template <int D, int kHeads>
struct PrefillShape {
  static constexpr int kThreads = 32 * kPrefillWarps;
  static constexpr int kWarpsPerHead = kPrefillWarps / kHeads;
  static constexpr int kRows = 16 * kWarpsPerHead;  // tokens per CTA
  static constexpr int kQBytes = 16 * kPrefillWarps * Layout<D>::kStride;
  static constexpr int kOWarpBytes = (D / 8) * 4 * 32 * 4;  // merged O, one warp
  static constexpr int kOBytes = kPrefillWarps * kOWarpBytes;
  static constexpr int kFrontBytes = kQBytes > kOBytes ? kQBytes : kOBytes;
  static constexpr int kSmem = kFrontBytes + kPrefillStages * 2 * Layout<D>::kTile;
  // Fast staging: every thread copies the same chunk column of kPerThread
  // rows, kRowStep apart.
  static constexpr int kRowStep = kThreads / Layout<D>::kChunks;
  static constexpr int kPerThread = kTcKeyBlock / kRowStep;
  static_assert(kThreads % Layout<D>::kChunks == 0 && kTcKeyBlock % kRowStep == 0,
                "staging covers a block exactly");
  static_assert(kRowStep % 8 == 0, "a thread's staged rows share one swizzle");
};

template <int D, int kHeads>
__global__ void __launch_bounds__(32 * kPrefillWarps, 1)
    PrefillTcKernel(const TcParams p, int tiles) {
  using L = Layout<D>;
  using S = PrefillShape<D, kHeads>;
  extern __shared__ __align__(16) uint8_t smem[];
  // The q tile, then (once q sits in registers) the merged O of the warps.
  uint8_t* qs = smem;
  uint8_t* kbuf = smem + S::kFrontBytes;
  uint8_t* vbuf = kbuf + kPrefillStages * L::kTile;
  // Longest tiles (of every head group) first.
  const int heads_y = p.hq / kHeads;
  const int tile = tiles - 1 - static_cast<int>(blockIdx.x) / heads_y;
  const int hy = static_cast<int>(blockIdx.x) % heads_y;
  const int w = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int h = hy * kHeads + w / S::kWarpsPerHead;
  const int g = (hy * kHeads) / p.group;
  const int t0 = tile * S::kRows;
  const int wrow = 16 * (w % S::kWarpsPerHead);  // warp's first row in the tile

  const int last = min(t0 + S::kRows - 1, p.tokens - 1);
  const int nblocks = last / kTcKeyBlock + 1;
  const int64_t head_off = static_cast<int64_t>(g) * D;
  // This thread's chunk of every staged block (fast path).
  const int ch = threadIdx.x % L::kChunks;
  const int r0 = threadIdx.x / L::kChunks;
  const int64_t g_off = static_cast<int64_t>(r0) * p.ldk + head_off + ch * 8;
  const int64_t g_step = static_cast<int64_t>(S::kRowStep) * p.ldk;
  // Rows r0 + j * kRowStep share r0's swizzle (kRowStep % 8 == 0).
  const int s_off = L::Offset(r0, ch * 16);
  auto stage = [&](int b) {
    uint8_t* kd = kbuf + (b % kPrefillStages) * L::kTile;
    uint8_t* vd = vbuf + (b % kPrefillStages) * L::kTile;
    const int key0 = b * kTcKeyBlock;
    if (p.vec && key0 + kTcKeyBlock - 1 <= last) {
      const int64_t base = static_cast<int64_t>(key0) * p.ldk + g_off;
#pragma unroll
      for (int j = 0; j < S::kPerThread; ++j) {
        CpAsync16(kd + s_off + j * S::kRowStep * L::kStride, p.k + base + j * g_step);
        CpAsync16(vd + s_off + j * S::kRowStep * L::kStride, p.v + base + j * g_step);
      }
    } else {
      auto row_off = [&](int r) { return static_cast<int64_t>(key0 + r) * p.ldk + head_off; };
      StageRows<D>(p, p.k, kd, key0, last, threadIdx.x, S::kThreads, row_off);
      StageRows<D>(p, p.v, vd, key0, last, threadIdx.x, S::kThreads, row_off);
    }
  };
#pragma unroll
  for (int b = 0; b < kPrefillStages - 1; ++b) {
    if (b < nblocks) stage(b);
    CpAsyncCommit();
  }
  // q while the first K/V blocks are in flight.
  const bool q_pairs = p.ldq % 2 == 0 && reinterpret_cast<uintptr_t>(p.q) % 8 == 0;
  StageQ<D, 16 * kPrefillWarps, S::kThreads>(qs, threadIdx.x, q_pairs, [&](int r) -> const float* {
    const int tok = t0 + r % S::kRows;
    const int hr = hy * kHeads + r / S::kRows;
    return tok < p.tokens ? p.q + static_cast<int64_t>(tok) * p.ldq +
                                static_cast<int64_t>(hr) * D
                          : nullptr;
  });
  __syncthreads();  // q staged
  uint32_t qf[D / 16][4];
  LoadQFrags<D>(qf, qs + w * 16 * L::kStride, lane);
  float* warp_o = reinterpret_cast<float*>(smem + w * S::kOWarpBytes);
  const int row0 = t0 + wrow + (lane >> 2);
  const int pos0 = row0 < p.tokens ? row0 : -1;
  const int pos1 = row0 + 8 < p.tokens ? row0 + 8 : -1;
  const int warp_first = t0 + wrow;
  const int warp_last = warp_first < p.tokens ? min(warp_first + 15, p.tokens - 1) : -1;
  // Blocks past a warp's last row are all masked for it: skipped
  // (warp-uniform).
  auto active = [&](int b) { return b < nblocks && b * kTcKeyBlock <= warp_last; };
  auto tile_of = [&](uint8_t* buf, int b) { return buf + (b % kPrefillStages) * L::kTile; };

  RowState<D> st;
  st.Reset();
  float big_m[2] = {NegInf(), NegInf()};
  float big_l[2] = {0.0f, 0.0f};
  for (int b = 0; b < nblocks; ++b) {
    CpAsyncWait<kPrefillStages - 2>();  // block b landed (this thread's part)
    // Every thread's part of block b is visible, and every warp is done with
    // block b - 1, whose buffer the stage call below refills. (The first
    // pass also orders every warp's q loads before any fold writes O.)
    __syncthreads();
    if (b + kPrefillStages - 1 < nblocks) stage(b + kPrefillStages - 1);
    CpAsyncCommit();  // possibly empty: keeps the group count uniform
    if (active(b)) {
      const int key0 = b * kTcKeyBlock;
      uint32_t pa[4][4];
      // Rows past the sequence end are never written: no need to mask them.
      AttendScoresMasked<D>(st, qf, tile_of(kbuf, b), key0, pos0, pos1,
                            key0 + kTcKeyBlock - 1 > warp_first, p.c, lane, pa);
      AttendValues<D>(st, pa, tile_of(vbuf, b), lane);
    }
    if ((b + 1) % kBlocksPerSplit == 0 || b + 1 == nblocks) {
      FoldTile<D>(big_m, big_l, warp_o, st, p.c, lane);
      st.Reset();
    }
  }
  CpAsyncWait<0>();
  // Output: each thread's two adjacent dims of a row in one 8-byte store
  // when aligned (4 lanes fill a 32-byte sector).
  const bool pairs = p.ldo % 2 == 0 && reinterpret_cast<uintptr_t>(p.out) % 8 == 0;
  const int t = lane & 3;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int tok = row0 + 8 * r;
    if (tok >= p.tokens) continue;
    float* dst = p.out + static_cast<int64_t>(tok) * p.ldo + static_cast<int64_t>(h) * D + 2 * t;
#pragma unroll
    for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
      const float lo = __fdiv_rn(warp_o[(nt * 4 + 2 * r) * 32 + lane], big_l[r]);
      const float hi = __fdiv_rn(warp_o[(nt * 4 + 2 * r + 1) * 32 + lane], big_l[r]);
      if (pairs) {
        *reinterpret_cast<float2*>(dst + 8 * nt) = make_float2(lo, hi);
      } else {
        dst[8 * nt] = lo;
        dst[8 * nt + 1] = hi;
      }
    }
  }
}

// Splits of a token's key range; 0 when its position or sequence is invalid.
__device__ __forceinline__ int TokenSplits(const TcParams& p, int pos, int seq) {
  if (pos < 0 || seq < 0 || seq >= p.num_seqs || pos / p.page_size >= p.max_blocks) {
    return 0;
  }
  return pos / (p.split_blocks * kTcKeyBlock) + 1;
}

// One warp per (token, KV head, split), or, in whole-token mode, per (token,
// KV head): the warp then walks every split of the token and folds each into
// registers with the prefill kernel's FoldTile arithmetic, in split order —
// the same operations on the same values as CombineTcKernel, so the mode
// never changes a bit; it only trades parallelism within a token for fewer
// warps, no partials and no second kernel when the batch fills the GPU.
// K and V of a block are staged in
// separate cp.async groups into single buffers, so K of block b+1 loads while
// the warp computes p·V of block b and V of block b+1 while it computes the
// scores of b+1 (36 KB of shared memory per warp at head_dim 128: 6 warps
// per SM).
template <int D, bool kWhole>
__global__ void __launch_bounds__(32) PagedTcKernel(const TcParams p) {
  using L = Layout<D>;
  extern __shared__ __align__(16) uint8_t smem[];
  uint8_t* qs = smem;
  uint8_t* kbuf = smem + 16 * L::kStride;
  uint8_t* vbuf = kbuf + L::kTile;
  const int lane = threadIdx.x;
  int64_t item = blockIdx.x;
  const int sp = static_cast<int>(item % p.max_splits);
  item /= p.max_splits;
  const int g = static_cast<int>(item % p.hkv);
  const int tok = static_cast<int>(item / p.hkv);
  const int pos = p.positions[tok];
  const int seq = p.seq_ids[tok];
  const int nspl = TokenSplits(p, pos, seq);
  if (sp >= max(nspl, 1)) return;
  const int32_t* bt = p.block_tables + static_cast<int64_t>(nspl > 0 ? seq : 0) * p.max_blocks;
  bool bad = nspl == 0;
  if (!bad) {
    int any = 0;
    for (int b = lane; b <= pos / p.page_size; b += 32) {
      const int32_t pg = bt[b];
      if (pg < 0 || pg >= p.num_pages) any = 1;
    }
    bad = __any_sync(0xffffffffu, any) != 0;
  }
  const int64_t part_base =
      (static_cast<int64_t>(tok) * p.hq + static_cast<int64_t>(g) * p.group) * p.max_splits + sp;
  const bool direct = nspl <= 1 || kWhole;  // writes out, not partials
  if (bad) {  // poison: NaN output (or NaN partials, which fold to NaN)
    const float nan = __int_as_float(0x7fc00000);
    for (int i = lane; i < p.group * D; i += 32) {
      const int r = i / D;
      const int d = i - r * D;
      const int h = g * p.group + r;
      if (direct) {
        p.out[static_cast<int64_t>(tok) * p.ldo + static_cast<int64_t>(h) * D + d] = nan;
      } else {
        const int64_t pi = part_base + static_cast<int64_t>(r) * p.max_splits;
        p.part_o[pi * D + d] = nan;
        if (d < 2) p.part_ml[pi * 2 + d] = nan;
      }
    }
    return;
  }

  const int ps = static_cast<int>(p.page_size);
  const int64_t head_off = static_cast<int64_t>(g) * D;
  // Element offsets of the block's 64 rows: lane owns rows lane and lane+32
  // (one block-table lookup each); the copy loop fetches them by shuffle.
  int64_t off_lo = 0;
  int64_t off_hi = 0;
  auto offsets = [&](int key0) {
    auto at = [&](int j) -> int64_t {
      if (j > pos) return 0;
      const int64_t row = static_cast<int64_t>(bt[j / ps]) * ps + j % ps;
      return row * p.hkv * D + head_off;
    };
    off_lo = at(key0 + lane);
    off_hi = at(key0 + 32 + lane);
  };
  auto row_off = [&](int r) {
    const int64_t lo = __shfl_sync(0xffffffffu, off_lo, r & 31);
    const int64_t hi = __shfl_sync(0xffffffffu, off_hi, r & 31);
    return r < 32 ? lo : hi;
  };
  const int b_begin = kWhole ? 0 : sp * p.split_blocks;
  const int b_end =
      kWhole ? pos / kTcKeyBlock + 1 : min(b_begin + p.split_blocks, pos / kTcKeyBlock + 1);
  offsets(b_begin * kTcKeyBlock);
  StageRows<D>(p, p.k, kbuf, b_begin * kTcKeyBlock, pos, lane, 32, row_off);
  CpAsyncCommit();
  StageRows<D>(p, p.v, vbuf, b_begin * kTcKeyBlock, pos, lane, 32, row_off);
  CpAsyncCommit();
  // q while the first K/V block is in flight.
  const bool q_pairs = p.ldq % 2 == 0 && reinterpret_cast<uintptr_t>(p.q) % 8 == 0;
  StageQ<D, 16, 32>(qs, lane, q_pairs, [&](int r) -> const float* {
    return r < p.group ? p.q + static_cast<int64_t>(tok) * p.ldq +
                             static_cast<int64_t>(g * p.group + r) * D
                       : nullptr;
  });
  __syncwarp();
  uint32_t qf[D / 16][4];
  LoadQFrags<D>(qf, qs, lane);
  const int rr = lane >> 2;
  const int pos0 = rr < p.group ? pos : -1;
  const int pos1 = rr + 8 < p.group ? pos : -1;

  RowState<D> st;
  st.Reset();
  // Whole-token mode: the folded state of the splits so far.
  float big_o[RowState<D>::kNT][4];
#pragma unroll
  for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) big_o[nt][e] = 0.0f;
  }
  float big_m[2] = {NegInf(), NegInf()};
  float big_l[2] = {0.0f, 0.0f};
  auto big_slot = [&](int nt, int e) -> float& { return big_o[nt][e]; };
  for (int b = b_begin; b < b_end; ++b) {
    const int key0 = b * kTcKeyBlock;
    const bool more = b + 1 < b_end;
    CpAsyncWait<1>();  // K(b) landed (V(b) may still be in flight)
    __syncwarp();
    uint32_t pa[4][4];
    // Padding rows (beyond the group) are never written: no need to mask.
    AttendScoresMasked<D>(st, qf, kbuf, key0, pos0, pos1, key0 + kTcKeyBlock - 1 > pos, p.c,
                          lane, pa);
    __syncwarp();
    if (more) {
      offsets(key0 + kTcKeyBlock);
      StageRows<D>(p, p.k, kbuf, key0 + kTcKeyBlock, pos, lane, 32, row_off);
    }
    CpAsyncCommit();  // possibly empty: keeps the group count uniform
    CpAsyncWait<1>();  // V(b) landed
    __syncwarp();
    AttendValues<D>(st, pa, vbuf, lane);
    __syncwarp();
    if (more) StageRows<D>(p, p.v, vbuf, key0 + kTcKeyBlock, pos, lane, 32, row_off);
    CpAsyncCommit();
    if (kWhole && ((b + 1) % p.split_blocks == 0 || !more)) {
      FoldTileInto<D>(big_m, big_l, big_slot, st, p.c);
      st.Reset();
    }
  }
  CpAsyncWait<0>();
  const int t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = rr + 8 * (e >> 1);
      if (r >= p.group) continue;
      const int d = 8 * nt + 2 * t + (e & 1);
      if (kWhole) {
        p.out[static_cast<int64_t>(tok) * p.ldo +
              static_cast<int64_t>(g * p.group + r) * D + d] =
            __fdiv_rn(big_o[nt][e], big_l[e >> 1]);
      } else if (nspl == 1) {
        p.out[static_cast<int64_t>(tok) * p.ldo +
              static_cast<int64_t>(g * p.group + r) * D + d] =
            __fdiv_rn(st.o[nt][e], st.l[e >> 1]);
      } else {
        const int64_t pi = part_base + static_cast<int64_t>(r) * p.max_splits;
        p.part_o[pi * D + d] = st.o[nt][e];
        if (nt == 0 && t == 0 && (e & 1) == 0) {
          p.part_ml[pi * 2] = st.m[e >> 1];
          p.part_ml[pi * 2 + 1] = st.l[e >> 1];
        }
      }
    }
  }
}

// Folds the split partials of tokens with more than one split, in split
// order, with the prefill kernel's fold arithmetic. One thread per dim.
template <int D>
__global__ void __launch_bounds__(D) CombineTcKernel(const TcParams p) {
  const int tok = blockIdx.x;
  const int h = blockIdx.y;
  const int d = threadIdx.x;
  const int nspl = TokenSplits(p, p.positions[tok], p.seq_ids[tok]);
  if (nspl <= 1) return;
  const int64_t base = (static_cast<int64_t>(tok) * p.hq + h) * p.max_splits;
  float big_m = NegInf();
  float big_l = 0.0f;
  float acc = 0.0f;
  for (int s = 0; s < nspl; ++s) {
    const FoldStep f = FoldPlan(big_m, p.part_ml[(base + s) * 2], p.c);
    big_l = FoldValue(f, big_l, p.part_ml[(base + s) * 2 + 1]);
    acc = FoldValue(f, acc, p.part_o[(base + s) * D + d]);
    big_m = f.m_new;
  }
  p.out[static_cast<int64_t>(tok) * p.ldo + static_cast<int64_t>(h) * D + d] =
      __fdiv_rn(acc, big_l);
}

float Log2eScale(float scale) {
  return static_cast<float>(static_cast<double>(scale) * 1.4426950408889634);
}

template <typename Kernel>
absl::Status AllowSmem(Kernel kernel, size_t smem) {
  if (smem > 48 * 1024) {
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  return absl::OkStatus();
}

template <int D, int kHeads>
absl::Status LaunchPrefill(const TcParams& p, cudaStream_t stream) {
  using S = PrefillShape<D, kHeads>;
  auto kernel = PrefillTcKernel<D, kHeads>;
  if (absl::Status s = AllowSmem(kernel, S::kSmem); !s.ok()) return s;
  const int tiles = (p.tokens + S::kRows - 1) / S::kRows;
  const int64_t ctas = static_cast<int64_t>(tiles) * (p.hq / kHeads);
  if (ctas > 0x7fffffff) {
    return absl::InvalidArgumentError("attention (CUDA): tokens x heads too large");
  }
  kernel<<<static_cast<unsigned>(ctas), S::kThreads, S::kSmem, stream>>>(p, tiles);
  LOCKSTEP_CUDA_CHECK_LAUNCH("PrefillTcKernel");
  return absl::OkStatus();
}

// Two query heads per CTA when they share a KV head (any even group): all
// warps then cover the same tokens, so none idles on the causal diagonal.
template <int D>
absl::Status LaunchPrefill(const TcParams& p, cudaStream_t stream) {
  if (p.group % 2 == 0) return LaunchPrefill<D, 2>(p, stream);
  return LaunchPrefill<D, 1>(p, stream);
}

// The split partials come from the device's default stream-ordered pool;
// keep freed blocks in the pool (threshold: unlimited) so that steady-state
// decode does not return memory to the driver and re-map it every step.
absl::Status KeepPoolMemory() {
  static std::mutex mu;
  static std::set<int> done;
  int dev = 0;
  LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (done.count(dev) != 0) return absl::OkStatus();
  cudaMemPool_t pool;
  LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaDeviceGetDefaultMemPool(&pool, dev));
  uint64_t threshold = UINT64_MAX;
  LOCKSTEP_CUDA_RETURN_IF_ERROR(
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
  done.insert(dev);
  return absl::OkStatus();
}

template <int D>
absl::Status LaunchPaged(TcParams p, cudaStream_t stream) {
  using L = Layout<D>;
  const size_t smem = 16 * L::kStride + 2 * L::kTile;
  auto kernel = p.whole_tokens ? PagedTcKernel<D, true> : PagedTcKernel<D, false>;
  if (absl::Status s = AllowSmem(kernel, smem); !s.ok()) return s;
  const int64_t items = static_cast<int64_t>(p.tokens) * p.hkv * p.max_splits;
  if (items > 0x7fffffff) {
    return absl::InvalidArgumentError("attention (CUDA): batch x context too large");
  }
  void* work = nullptr;
  if (p.max_splits > 1) {
    if (absl::Status s = KeepPoolMemory(); !s.ok()) return s;
    const int64_t parts = static_cast<int64_t>(p.tokens) * p.hq * p.max_splits;
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaMallocAsync(
        &work, static_cast<size_t>(parts) * (D + 2) * sizeof(float), stream));
    p.part_o = static_cast<float*>(work);
    p.part_ml = p.part_o + parts * D;
  }
  kernel<<<static_cast<unsigned>(items), 32, smem, stream>>>(p);
  cudaError_t launch = cudaGetLastError();
  if (launch == cudaSuccess && p.max_splits > 1) {
    CombineTcKernel<D><<<dim3(p.tokens, p.hq), D, 0, stream>>>(p);
    launch = cudaGetLastError();
  }
  if (work != nullptr) {
    LOCKSTEP_CUDA_RETURN_IF_ERROR(cudaFreeAsync(work, stream));
  }
  if (launch != cudaSuccess) {
    return absl::InternalError(
        absl::StrCat("PagedTcKernel launch: ", cudaGetErrorString(launch)));
  }
  return absl::OkStatus();
}

// (token, KV head) warps from which the invariant paged kernel runs in
// whole-token mode: half a wave of resident warps. Measured on the H200
// (model_step_bench, Qwen3-1.7B shape, context 768): whole-token mode is
// faster from batch 64 (512 warps: 7.40 vs 7.82 ms per step) and at 256
// (17.08 vs 21.28 ms). LOCKSTEP_PAGED_WHOLE_TOKEN_MIN_WARPS=n overrides it
// for measurements (0: always, a huge n: never); no value changes a bit.
int64_t WholeTokenMinWarps() {
  static const int64_t from_env = [] {
    const char* v = std::getenv("LOCKSTEP_PAGED_WHOLE_TOKEN_MIN_WARPS");
    return v == nullptr || *v == '\0' ? int64_t{-1} : std::max<int64_t>(0, std::atoll(v));
  }();
  return from_env >= 0 ? from_env : int64_t{SmCount()} * kPagedWarpsPerSm / 2;
}

// The fields prefill and paged attention share; vec: K/V bases 16-byte
// aligned (prefill also needs its row stride aligned).
TcParams CommonParams(const float* q, int64_t ldq, float* out, int64_t ldo, const void* k,
                      const void* v, int64_t tokens, int64_t hq, int64_t hkv, float scale) {
  TcParams p{};
  p.q = q;
  p.ldq = ldq;
  p.out = out;
  p.ldo = ldo;
  p.k = static_cast<const uint16_t*>(k);
  p.v = static_cast<const uint16_t*>(v);
  p.tokens = static_cast<int>(tokens);
  p.hq = static_cast<int>(hq);
  p.hkv = static_cast<int>(hkv);
  p.group = p.hq / p.hkv;
  p.vec = reinterpret_cast<uintptr_t>(k) % 16 == 0 && reinterpret_cast<uintptr_t>(v) % 16 == 0;
  p.c = Log2eScale(scale);
  p.split_blocks = kBlocksPerSplit;
  return p;
}

}  // namespace

bool TcAttentionApplies(DType kv_dtype, int64_t head_dim, int64_t group) {
  return kv_dtype == DType::kBF16 && (head_dim == 64 || head_dim == 128) &&
         group >= 1 && group <= 16;
}

absl::Status PrefillAttentionTc(const PrefillAttentionArgs& args, void* stream) {
  TcParams p = CommonParams(args.q, args.ldq, args.out, args.ldo, args.k, args.v, args.tokens,
                            args.num_q_heads, args.num_kv_heads, args.scale);
  p.ldk = args.ldk;
  p.vec = p.vec && (args.ldk * 2) % 16 == 0;
  if (args.head_dim == 64) return LaunchPrefill<64>(p, AsStream(stream));
  return LaunchPrefill<128>(p, AsStream(stream));
}

absl::Status PagedAttentionTc(const PagedAttentionArgs& args, void* stream) {
  const PagedKvCache& c = args.cache;
  TcParams p = CommonParams(args.q, args.ldq, args.out, args.ldo, c.k, c.v, args.tokens,
                            args.num_q_heads, c.num_kv_heads, args.scale);
  p.positions = args.positions;
  p.seq_ids = args.seq_ids;
  p.block_tables = args.block_tables;
  p.num_seqs = args.num_seqs;
  p.max_blocks = args.max_blocks_per_seq;
  p.page_size = c.page_size;
  p.num_pages = c.num_pages;
  const int64_t max_keys = args.max_blocks_per_seq * c.page_size;
  const int64_t split_keys =
      args.batch_dependent_splits
          ? StandardSplitKeys(args.tokens, c.num_kv_heads, max_keys, SmCount() * kPagedWarpsPerSm)
          : kTcSplitKeys;
  p.split_blocks = static_cast<int>(split_keys / kTcKeyBlock);
  p.max_splits = static_cast<int>(
      std::max<int64_t>(1, (max_keys + split_keys - 1) / split_keys));
  if (p.max_splits > 1 && !args.batch_dependent_splits &&
      args.tokens * c.num_kv_heads >= WholeTokenMinWarps()) {
    p.whole_tokens = 1;
    p.max_splits = 1;
  }
  if (c.head_dim == 64) return LaunchPaged<64>(p, AsStream(stream));
  return LaunchPaged<128>(p, AsStream(stream));
}

}  // namespace lockstep::kernels::cuda
