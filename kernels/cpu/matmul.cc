#include "kernels/cpu/matmul.h"

#include <emmintrin.h>
#include <xmmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"

namespace lockstep::kernels {

// Fills the private fields of a PackedWeight. Layout of data(): from the
// first 64-byte aligned address, ceil(n / 32) panels of k * 32 elements of
// the weight dtype; panel p holds rows [32p, 32p + 32) of w transposed to
// [k][32], zero past row n.
class PackedWeightBuilder {
 public:
  static std::shared_ptr<PackedWeight> Create(DType dtype, int64_t n,
                                              int64_t k) {
    std::shared_ptr<PackedWeight> pw(new PackedWeight());
    pw->n_ = n;
    pw->k_ = k;
    pw->dtype_ = dtype;
    const int64_t panels = (n + cpu::kPanelWidth - 1) / cpu::kPanelWidth;
    pw->data_.resize(panels * k * cpu::kPanelWidth * DTypeSize(dtype) + 64);
    return pw;
  }
  static uint8_t* MutablePanels(PackedWeight& pw) {
    return const_cast<uint8_t*>(Panels(pw));
  }
  static const uint8_t* Panels(const PackedWeight& pw) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(pw.data_.data());
    return reinterpret_cast<const uint8_t*>((p + 63) & ~uintptr_t{63});
  }
};

namespace cpu {
namespace {

constexpr int kMaxTileFloats = 1024;
// Panels handled by one work item: enough for the 128-column tiles that the
// one- and two-row kernels need for eight independent fma chains.
constexpr int kMaxGroupPanels = 4;
constexpr int kTreeDepth = 4;  // log2(8) + 1 pending subtree values

// Scalar microkernel: the reference arithmetic, std::fma per element.
template <int MR, int NV, bool kBf16>
void ScalarKernel(int64_t k, const float* a, const void* b, int64_t ps,
                  float* c) {
  float acc[MR][NV];
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = 0.0f;
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int v = 0; v < NV; ++v) {
      const int64_t off =
          (v / kPanelWidth) * ps + (v % kPanelWidth) + kk * kPanelWidth;
      const float bv =
          kBf16 ? BF16ToF32(static_cast<const uint16_t*>(b)[off])
                : static_cast<const float*>(b)[off];
      for (int r = 0; r < MR; ++r) {
        acc[r][v] = std::fma(a[kk * MR + r], bv, acc[r][v]);
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int v = 0; v < NV; ++v) c[r * NV + v] = acc[r][v];
  }
}

template <bool kBf16>
KernelSet MakeScalarSet() {
  KernelSet s;
  s.vector_width = 1;
  s.max_rows = 4;
  s.narrow_vectors = kPanelWidth;
  s.wide_vectors[1] = kPanelWidth;
  s.wide[1] = s.narrow[1] = &ScalarKernel<1, kPanelWidth, kBf16>;
  s.wide_vectors[2] = kPanelWidth;
  s.wide[2] = s.narrow[2] = &ScalarKernel<2, kPanelWidth, kBf16>;
  s.wide_vectors[3] = kPanelWidth;
  s.wide[3] = s.narrow[3] = &ScalarKernel<3, kPanelWidth, kBf16>;
  s.wide_vectors[4] = kPanelWidth;
  s.wide[4] = s.narrow[4] = &ScalarKernel<4, kPanelWidth, kBf16>;
  return s;
}

const KernelSet& KernelsFor(SimdLevel level, bool w_bf16) {
  switch (level) {
    case SimdLevel::kAvx512:
      return Avx512Kernels(w_bf16);
    case SimdLevel::kAvx2:
      return Avx2Kernels(w_bf16);
    case SimdLevel::kScalar:
      break;
  }
  return ScalarKernels(w_bf16);
}

// Returns `bytes` of 64-byte aligned scratch from `buf`, growing it. Callers
// pass a thread-local buffer so that steady-state calls allocate nothing.
uint8_t* Scratch(std::vector<uint8_t>& buf, size_t bytes) {
  if (buf.size() < bytes + 64) buf.resize(bytes + 64);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t{63});
}

