// Tensor-core attention over bf16 K/V with the fixed block and split order of
// attention_tc.h. One device function (AttendBlock) holds all per-block
// arithmetic of a 16-row tile and one (FoldPlan/FoldValue) the split merge;
// the prefill kernel, the paged split kernel and the split combiner only
// differ in which rows they put in a tile and where bytes come from:
//  - PrefillTcKernel: a CTA of 4 warps owns 64 consecutive query tokens of
//    one query head; K/V blocks of 64 keys are staged with cp.async (double
//    buffered) and shared by the 4 warps; each warp folds its splits inline.
//  - PagedTcKernel: one warp per (token, KV head, split); the tile's rows are
//    the query heads of that KV head (GQA packing), K/V rows are looked up
//    through the block table. A token with one split writes its output; with
//    more, each split writes (m, l, o) and CombineTcKernel folds them in
//    split order.
// mma.m16n8k16 computes every output element from its own row of A and
// column of B, so which other rows share a tile never changes a row's bits;
// keys beyond a row's position get p = 0 and alpha = 1 exactly, so visiting
// extra (masked) blocks leaves a row's state unchanged.
#include "kernels/cuda/attention_tc.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_util.cuh"

namespace lockstep::kernels::cuda {
namespace {

constexpr int kBlocksPerSplit = kTcSplitKeys / kTcKeyBlock;  // 8
constexpr int kPrefillWarps = 4;
constexpr int kPrefillRows = 16 * kPrefillWarps;  // query tokens per CTA
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
  int max_splits;  // paged: splits per token in the grid
  float c;         // scale * log2(e)
  float* part_o;   // paged, max_splits > 1: [tokens, hq, max_splits, D]
  float* part_ml;  // [tokens, hq, max_splits, 2]
};

template <int D>
struct Layout {
  static constexpr int kStride = (D + 8) * 2;  // bytes per staged row (+16: no bank conflicts)
  static constexpr int kTile = kTcKeyBlock * kStride;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
};

__device__ __forceinline__ float Ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  return static_cast<uint32_t>(F32ToBf16Bits(lo)) |
         (static_cast<uint32_t>(F32ToBf16Bits(hi)) << 16);
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
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    LdMatrixX4(qf[kk], qs + (lane & 15) * Layout<D>::kStride + (kk * 16 + (lane >> 4) * 8) * 2);
  }
}

// First half of the contract's block step for a 16-row tile: scores of keys
// key0..key0+63 (staged in ks), masking, the running max and sum, and the
// rescale of o. Leaves bf16(p) in pa for AttendValues. pos0/pos1: positions
// of this thread's two rows (-1: padding row, everything masked).
// `mask` false (warp-uniform) when no row that is ever written has a
// position below key0 + 63: masking would change nothing, so it is skipped.
template <int D>
__device__ __forceinline__ void AttendScores(RowState<D>& st, const uint32_t (&qf)[D / 16][4],
                                             const uint8_t* ks, int key0, int pos0, int pos1,
                                             bool mask, float c, int lane,
                                             uint32_t (&pa)[4][4]) {
  constexpr int kStride = Layout<D>::kStride;
  const int t = lane & 3;
  const int mi = lane >> 3;
  const int r8 = lane & 7;
  float s[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = 0.0f;
  }
  // S = q · Kᵀ: each score is one chain over head_dim in 16-wide steps.
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int pr = 0; pr < 4; ++pr) {
      uint32_t b[4];
      LdMatrixX4(b, ks + (16 * pr + (mi >> 1) * 8 + r8) * kStride + (kk * 16 + (mi & 1) * 8) * 2);
      Mma(s[2 * pr], qf[kk], b[0], b[1]);
      Mma(s[2 * pr + 1], qf[kk], b[2], b[3]);
    }
  }
  // Mask keys beyond each row's position; row max (exact in any order).
  const int pos[2] = {pos0, pos1};
  float mx[2] = {NegInf(), NegInf()};
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + 8 * nt + 2 * t + (e & 1);
      if (mask && key > pos[e >> 1]) s[nt][e] = NegInf();
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
#pragma unroll
  for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) st.o[nt][e] = __fmul_rn(st.o[nt][e], alpha[e >> 1]);
  }
}

// Second half of the block step: o += bf16(p) · V in 16-key steps (V rows of
// the same 64 keys staged in vs).
template <int D>
__device__ __forceinline__ void AttendValues(RowState<D>& st, const uint32_t (&pa)[4][4],
                                             const uint8_t* vs, int lane) {
  constexpr int kStride = Layout<D>::kStride;
  const int mi = lane >> 3;
  const int r8 = lane & 7;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
    for (int pr = 0; pr < D / 16; ++pr) {
      uint32_t b[4];
      LdMatrixX4Trans(b, vs + (16 * kk + (mi & 1) * 8 + r8) * kStride + (16 * pr + (mi >> 1) * 8) * 2);
      Mma(st.o[2 * pr], pa[kk], b[0], b[1]);
      Mma(st.o[2 * pr + 1], pa[kk], b[2], b[3]);
    }
  }
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

