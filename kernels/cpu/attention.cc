#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"

namespace lockstep::kernels::cpu {
namespace {

constexpr int kB = kAttnKeyBlock;

inline float Widen(float v) { return v; }
inline float Widen(uint16_t v) { return BF16ToF32(v); }

// Key/value rows of one KV head stored contiguously, token j at j * ld.
template <typename T>
struct ContiguousRows {
  const T* k;
  const T* v;
  int64_t ld;
  const T* K(int64_t j) const { return k + j * ld; }
  const T* V(int64_t j) const { return v + j * ld; }
};

// Key/value rows of one KV head in the paged cache, token j on page
// block_table[j / page_size] at offset j % page_size.
template <typename T>
struct PagedRows {
  const T* k;  // already offset to the KV head
  const T* v;
  const int32_t* block_table;
  int64_t page_size;
  int64_t row_stride;  // elements per slot: num_kv_heads * head_dim
  int64_t Slot(int64_t j) const {
    return static_cast<int64_t>(block_table[j / page_size]) * page_size +
           j % page_size;
  }
  const T* K(int64_t j) const { return k + Slot(j) * row_stride; }
  const T* V(int64_t j) const { return v + Slot(j) * row_stride; }
};

// Per-thread working memory of the per-query routine.
struct Scratch {
  explicit Scratch(int64_t head_dim)
      : kt(static_cast<size_t>(head_dim) * kB, 0.0f), acc(head_dim) {}
  std::vector<float> kt;   // [head_dim][kB]: one key block, transposed
  std::vector<float> acc;  // [head_dim]
};

// The one per-query routine (contract in kernels/attention.h). The dot
// products of a block run with d outer and the kB keys inner, and the value
// update with j outer and d inner: each key's dot product and each acc[d]
// still see their fma's in the contract's order, so the inner loops may be
// vectorised across independent outputs without changing a bit. Lanes of the
// last, partial block beyond n compute on stale (finite) data and are never
// read.
template <typename T, typename Rows>
[[gnu::always_inline]] inline void AttendBody(const float* q, int64_t dim,
                                              float scale, int64_t p,
                                              const Rows& rows, float* kt,
                                              float* acc, float* out) {
  float m = -std::numeric_limits<float>::infinity();
  float l = 0.0f;
  for (int64_t d = 0; d < dim; ++d) acc[d] = 0.0f;
  for (int64_t b0 = 0; b0 <= p; b0 += kB) {
    const int n = static_cast<int>(std::min<int64_t>(kB, p + 1 - b0));
    for (int jj = 0; jj < n; ++jj) {
      const T* kr = rows.K(b0 + jj);
      for (int64_t d = 0; d < dim; ++d) kt[d * kB + jj] = Widen(kr[d]);
    }
    float s[kB];
    for (int jj = 0; jj < kB; ++jj) s[jj] = 0.0f;
    for (int64_t d = 0; d < dim; ++d) {
      const float qd = q[d];
      const float* ktd = kt + d * kB;
      for (int jj = 0; jj < kB; ++jj) s[jj] = std::fmaf(qd, ktd[jj], s[jj]);
    }
    float block_max = -std::numeric_limits<float>::infinity();
    for (int jj = 0; jj < n; ++jj) {
      s[jj] = s[jj] * scale;
      block_max = s[jj] > block_max ? s[jj] : block_max;
    }
    const float m_new = block_max > m ? block_max : m;
    const float alpha = m == -std::numeric_limits<float>::infinity()
                            ? 0.0f
                            : std::exp(m - m_new);
    l = l * alpha;
    for (int64_t d = 0; d < dim; ++d) acc[d] = acc[d] * alpha;
    for (int jj = 0; jj < n; ++jj) {
      const float e = std::exp(s[jj] - m_new);
      l = l + e;
      const T* vr = rows.V(b0 + jj);
      for (int64_t d = 0; d < dim; ++d) {
        acc[d] = std::fmaf(e, Widen(vr[d]), acc[d]);
      }
    }
    m = m_new;
  }
  for (int64_t d = 0; d < dim; ++d) out[d] = acc[d] / l;
}

// The same body compiled for three instruction sets; fma is exactly rounded
// on every one, so they agree bit for bit.
template <typename T, typename Rows>
void AttendScalar(const float* q, int64_t dim, float scale, int64_t p,
                  const Rows& rows, float* kt, float* acc, float* out) {
  AttendBody<T>(q, dim, scale, p, rows, kt, acc, out);
}

template <typename T, typename Rows>
[[gnu::target("avx2,fma")]] void AttendAvx2(const float* q, int64_t dim,
                                            float scale, int64_t p,
                                            const Rows& rows, float* kt,
                                            float* acc, float* out) {
  AttendBody<T>(q, dim, scale, p, rows, kt, acc, out);
}

template <typename T, typename Rows>
[[gnu::target("avx512f,avx512bw,avx512vl,avx2,fma")]] void AttendAvx512(
    const float* q, int64_t dim, float scale, int64_t p, const Rows& rows,
    float* kt, float* acc, float* out) {
  AttendBody<T>(q, dim, scale, p, rows, kt, acc, out);
}

template <typename T, typename Rows>
using AttendFn = void (*)(const float*, int64_t, float, int64_t, const Rows&,
                          float*, float*, float*);

template <typename T, typename Rows>
AttendFn<T, Rows> SelectAttend() {
  switch (ActiveSimdLevel()) {
    case SimdLevel::kAvx512:
      return &AttendAvx512<T, Rows>;
    case SimdLevel::kAvx2:
      return &AttendAvx2<T, Rows>;
    default:
      return &AttendScalar<T, Rows>;
  }
}

template <typename T>
void PagedImpl(const PagedAttentionArgs& a) {
  const PagedKvCache& c = a.cache;
  const int64_t dim = c.head_dim;
  const int64_t group = a.num_q_heads / c.num_kv_heads;
  const int64_t row_stride = c.num_kv_heads * dim;
  const AttendFn<T, PagedRows<T>> attend = SelectAttend<T, PagedRows<T>>();
  ParallelFor(a.tokens * a.num_q_heads, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(dim);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t t = u / a.num_q_heads;
      const int64_t h = u % a.num_q_heads;
      const int64_t g = h / group;
      PagedRows<T> rows{static_cast<const T*>(c.k) + g * dim,
                        static_cast<const T*>(c.v) + g * dim,
                        a.block_tables + a.seq_ids[t] * a.max_blocks_per_seq,
                        c.page_size, row_stride};
      attend(a.q + t * a.ldq + h * dim, dim, a.scale, a.positions[t], rows,
             scratch.kt.data(), scratch.acc.data(),
             a.out + t * a.ldo + h * dim);
    }
  });
}