// Thread-local buffers are kept only up to this size; a larger request (a
// long training batch) gets a buffer freed at the end of the call.
constexpr size_t kMaxRetainedScratch = size_t{32} << 20;

// In-register transposes for packing (SSE2, part of the x86-64 baseline;
// pure data movement, so no ISA choice can change any bits). A block of B
// rows by B consecutive k becomes B panel rows of B columns.
inline void TransposeBlock(const float* src, int64_t ld, float* dst) {
  __m128 r0 = _mm_loadu_ps(src);
  __m128 r1 = _mm_loadu_ps(src + ld);
  __m128 r2 = _mm_loadu_ps(src + 2 * ld);
  __m128 r3 = _mm_loadu_ps(src + 3 * ld);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(dst, r0);
  _mm_storeu_ps(dst + kPanelWidth, r1);
  _mm_storeu_ps(dst + 2 * kPanelWidth, r2);
  _mm_storeu_ps(dst + 3 * kPanelWidth, r3);
}

inline void TransposeBlock(const uint16_t* src, int64_t ld, uint16_t* dst) {
  __m128i a[8];
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * ld));
  }
  __m128i b[8], c[8];
  for (int i = 0; i < 4; ++i) {
    b[2 * i] = _mm_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
    b[2 * i + 1] = _mm_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3, rows 4-7
    c[4 * h + 0] = _mm_unpacklo_epi32(b[4 * h], b[4 * h + 2]);      // k0 k1
    c[4 * h + 1] = _mm_unpackhi_epi32(b[4 * h], b[4 * h + 2]);      // k2 k3
    c[4 * h + 2] = _mm_unpacklo_epi32(b[4 * h + 1], b[4 * h + 3]);  // k4 k5
    c[4 * h + 3] = _mm_unpackhi_epi32(b[4 * h + 1], b[4 * h + 3]);  // k6 k7
  }
  for (int q = 0; q < 4; ++q) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (2 * q) * kPanelWidth),
                     _mm_unpacklo_epi64(c[q], c[4 + q]));
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(dst + (2 * q + 1) * kPanelWidth),
        _mm_unpackhi_epi64(c[q], c[4 + q]));
  }
}

// Transposes rows [32p, 32p + 32) of w into one [k][32] panel.
template <typename T>
void PackPanelT(const T* w, int64_t ldw, int64_t n, int64_t k, int64_t p,
                T* dst) {
  constexpr int kB = 16 / sizeof(T);  // transpose block: 4 fp32 or 8 bf16
  const int64_t j0 = p * kPanelWidth;
  const int rows = static_cast<int>(std::min<int64_t>(kPanelWidth, n - j0));
  if (rows < kPanelWidth) {
    std::memset(dst, 0, sizeof(T) * k * kPanelWidth);
  }
  // Blocks of k keep the written rows of the panel in L1 while the source
  // rows are read sequentially.
  constexpr int64_t kBlock = 64;
  for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
    const int64_t kb = std::min(kBlock, k - k0);
    const int64_t kv = kb - kb % kB;
    for (int c0 = 0; c0 < rows; c0 += kB) {
      const T* src = w + (j0 + c0) * ldw + k0;
      T* out = dst + k0 * kPanelWidth + c0;
      const int rb = std::min(kB, rows - c0);
      int64_t kk = 0;
      if (rb == kB) {
        for (; kk < kv; kk += kB) {
          TransposeBlock(src + kk, ldw, out + kk * kPanelWidth);
        }
      }
      for (int c = 0; c < rb; ++c) {
        for (int64_t k2 = kk; k2 < kb; ++k2) {
          out[k2 * kPanelWidth + c] = src[c * ldw + k2];
        }
      }
    }
  }
}

void PackPanel(const void* w, DType w_dtype, int64_t ldw, int64_t n,
               int64_t k, int64_t p, void* dst) {
  if (w_dtype == DType::kF32) {
    PackPanelT(static_cast<const float*>(w), ldw, n, k, p,
               static_cast<float*>(dst));
  } else {
    PackPanelT(static_cast<const uint16_t*>(w), ldw, n, k, p,
               static_cast<uint16_t*>(dst));
  }
}