// Folds a tile's split state into the merged state: M/L in registers, O in
// shared memory as [n-tile][c][lane] floats of this warp (each thread only
// touches its own values).
template <int D>
__device__ __forceinline__ void FoldTile(float (&big_m)[2], float (&big_l)[2], float* big_o,
                                         const RowState<D>& split, float c, int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const FoldStep f = FoldPlan(big_m[r], split.m[r], c);
    big_l[r] = FoldValue(f, big_l[r], split.l[r]);
#pragma unroll
    for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        float* slot = big_o + (nt * 4 + e) * 32 + lane;
        *slot = FoldValue(f, *slot, split.o[nt][e]);
      }
    }
    big_m[r] = f.m_new;
  }
}

// Stages q rows (fp32 -> bf16, round to nearest even) into a tile; rows for
// which row_ptr returns nullptr are zero. `threads` threads starting at tid.
template <int D, typename RowPtr>
__device__ __forceinline__ void StageQ(uint8_t* qs, int rows, int tid, int threads,
                                       RowPtr row_ptr) {
  for (int i = tid; i < rows * (D / 2); i += threads) {
    const int r = i / (D / 2);
    const int c2 = (i - r * (D / 2)) * 2;
    const float* qr = row_ptr(r);
    const uint32_t packed = qr == nullptr ? 0u : PackBf16(qr[c2], qr[c2 + 1]);
    *reinterpret_cast<uint32_t*>(qs + r * Layout<D>::kStride + c2 * 2) = packed;
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
    uint8_t* d = dst + r * Layout<D>::kStride + ch * 16;
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

template <int D>
__global__ void __launch_bounds__(32 * kPrefillWarps, 2)
    PrefillTcKernel(const TcParams p) {
  using L = Layout<D>;
  extern __shared__ __align__(16) uint8_t smem[];
  // The q tile, then (once q sits in registers) the merged O of the 4 warps.
  uint8_t* qs = smem;
  float* merged_o = reinterpret_cast<float*>(smem);
  constexpr int kQBytes = kPrefillRows * L::kStride;
  constexpr int kOBytes = kPrefillWarps * (D / 8) * 4 * 32 * 4;
  uint8_t* kbuf = smem + (kQBytes > kOBytes ? kQBytes : kOBytes);
  uint8_t* vbuf = kbuf + 2 * L::kTile;
  const int tile = gridDim.x - 1 - blockIdx.x;  // longest tiles first
  const int h = blockIdx.y;
  const int g = h / p.group;
  const int t0 = tile * kPrefillRows;
  const int w = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int threads = blockDim.x;

  StageQ<D>(qs, kPrefillRows, threadIdx.x, threads, [&](int r) -> const float* {
    const int tok = t0 + r;
    return tok < p.tokens ? p.q + static_cast<int64_t>(tok) * p.ldq +
                                static_cast<int64_t>(h) * D
                          : nullptr;
  });
  const int last = min(t0 + kPrefillRows - 1, p.tokens - 1);
  const int nblocks = last / kTcKeyBlock + 1;
  const int64_t head_off = static_cast<int64_t>(g) * D;
  auto stage = [&](int b) {
    const int buf = b & 1;
    const int key0 = b * kTcKeyBlock;
    auto row_off = [&](int r) { return static_cast<int64_t>(key0 + r) * p.ldk + head_off; };
    StageRows<D>(p, p.k, kbuf + buf * L::kTile, key0, last, threadIdx.x, threads, row_off);
    StageRows<D>(p, p.v, vbuf + buf * L::kTile, key0, last, threadIdx.x, threads, row_off);
  };
  stage(0);
  CpAsyncCommit();
  __syncthreads();  // q staged
  uint32_t qf[D / 16][4];
  LoadQFrags<D>(qf, qs + w * 16 * L::kStride, lane);
  float* warp_o = merged_o + w * (D / 8) * 4 * 32;
  const int row0 = t0 + 16 * w + (lane >> 2);
  const int pos0 = row0 < p.tokens ? row0 : -1;
  const int pos1 = row0 + 8 < p.tokens ? row0 + 8 : -1;
  const int warp_first = t0 + 16 * w;
  const int warp_last = warp_first < p.tokens ? min(warp_first + 15, p.tokens - 1) : -1;

  RowState<D> st;
  st.Reset();
  float big_m[2] = {NegInf(), NegInf()};
  float big_l[2] = {0.0f, 0.0f};
  for (int b = 0; b < nblocks; ++b) {
    if (b + 1 < nblocks) {
      stage(b + 1);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();  // block b staged; every warp holds its q fragments
    const int key0 = b * kTcKeyBlock;
    if (key0 <= warp_last) {  // warp-uniform; skipped blocks are all masked
      uint32_t pa[4][4];
      // Rows past the sequence end are never written: no need to mask them.
      const bool mask = key0 + kTcKeyBlock - 1 > warp_first;
      AttendScores<D>(st, qf, kbuf + (b & 1) * L::kTile, key0, pos0, pos1, mask, p.c, lane,
                      pa);
      AttendValues<D>(st, pa, vbuf + (b & 1) * L::kTile, lane);
    }
    if ((b + 1) % kBlocksPerSplit == 0 || b + 1 == nblocks) {
      FoldTile<D>(big_m, big_l, warp_o, st, p.c, lane);
      st.Reset();
    }
    __syncthreads();
  }
  const int t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < RowState<D>::kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int tok = row0 + 8 * (e >> 1);
      if (tok >= p.tokens) continue;
      const int d = 8 * nt + 2 * t + (e & 1);
      p.out[static_cast<int64_t>(tok) * p.ldo + static_cast<int64_t>(h) * D + d] =
          __fdiv_rn(warp_o[(nt * 4 + e) * 32 + lane], big_l[e >> 1]);
    }
  }
}

// Splits of a token's key range; 0 when its position or sequence is invalid.
__device__ __forceinline__ int TokenSplits(const TcParams& p, int pos, int seq) {
  if (pos < 0 || seq < 0 || seq >= p.num_seqs || pos / p.page_size >= p.max_blocks) {
    return 0;
  }
  return pos / kTcSplitKeys + 1;
}

// One warp per (token, KV head, split). K and V of a block are staged in
// separate cp.async groups into single buffers, so K of block b+1 loads while
// the warp computes p·V of block b and V of block b+1 while it computes the
// scores of b+1 (38 KB of shared memory per warp at head_dim 128).
template <int D>
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
  if (bad) {  // poison: NaN output (or NaN partials, which fold to NaN)
    const float nan = __int_as_float(0x7fc00000);
    for (int i = lane; i < p.group * D; i += 32) {
      const int r = i / D;
      const int d = i - r * D;
      const int h = g * p.group + r;
      if (nspl <= 1) {
        p.out[static_cast<int64_t>(tok) * p.ldo + static_cast<int64_t>(h) * D + d] = nan;
      } else {
        const int64_t pi = part_base + static_cast<int64_t>(r) * p.max_splits;
        p.part_o[pi * D + d] = nan;
        if (d < 2) p.part_ml[pi * 2 + d] = nan;
      }
    }
    return;
  }

  StageQ<D>(qs, 16, lane, 32, [&](int r) -> const float* {
    return r < p.group ? p.q + static_cast<int64_t>(tok) * p.ldq +
                             static_cast<int64_t>(g * p.group + r) * D
                       : nullptr;
  });
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
  const int b_begin = sp * kBlocksPerSplit;
  const int b_end = min(b_begin + kBlocksPerSplit, pos / kTcKeyBlock + 1);
  offsets(b_begin * kTcKeyBlock);
  StageRows<D>(p, p.k, kbuf, b_begin * kTcKeyBlock, pos, lane, 32, row_off);
  CpAsyncCommit();
  StageRows<D>(p, p.v, vbuf, b_begin * kTcKeyBlock, pos, lane, 32, row_off);
  CpAsyncCommit();
  __syncwarp();
  uint32_t qf[D / 16][4];
  LoadQFrags<D>(qf, qs, lane);
  const int rr = lane >> 2;
  const int pos0 = rr < p.group ? pos : -1;
  const int pos1 = rr + 8 < p.group ? pos : -1;

  RowState<D> st;
  st.Reset();
  for (int b = b_begin; b < b_end; ++b) {
    const int key0 = b * kTcKeyBlock;
    const bool more = b + 1 < b_end;
    CpAsyncWait<1>();  // K(b) landed (V(b) may still be in flight)
    __syncwarp();
    uint32_t pa[4][4];
    // Padding rows (beyond the group) are never written: no need to mask.
    AttendScores<D>(st, qf, kbuf, key0, pos0, pos1, key0 + kTcKeyBlock - 1 > pos, p.c, lane,
                    pa);
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
      if (nspl == 1) {
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

template <int D>
absl::Status LaunchPrefill(const TcParams& p, cudaStream_t stream) {
  using L = Layout<D>;
  constexpr size_t kQBytes = kPrefillRows * L::kStride;
  constexpr size_t kOBytes = kPrefillWarps * (D / 8) * 4 * 32 * 4;
  const size_t smem = (kQBytes > kOBytes ? kQBytes : kOBytes) + 4 * L::kTile;
  auto kernel = PrefillTcKernel<D>;
  if (absl::Status s = AllowSmem(kernel, smem); !s.ok()) return s;
  const dim3 grid((p.tokens + kPrefillRows - 1) / kPrefillRows, p.hq);
  kernel<<<grid, 32 * kPrefillWarps, smem, stream>>>(p);
  LOCKSTEP_CUDA_CHECK_LAUNCH("PrefillTcKernel");
  return absl::OkStatus();
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
  auto kernel = PagedTcKernel<D>;
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
  p.max_splits = static_cast<int>(
      std::max<int64_t>(1, (max_keys + kTcSplitKeys - 1) / kTcSplitKeys));
  if (c.head_dim == 64) return LaunchPaged<64>(p, AsStream(stream));
  return LaunchPaged<128>(p, AsStream(stream));
}

}  // namespace lockstep::kernels::cuda