template <typename T>
void PrefillImpl(const PrefillAttentionArgs& a) {
  const int64_t dim = a.head_dim;
  const int64_t group = a.num_q_heads / a.num_kv_heads;
  const int64_t tokens = a.tokens;
  const AttendFn<T, ContiguousRows<T>> attend =
      SelectAttend<T, ContiguousRows<T>>();
  ParallelFor(tokens * a.num_q_heads, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(dim);
    for (int64_t u = begin; u < end; ++u) {
      // Query i costs i+1 keys; pairing short and long queries (0, T-1, 1,
      // T-2, ...) balances the contiguous chunks ParallelFor hands out.
      const int64_t k = u / a.num_q_heads;
      const int64_t h = u % a.num_q_heads;
      const int64_t t = k % 2 == 0 ? k / 2 : tokens - 1 - k / 2;
      const int64_t g = h / group;
      ContiguousRows<T> rows{static_cast<const T*>(a.k) + g * dim,
                             static_cast<const T*>(a.v) + g * dim, a.ldk};
      attend(a.q + t * a.ldq + h * dim, dim, a.scale, t, rows,
             scratch.kt.data(), scratch.acc.data(),
             a.out + t * a.ldo + h * dim);
    }
  });
}

template <typename T>
void WriteRows(const float* src, int64_t ld_src, T* dst, int64_t row_len,
               const int64_t* slots, int64_t tokens, int64_t col_begin,
               int64_t col_end) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* s = src + t * ld_src;
    T* d = dst + slots[t] * row_len;
    for (int64_t i = col_begin; i < col_end; ++i) {
      if constexpr (std::is_same_v<T, float>) {
        d[i] = s[i];
      } else {
        d[i] = F32ToBF16(s[i]);
      }
    }
  }
}

}  // namespace