// Copies rows [i0, i0 + mr) of x to fp32 [k][mr] (exact for bf16).
template <typename T>
void PackRowsT(const T* x, int64_t ldx, int64_t i0, int mr, int64_t k,
               float* dst) {
  constexpr int64_t kBlock = 256;
  for (int64_t k0 = 0; k0 < k; k0 += kBlock) {
    const int64_t kb = std::min(kBlock, k - k0);
    for (int r = 0; r < mr; ++r) {
      const T* src = x + (i0 + r) * ldx + k0;
      float* out = dst + k0 * mr + r;
      for (int64_t kk = 0; kk < kb; ++kk) {
        if constexpr (sizeof(T) == 2) {
          out[kk * mr] = BF16ToF32(src[kk]);
        } else {
          out[kk * mr] = src[kk];
        }
      }
    }
  }
}

void StoreTile(const float* tile, int tile_cols, int mr, int cols,
               void* y, DType y_dtype, int64_t ldy, int64_t i0, int64_t j0) {
  for (int r = 0; r < mr; ++r) {
    const float* src = tile + r * tile_cols;
    const int64_t off = (i0 + r) * ldy + j0;
    if (y_dtype == DType::kF32) {
      std::memcpy(static_cast<float*>(y) + off, src, sizeof(float) * cols);
    } else {
      uint16_t* dst = static_cast<uint16_t*>(y) + off;
      for (int c = 0; c < cols; ++c) dst[c] = F32ToBF16(src[c]);
    }
  }
}

struct Gemm {
  const KernelSet* ks;
  const MatmulArgs* args;
  int64_t leaf_len;
  int leaf_count;
  const float* a_pack;    // row tiles of max_rows rows, [k][mr] each
  const uint8_t* panels;  // prepacked panels, or null for per-call packing
  int64_t panel_elems;    // k * kPanelWidth
  int64_t w_size;         // bytes per weight element
  int64_t num_panels;
  int group_panels;
  int64_t num_tiles;
  int64_t num_mblocks;
};

// One tile: mr rows of the current row tile by `vectors` vectors of columns.
void ComputeTile(const Gemm& g, MicroKernel kernel, int mr, int vectors,
                 const float* a, const uint8_t* b, float* out) {
  const int64_t k = g.args->k;
  if (g.leaf_count == 1) {
    kernel(k, a, b, g.panel_elems, out);
    return;
  }
  // Binary-counter evaluation of the fixed tree: leaf l is pushed, then any
  // two pending values of equal height merge (left + right). Consecutive
  // aligned subtrees therefore reduce exactly as
  // ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)).
  const int tile = mr * vectors * g.ks->vector_width;
  alignas(64) float stack[kTreeDepth][kMaxTileFloats];
  int height[kTreeDepth];
  int sp = 0;
  for (int l = 0; l < g.leaf_count; ++l) {
    const int64_t k0 = l * g.leaf_len;
    kernel(g.leaf_len, a + k0 * mr, b + k0 * kPanelWidth * g.w_size,
           g.panel_elems, stack[sp]);
    height[sp++] = 0;
    while (sp >= 2 && height[sp - 1] == height[sp - 2]) {
      float* left = stack[sp - 2];
      const float* right = stack[sp - 1];
      for (int i = 0; i < tile; ++i) left[i] = left[i] + right[i];
      ++height[sp - 2];
      --sp;
    }
  }
  std::memcpy(out, stack[0], sizeof(float) * tile);
}