absl::Status WriteKv(const KvWriteArgs& args) {
  const PagedKvCache& c = args.cache;
  const int64_t capacity = c.num_pages * c.page_size;
  for (int64_t t = 0; t < args.tokens; ++t) {
    if (args.slots[t] < 0 || args.slots[t] >= capacity) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteKv: slots[", t, "] = ", args.slots[t],
                       " is outside [0, num_pages*page_size=", capacity, ")"));
    }
  }
  if (args.tokens == 0) return absl::OkStatus();
  const int64_t row_len = c.num_kv_heads * c.head_dim;
  // Split over (k or v) x KV head, each unit walking the tokens in order, so a
  // repeated slot deterministically keeps the later token.
  const int64_t units = 2 * c.num_kv_heads;
  ParallelFor(units, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const bool is_v = u >= c.num_kv_heads;
      const int64_t g = is_v ? u - c.num_kv_heads : u;
      const float* src = is_v ? args.v : args.k;
      const int64_t ld = is_v ? args.ldv : args.ldk;
      void* dst = is_v ? c.v : c.k;
      const int64_t col_begin = g * c.head_dim;
      const int64_t col_end = col_begin + c.head_dim;
      if (c.dtype == DType::kF32) {
        WriteRows(src, ld, static_cast<float*>(dst), row_len, args.slots,
                  args.tokens, col_begin, col_end);
      } else {
        WriteRows(src, ld, static_cast<uint16_t*>(dst), row_len, args.slots,
                  args.tokens, col_begin, col_end);
      }
    }
  });
  return absl::OkStatus();
}

absl::Status PagedAttention(const PagedAttentionArgs& args) {
  const PagedKvCache& c = args.cache;
  // Every page a query will visit is checked up front, so the kernel proper
  // never reads outside the cache. Consecutive queries of one sequence (a
  // chunk) share the pages already checked.
  int64_t checked_seq = -1, checked_blocks = 0;
  for (int64_t t = 0; t < args.tokens; ++t) {
    const int32_t s = args.seq_ids[t];
    if (s < 0 || s >= args.num_seqs) {
      return absl::InvalidArgumentError(
          absl::StrCat("PagedAttention: seq_ids[", t, "] = ", s,
                       " is outside [0, num_seqs=", args.num_seqs, ")"));
    }
    const int32_t p = args.positions[t];
    if (p < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("PagedAttention: positions[", t, "] = ", p, " < 0"));
    }
    const int64_t blocks = p / c.page_size + 1;
    if (blocks > args.max_blocks_per_seq) {
      return absl::InvalidArgumentError(absl::StrCat(
          "PagedAttention: positions[", t, "] = ", p, " needs block ",
          blocks - 1, " but max_blocks_per_seq = ", args.max_blocks_per_seq));
    }
    if (s != checked_seq) {
      checked_seq = s;
      checked_blocks = 0;
    }
    const int32_t* table = args.block_tables + s * args.max_blocks_per_seq;
    for (int64_t b = checked_blocks; b < blocks; ++b) {
      if (table[b] < 0 || table[b] >= c.num_pages) {
        return absl::InvalidArgumentError(absl::StrCat(
            "PagedAttention: block_tables[", s, "][", b, "] = ", table[b],
            " is outside [0, num_pages=", c.num_pages, ")"));
      }
    }
    checked_blocks = std::max(checked_blocks, blocks);
  }
  if (args.tokens == 0) return absl::OkStatus();
  if (c.dtype == DType::kF32) {
    PagedImpl<float>(args);
  } else {
    PagedImpl<uint16_t>(args);
  }
  return absl::OkStatus();
}

absl::Status PrefillAttention(const PrefillAttentionArgs& args) {
  if (args.tokens == 0) return absl::OkStatus();
  if (args.kv_dtype == DType::kF32) {
    PrefillImpl<float>(args);
  } else {
    PrefillImpl<uint16_t>(args);
  }
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