void RunItems(const Gemm& g, int64_t begin, int64_t end) {
  static thread_local std::vector<uint8_t> pack_buf;
  const MatmulArgs& args = *g.args;
  const KernelSet& ks = *g.ks;
  const int w = ks.vector_width;
  const int64_t group_bytes = g.group_panels * g.panel_elems * g.w_size;
  std::vector<uint8_t> big_pack_buf;
  std::vector<uint8_t>& group_buf =
      static_cast<size_t>(group_bytes) > kMaxRetainedScratch ? big_pack_buf
                                                             : pack_buf;
  int64_t packed_group = -1;
  const uint8_t* group_b = nullptr;
  alignas(64) float tile[kMaxTileFloats];

  for (int64_t item = begin; item < end; ++item) {
    const int64_t grp = item / g.num_mblocks;
    const int64_t mblock = item % g.num_mblocks;
    const int64_t p0 = grp * g.group_panels;
    const int gp = static_cast<int>(
        std::min<int64_t>(g.group_panels, g.num_panels - p0));
    if (g.panels != nullptr) {
      group_b = g.panels + p0 * g.panel_elems * g.w_size;
    } else if (packed_group != grp) {
      uint8_t* buf = Scratch(group_buf, group_bytes);
      for (int q = 0; q < gp; ++q) {
        PackPanel(args.w, args.w_dtype, args.ldw, args.n, args.k, p0 + q,
                  buf + q * g.panel_elems * g.w_size);
      }
      group_b = buf;
      packed_group = grp;
    }
    const int64_t j_group = p0 * kPanelWidth;
    const int cols_padded = gp * kPanelWidth;
    const int cols_valid =
        static_cast<int>(std::min<int64_t>(cols_padded, args.n - j_group));
    const int64_t t0 = g.num_tiles * mblock / g.num_mblocks;
    const int64_t t1 = g.num_tiles * (mblock + 1) / g.num_mblocks;

    // Column chunks outer, row tiles inner: the weight columns of a chunk
    // stay in cache while the packed rows stream past them. The chunk is the
    // widest tile any row tile of this block uses; narrower tiles split it.
    if (t0 == t1) continue;
    const int mr_last = static_cast<int>(
        std::min<int64_t>(ks.max_rows, args.m - (t1 - 1) * ks.max_rows));
    int chunk_vectors = ks.wide_vectors[mr_last];
    if (t1 - t0 > 1) {
      chunk_vectors = std::max(chunk_vectors, ks.wide_vectors[ks.max_rows]);
    }
    const int chunk = chunk_vectors * w;
    for (int c = 0; c < cols_valid; c += chunk) {
      const int c_end = std::min(c + chunk, cols_valid);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i0 = t * ks.max_rows;
        const int mr = static_cast<int>(
            std::min<int64_t>(ks.max_rows, args.m - i0));
        const float* a = g.a_pack + i0 * args.k;
        const int wide_cols = ks.wide_vectors[mr] * w;
        for (int cc = c; cc < c_end;) {
          // Wide tiles start aligned (whole panels, or a half panel for
          // 16-column tiles); the group's ragged end takes narrow tiles.
          const bool wide = cc + wide_cols <= cols_padded &&
                            cc % std::min(wide_cols, kPanelWidth) == 0;
          const int vectors = wide ? ks.wide_vectors[mr] : ks.narrow_vectors;
          const MicroKernel kernel = wide ? ks.wide[mr] : ks.narrow[mr];
          const int cols = vectors * w;
          const uint8_t* b =
              group_b + ((cc / kPanelWidth) * g.panel_elems +
                         cc % kPanelWidth) * g.w_size;
          ComputeTile(g, kernel, mr, vectors, a, b, tile);
          StoreTile(tile, cols, mr, std::min(cols, cols_valid - cc), args.y,
                    args.y_dtype, args.ldy, i0, j_group + cc);
          cc += cols;
        }
      }
    }
  }
}

void RunGemmAtLevel(SimdLevel level, const MatmulArgs& args,
                    const PackedWeight* packed, int64_t leaf_len,
                    int leaf_count) {
  if (args.m == 0 || args.n == 0) return;
  const DType w_dtype = packed != nullptr ? packed->dtype() : args.w_dtype;
  Gemm g;
  g.ks = &KernelsFor(level, w_dtype == DType::kBF16);
  g.args = &args;
  g.leaf_len = leaf_len;
  g.leaf_count = leaf_count;
  g.panels = packed != nullptr ? PackedWeightBuilder::Panels(*packed)
                               : nullptr;
  g.panel_elems = args.k * kPanelWidth;
  g.w_size = DTypeSize(w_dtype);
  g.num_panels = (args.n + kPanelWidth - 1) / kPanelWidth;
  const int threads = NumThreads();
  g.group_panels = static_cast<int>(std::clamp<int64_t>(
      g.num_panels / threads, 1, kMaxGroupPanels));
  const int64_t num_groups =
      (g.num_panels + g.group_panels - 1) / g.group_panels;
  const int mr_max = g.ks->max_rows;
  g.num_tiles = (args.m + mr_max - 1) / mr_max;
  // Split rows too when there are too few column groups to balance the
  // threads; the split never changes any element's arithmetic.
  g.num_mblocks = 1;
  if (threads > 1 && num_groups < 4 * threads) {
    g.num_mblocks = std::min<int64_t>(
        g.num_tiles, (4 * threads + num_groups - 1) / num_groups);
  }

  // Rows are repacked to fp32 [k][mr] tiles once per call and shared by all
  // threads, so bf16 activations are widened once, not once per panel.
  static thread_local std::vector<uint8_t> a_buf;
  std::vector<uint8_t> a_big;
  const size_t a_bytes = sizeof(float) * args.m * std::max<int64_t>(args.k, 1);
  float* a_pack = reinterpret_cast<float*>(
      Scratch(a_bytes > kMaxRetainedScratch ? a_big : a_buf, a_bytes));
  const int64_t num_tiles = g.num_tiles;
  ParallelFor(num_tiles, std::max<int64_t>(1, 65536 / (mr_max * args.k + 1)),
              [&](int64_t t0, int64_t t1) {
                for (int64_t t = t0; t < t1; ++t) {
                  const int64_t i0 = t * mr_max;
                  const int mr = static_cast<int>(
                      std::min<int64_t>(mr_max, args.m - i0));
                  float* dst = a_pack + i0 * args.k;
                  if (args.x_dtype == DType::kF32) {
                    PackRowsT(static_cast<const float*>(args.x), args.ldx, i0,
                              mr, args.k, dst);
                  } else {
                    PackRowsT(static_cast<const uint16_t*>(args.x), args.ldx,
                              i0, mr, args.k, dst);
                  }
                }
              });
  g.a_pack = a_pack;

  ParallelFor(num_groups * g.num_mblocks, 1,
              [&g](int64_t begin, int64_t end) { RunItems(g, begin, end); });
}

}  // namespace

const KernelSet& ScalarKernels(bool w_bf16) {
  static const KernelSet f32 = MakeScalarSet<false>();
  static const KernelSet bf16 = MakeScalarSet<true>();
  return w_bf16 ? bf16 : f32;
}

void RunGemm(const MatmulArgs& args, const PackedWeight* packed,
             int64_t leaf_len, int leaf_count) {
  RunGemmAtLevel(ActiveSimdLevel(), args, packed, leaf_len, leaf_count);
}

absl::Status Matmul(const MatmulArgs& args) {
  // Scratch for the packed rows is as large as x; running out of memory must
  // surface as a status, not an exception, at the module boundary.
  try {
    RunGemm(args, nullptr, args.k, 1);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("Matmul: out of memory for scratch");
  }
  return absl::OkStatus();
}

absl::Status MatmulPacked(const MatmulArgs& args, const PackedWeight& w) {
  MatmulArgs a = args;
  a.n = w.n();
  a.k = w.k();
  a.w = nullptr;
  a.w_dtype = w.dtype();
  a.ldw = w.k();
  try {
    RunGemm(a, &w, a.k, 1);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "MatmulPacked: out of memory for scratch");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const PackedWeight>> PackWeight(
    const void* w, DType w_dtype, int64_t ldw, int64_t n, int64_t k) {
  std::shared_ptr<PackedWeight> pw;
  try {
    pw = PackedWeightBuilder::Create(w_dtype, n, k);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        "PackedWeight::Pack: out of memory for the packed panels");
  }
  uint8_t* panels = PackedWeightBuilder::MutablePanels(*pw);
  const int64_t panel_bytes = k * kPanelWidth * DTypeSize(w_dtype);
  const int64_t num_panels = (n + kPanelWidth - 1) / kPanelWidth;
  ParallelFor(num_panels, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      PackPanel(w, w_dtype, ldw, n, k, p, panels + p * panel_bytes);
    }
  });
  return std::shared_ptr<const PackedWeight>(std::move(pw));
}

}  // namespace cpu
}  // namespace lockstep::kernels
