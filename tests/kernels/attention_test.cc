// Tests of causal attention (kernels/attention.h): accuracy against float64,
// the contract's block-online order bit for bit, and equal bits for every
// position across full prefill, paged decode, chunked prefill, page sizes,
// page assignments, KV dtypes, mixed batches, GQA, thread counts and SIMD
// levels; a whole-row-softmax "standard twin" shows the bit tests can fail.

#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;

struct Shape {
  int64_t hq, hkv, dim;
  int64_t q_row() const { return hq * dim; }
  int64_t kv_row() const { return hkv * dim; }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(dim)); }
};

// One sequence's queries [len, hq, dim] and keys/values [len, hkv, dim],
// contiguous.
struct Seq {
  int64_t len = 0;
  std::vector<float> q, k, v;
};

Seq RandomSeq(const Shape& s, int64_t len, uint64_t seed,
              float q_range = 1.0f) {
  Seq seq;
  seq.len = len;
  seq.q = RandomFloats(len * s.q_row(), seed, -q_range, q_range);
  seq.k = RandomFloats(len * s.kv_row(), seed + 1);
  seq.v = RandomFloats(len * s.kv_row(), seed + 2);
  return seq;
}

std::vector<uint16_t> ToBF16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = F32ToBF16(x[i]);
  return out;
}

std::vector<float> Prefill(const Shape& s, const Seq& seq, DType kv_dtype) {
  std::vector<float> out(seq.len * s.q_row(), -9.0f);
  const std::vector<uint16_t> kb = ToBF16(seq.k), vb = ToBF16(seq.v);
  PrefillAttentionArgs a;
  a.q = seq.q.data();
  a.ldq = s.q_row();
  a.k = kv_dtype == DType::kF32 ? static_cast<const void*>(seq.k.data())
                                : kb.data();
  a.v = kv_dtype == DType::kF32 ? static_cast<const void*>(seq.v.data())
                                : vb.data();
  a.ldk = s.kv_row();
  a.kv_dtype = kv_dtype;
  a.out = out.data();
  a.ldo = s.q_row();
  a.tokens = seq.len;
  a.num_q_heads = s.hq;
  a.num_kv_heads = s.hkv;
  a.head_dim = s.dim;
  a.scale = s.scale();
  EXPECT_TRUE(PrefillAttention(a).ok());
  return out;
}

// A paged cache with its storage.
struct Cache {
  Cache(const Shape& s, DType dtype, int64_t num_pages, int64_t page_size) {
    const size_t bytes = num_pages * page_size * s.kv_row() * DTypeSize(dtype);
    k.assign(bytes, 0xCD);
    v.assign(bytes, 0xCD);
    c.k = k.data();
    c.v = v.data();
    c.dtype = dtype;
    c.num_pages = num_pages;
    c.page_size = page_size;
    c.num_kv_heads = s.hkv;
    c.head_dim = s.dim;
  }
  std::vector<uint8_t> k, v;
  PagedKvCache c;
};

// `count` distinct page ids out of [0, num_pages), in random order.
std::vector<int32_t> RandomPages(int64_t count, int64_t num_pages,
                                 uint64_t seed) {
  std::vector<int32_t> pages(num_pages);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937_64(seed));
  pages.resize(count);
  return pages;
}

void Write(Cache& cache, const Shape& s, const Seq& seq,
           const std::vector<int32_t>& table, int64_t begin, int64_t end) {
  std::vector<int64_t> slots;
  for (int64_t p = begin; p < end; ++p) {
    slots.push_back(int64_t{table[p / cache.c.page_size]} * cache.c.page_size +
                    p % cache.c.page_size);
  }
  KvWriteArgs w;
  w.cache = cache.c;
  w.k = seq.k.data() + begin * s.kv_row();
  w.ldk = s.kv_row();
  w.v = seq.v.data() + begin * s.kv_row();
  w.ldv = s.kv_row();
  w.slots = slots.data();
  w.tokens = end - begin;
  ASSERT_TRUE(WriteKv(w).ok());
}

// One PagedAttention call over a flat list of (sequence, position) queries.
struct Query {
  int32_t seq;
  int32_t pos;
};

void Attend(const Cache& cache, const Shape& s,
            const std::vector<const Seq*>& seqs,
            const std::vector<std::vector<int32_t>>& tables, int64_t max_blocks,
            const std::vector<Query>& queries,
            std::vector<std::vector<float>>& outs) {
  const int64_t n = static_cast<int64_t>(queries.size());
  std::vector<float> q(n * s.q_row()), out(n * s.q_row());
  std::vector<int32_t> pos(n), seq_ids(n);
  std::vector<int32_t> bt(seqs.size() * max_blocks, -1);
  for (size_t i = 0; i < tables.size(); ++i) {
    std::copy(tables[i].begin(), tables[i].end(), bt.begin() + i * max_blocks);
  }
  for (int64_t i = 0; i < n; ++i) {
    const Query& qu = queries[i];
    std::memcpy(q.data() + i * s.q_row(),
                seqs[qu.seq]->q.data() + qu.pos * s.q_row(), s.q_row() * 4);
    pos[i] = qu.pos;
    seq_ids[i] = qu.seq;
  }
  PagedAttentionArgs a;
  a.cache = cache.c;
  a.q = q.data();
  a.ldq = s.q_row();
  a.out = out.data();
  a.ldo = s.q_row();
  a.tokens = n;
  a.num_q_heads = s.hq;
  a.scale = s.scale();
  a.positions = pos.data();
  a.seq_ids = seq_ids.data();
  a.block_tables = bt.data();
  a.num_seqs = static_cast<int64_t>(seqs.size());
  a.max_blocks_per_seq = max_blocks;
  ASSERT_TRUE(PagedAttention(a).ok());
  for (int64_t i = 0; i < n; ++i) {
    const Query& qu = queries[i];
    std::memcpy(outs[qu.seq].data() + qu.pos * s.q_row(),
                out.data() + i * s.q_row(), s.q_row() * 4);
  }
}

// Runs one sequence through the paged path: chunk after chunk (sizes cycle
// through `chunks`), each chunk writes its K/V and then attends.
std::vector<float> PagedChunked(const Shape& s, const Seq& seq, DType dtype,
                                int64_t page_size,
                                const std::vector<int64_t>& chunks,
                                uint64_t page_seed) {
  const int64_t blocks = (seq.len + page_size - 1) / page_size;
  const int64_t num_pages = blocks + 5;
  Cache cache(s, dtype, num_pages, page_size);
  const std::vector<int32_t> table = RandomPages(blocks, num_pages, page_seed);
  std::vector<std::vector<float>> outs(1,
                                       std::vector<float>(seq.len * s.q_row()));
  int64_t begin = 0;
  for (size_t c = 0; begin < seq.len; ++c) {
    const int64_t end = std::min(seq.len, begin + chunks[c % chunks.size()]);
    Write(cache, s, seq, table, begin, end);
    std::vector<Query> queries;
    for (int64_t p = begin; p < end; ++p)
      queries.push_back({0, static_cast<int32_t>(p)});
    Attend(cache, s, {&seq}, {table}, blocks + 2, queries, outs);
    begin = end;
  }
  return outs[0];
}

// First position whose output differs in bits, or -1.
int64_t FirstDiff(const Shape& s, const std::vector<float>& a,
                  const std::vector<float>& b) {
  if (a.size() != b.size()) return -2;
  const int64_t len = static_cast<int64_t>(a.size()) / s.q_row();
  for (int64_t p = 0; p < len; ++p) {
    if (std::memcmp(a.data() + p * s.q_row(), b.data() + p * s.q_row(),
                    s.q_row() * 4) != 0) {
      return p;
    }
  }
  return -1;
}

// Float64 causal attention with a whole-row softmax.
std::vector<double> Reference(const Shape& s, const Seq& seq, DType kv_dtype) {
  auto kv = [&](const std::vector<float>& x, int64_t i) {
    return kv_dtype == DType::kF32 ? double{x[i]} : double{RoundToBF16(x[i])};
  };
  std::vector<double> out(seq.len * s.q_row());
  const int64_t group = s.hq / s.hkv;
  for (int64_t t = 0; t < seq.len; ++t) {
    for (int64_t h = 0; h < s.hq; ++h) {
      const int64_t g = h / group;
      const float* q = seq.q.data() + t * s.q_row() + h * s.dim;
      std::vector<double> sc(t + 1);
      double m = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < s.dim; ++d) {
          dot += double{q[d]} * kv(seq.k, j * s.kv_row() + g * s.dim + d);
        }
        sc[j] = dot * s.scale();
        m = std::max(m, sc[j]);
      }
      double l = 0;
      for (int64_t j = 0; j <= t; ++j) l += std::exp(sc[j] - m);
      for (int64_t d = 0; d < s.dim; ++d) {
        double acc = 0;
        for (int64_t j = 0; j <= t; ++j) {
          acc +=
              std::exp(sc[j] - m) * kv(seq.v, j * s.kv_row() + g * s.dim + d);
        }
        out[t * s.q_row() + h * s.dim + d] = acc / l;
      }
    }
  }
  return out;
}

// The contract of kernels/attention.h, written out as plainly as possible,
// and its non-invariant twin with one softmax over the whole row.
enum class Order { kBlockOnline, kWholeRow };

std::vector<float> Plain(const Shape& s, const Seq& seq, Order order) {
  std::vector<float> out(seq.len * s.q_row());
  const int64_t group = s.hq / s.hkv;
  for (int64_t t = 0; t < seq.len; ++t) {
    for (int64_t h = 0; h < s.hq; ++h) {
      const int64_t g = h / group;
      const float* q = seq.q.data() + t * s.q_row() + h * s.dim;
      auto score = [&](int64_t j) {
        float dot = 0.0f;
        for (int64_t d = 0; d < s.dim; ++d) {
          dot = std::fmaf(q[d], seq.k[j * s.kv_row() + g * s.dim + d], dot);
        }
        return dot * s.scale();
      };
      auto vval = [&](int64_t j, int64_t d) {
        return seq.v[j * s.kv_row() + g * s.dim + d];
      };
      std::vector<float> acc(s.dim, 0.0f);
      float m = -INFINITY, l = 0.0f;
      const int64_t block =
          order == Order::kBlockOnline ? kAttnKeyBlock : t + 1;
      for (int64_t b0 = 0; b0 <= t; b0 += block) {
        const int64_t b1 = std::min(b0 + block, t + 1);
        float mn = m;
        for (int64_t j = b0; j < b1; ++j) mn = std::max(mn, score(j));
        const float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
        l = l * alpha;
        for (auto& a : acc) a = a * alpha;
        for (int64_t j = b0; j < b1; ++j) {
          const float e = expf(score(j) - mn);
          l = l + e;
          for (int64_t d = 0; d < s.dim; ++d)
            acc[d] = std::fmaf(e, vval(j, d), acc[d]);
        }
        m = mn;
      }
      for (int64_t d = 0; d < s.dim; ++d) {
        out[t * s.q_row() + h * s.dim + d] = acc[d] / l;
      }
    }
  }
  return out;
}

struct Case {
  Shape shape;
  int64_t len;
  float q_range;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "hq=" << c.shape.hq << " hkv=" << c.shape.hkv << " dim=" << c.shape.dim
      << " len=" << c.len << " q_range=" << c.q_range;
}

class AttentionShapes : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionShapes, MatchesFloat64) {
  const Case c = GetParam();
  const Seq seq = RandomSeq(c.shape, c.len, 1000 + c.len, c.q_range);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const auto out = Prefill(c.shape, seq, dtype);
    const auto ref = Reference(c.shape, seq, dtype);
    double worst = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      worst = std::max(worst, std::fabs(out[i] - ref[i]));
    }
    EXPECT_LT(worst, 2e-6) << DTypeName(dtype);
  }
}

TEST_P(AttentionShapes, EqualsPlainContractBits) {
  const Case c = GetParam();
  const Seq seq = RandomSeq(c.shape, c.len, 2000 + c.len, c.q_range);
  const auto plain = Plain(c.shape, seq, Order::kBlockOnline);
  EXPECT_EQ(FirstDiff(c.shape, Prefill(c.shape, seq, DType::kF32), plain), -1);
}

TEST_P(AttentionShapes, EveryPathGivesTheSameBits) {
  const Case c = GetParam();
  const Shape& s = c.shape;
  const Seq seq = RandomSeq(s, c.len, 3000 + c.len, c.q_range);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const auto full = Prefill(s, seq, dtype);
    for (int64_t page_size : {1, 7, 16, 32}) {
      const std::vector<std::vector<int64_t>> schedules = {
          {1}, {3}, {16}, {61}, {5, 1, 16, 2, 61}, {c.len}};
      for (const auto& chunks : schedules) {
        const auto paged = PagedChunked(s, seq, dtype, page_size, chunks,
                                        page_size * 131 + chunks[0]);
        EXPECT_EQ(FirstDiff(s, paged, full), -1)
            << DTypeName(dtype) << " page_size " << page_size << " chunk "
            << chunks[0] << " (" << chunks.size() << " sizes)";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionShapes,
    ::testing::Values(Case{{1, 1, 1}, 1, 1.0f}, Case{{2, 2, 5}, 19, 1.0f},
                      Case{{4, 1, 8}, 40, 1.0f},    // MQA
                      Case{{8, 2, 32}, 70, 1.0f},   // GQA
                      Case{{3, 3, 33}, 49, 1.0f},   // odd head_dim
                      Case{{4, 2, 16}, 90, 12.0f},  // peaky softmax
                      Case{{2, 1, 64}, 130, 1.0f}));

TEST(Attention, Bf16CacheEqualsF32OfRoundedValues) {
  const Shape s{4, 2, 24};
  Seq seq = RandomSeq(s, 45, 77);
  const auto bf16 = Prefill(s, seq, DType::kBF16);
  for (auto& x : seq.k) x = RoundToBF16(x);
  for (auto& x : seq.v) x = RoundToBF16(x);
  EXPECT_EQ(FirstDiff(s, Prefill(s, seq, DType::kF32), bf16), -1);
  EXPECT_EQ(FirstDiff(s, PagedChunked(s, seq, DType::kF32, 7, {3}, 1), bf16),
            -1);
}

TEST(Attention, GqaUsesGroupedKvHead) {
  // Query heads 2h and 2h+1 share KV head h: giving them the same query
  // vector must give the same output, and it must differ from the
  // neighbouring group's.
  const Shape s{4, 2, 8};
  Seq seq = RandomSeq(s, 20, 5);
  for (int64_t t = 0; t < seq.len; ++t) {
    for (int64_t h = 0; h < s.hq; ++h) {
      std::memcpy(seq.q.data() + t * s.q_row() + h * s.dim,
                  seq.q.data() + t * s.q_row(), s.dim * 4);
    }
  }
  const auto out = Prefill(s, seq, DType::kF32);
  const int64_t t = seq.len - 1;
  const float* o = out.data() + t * s.q_row();
  EXPECT_EQ(std::memcmp(o, o + s.dim, s.dim * 4), 0);
  EXPECT_EQ(std::memcmp(o + 2 * s.dim, o + 3 * s.dim, s.dim * 4), 0);
  EXPECT_NE(std::memcmp(o, o + 2 * s.dim, s.dim * 4), 0);
}

TEST(Attention, MixedBatchEqualsEachSequenceAlone) {
  const Shape s{6, 2, 16};
  const std::vector<int64_t> lens = {1, 5, 16, 17, 40, 77};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (int64_t page_size : {1, 7, 16, 32}) {
      std::vector<Seq> seqs;
      for (size_t i = 0; i < lens.size(); ++i) {
        seqs.push_back(RandomSeq(s, lens[i], 500 + i));
      }
      int64_t total_blocks = 0, max_blocks = 0;
      for (int64_t len : lens) {
        const int64_t b = (len + page_size - 1) / page_size;
        total_blocks += b;
        max_blocks = std::max(max_blocks, b);
      }
      Cache cache(s, dtype, total_blocks + 3, page_size);
      // Pages of all sequences interleaved at random.
      const auto pages = RandomPages(total_blocks, total_blocks + 3, page_size);
      std::vector<std::vector<int32_t>> tables;
      std::vector<const Seq*> ptrs;
      std::vector<Query> queries;
      int64_t next = 0;
      for (size_t i = 0; i < seqs.size(); ++i) {
        const int64_t b = (lens[i] + page_size - 1) / page_size;
        tables.emplace_back(pages.begin() + next, pages.begin() + next + b);
        next += b;
        Write(cache, s, seqs[i], tables.back(), 0, lens[i]);
        ptrs.push_back(&seqs[i]);
        for (int64_t p = 0; p < lens[i]; ++p) {
          queries.push_back({static_cast<int32_t>(i), static_cast<int32_t>(p)});
        }
      }
      std::shuffle(queries.begin(), queries.end(), std::mt19937(page_size));
      std::vector<std::vector<float>> outs;
      for (int64_t len : lens) outs.emplace_back(len * s.q_row());
      Attend(cache, s, ptrs, tables, max_blocks, queries, outs);
      for (size_t i = 0; i < seqs.size(); ++i) {
        EXPECT_EQ(FirstDiff(s, outs[i], Prefill(s, seqs[i], dtype)), -1)
            << DTypeName(dtype) << " page_size " << page_size << " seq " << i;
      }
    }
  }
}

TEST(Attention, DecodeRowIsBatchInvariant) {
  // One sequence's decode step, alone and inside decode batches of 1..64
  // sequences of random lengths, at a random row: identical bits.
  const Shape s{4, 2, 16};
  const int64_t page_size = 16;
  const Seq target = RandomSeq(s, 50, 8080);
  std::vector<float> alone;
  std::mt19937 rng(9);
  for (int64_t batch = 1; batch <= 64; ++batch) {
    std::vector<Seq> others;
    for (int64_t i = 0; i + 1 < batch; ++i) {
      others.push_back(
          RandomSeq(s, std::uniform_int_distribution<int64_t>(1, 80)(rng),
                    9000 + 100 * batch + i));
    }
    const int64_t at =
        std::uniform_int_distribution<int64_t>(0, batch - 1)(rng);
    std::vector<const Seq*> seqs;
    for (int64_t i = 0, o = 0; i < batch; ++i) {
      seqs.push_back(i == at ? &target : &others[o++]);
    }
    int64_t total_blocks = 0;
    const int64_t max_blocks = 80 / page_size + 1;
    for (const Seq* q : seqs)
      total_blocks += (q->len + page_size - 1) / page_size;
    Cache cache(s, DType::kBF16, total_blocks, page_size);
    const auto pages = RandomPages(total_blocks, total_blocks, 31 * batch);
    std::vector<std::vector<int32_t>> tables;
    std::vector<Query> queries;
    std::vector<std::vector<float>> outs;
    int64_t next = 0;
    for (int64_t i = 0; i < batch; ++i) {
      const int64_t b = (seqs[i]->len + page_size - 1) / page_size;
      tables.emplace_back(pages.begin() + next, pages.begin() + next + b);
      next += b;
      Write(cache, s, *seqs[i], tables.back(), 0, seqs[i]->len);
      queries.push_back(
          {static_cast<int32_t>(i), static_cast<int32_t>(seqs[i]->len - 1)});
      outs.emplace_back(seqs[i]->len * s.q_row());
    }
    Attend(cache, s, seqs, tables, max_blocks, queries, outs);
    const std::vector<float> row(outs[at].end() - s.q_row(), outs[at].end());
    if (batch == 1) {
      alone = row;
      const auto full = Prefill(s, target, DType::kBF16);
      EXPECT_TRUE(testing::SameBits(
          alone, std::vector<float>(full.end() - s.q_row(), full.end())));
    }
    EXPECT_TRUE(testing::SameBits(row, alone))
        << "batch " << batch << " row " << at;
  }
}

TEST(Attention, ThreadCountAndSimdLevelInvariant) {
  const Shape s{4, 2, 40};
  const Seq seq = RandomSeq(s, 60, 99, 4.0f);
  const int saved_threads = NumThreads();
  const SimdLevel saved_level = ActiveSimdLevel();
  SetNumThreads(1);
  ASSERT_TRUE(SetSimdLevel(SimdLevel::kScalar).ok());
  const auto ref = Prefill(s, seq, DType::kBF16);
  const auto ref_paged = PagedChunked(s, seq, DType::kBF16, 16, {7}, 3);
  EXPECT_EQ(FirstDiff(s, ref_paged, ref), -1);
  for (SimdLevel level :
       {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512}) {
    if (static_cast<int>(level) > static_cast<int>(DetectSimdLevel())) continue;
    ASSERT_TRUE(SetSimdLevel(level).ok());
    for (int threads : {1, 2, 7}) {
      SetNumThreads(threads);
      EXPECT_EQ(FirstDiff(s, Prefill(s, seq, DType::kBF16), ref), -1)
          << SimdLevelName(level) << " " << threads << " threads";
      EXPECT_EQ(
          FirstDiff(s, PagedChunked(s, seq, DType::kBF16, 16, {7}, 3), ref), -1)
          << SimdLevelName(level) << " " << threads << " threads (paged)";
    }
  }
  ASSERT_TRUE(SetSimdLevel(saved_level).ok());
  SetNumThreads(saved_threads);
}

TEST(Attention, WholeRowSoftmaxTwinDiffers) {
  // The standard (non-invariant) order: one max and one sum over the whole
  // row. It is as accurate, but its bits differ from the block-online order
  // at some position, so the bitwise tests above can fail.
  const Shape s{2, 1, 32};
  const Seq seq = RandomSeq(s, 200, 4242, 3.0f);
  const auto online = Prefill(s, seq, DType::kF32);
  const auto twin = Plain(s, seq, Order::kWholeRow);
  const auto ref = Reference(s, seq, DType::kF32);
  int64_t differing = 0;
  for (int64_t p = 0; p < seq.len; ++p) {
    differing += std::memcmp(online.data() + p * s.q_row(),
                             twin.data() + p * s.q_row(), s.q_row() * 4) != 0;
  }
  EXPECT_GT(differing, 0);
  // Keys 0..15 form a single block in both orders.
  EXPECT_EQ(
      FirstDiff(
          Shape{s.hq, s.hkv, s.dim},
          std::vector<float>(online.begin(), online.begin() + 16 * s.q_row()),
          std::vector<float>(twin.begin(), twin.begin() + 16 * s.q_row())),
      -1);
  for (size_t i = 0; i < twin.size(); ++i) EXPECT_NEAR(twin[i], ref[i], 2e-6);
}

TEST(WriteKv, WritesSlotsAndRounds) {
  const Shape s{2, 2, 3};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    Cache cache(s, dtype, 4, 5);
    const auto k = RandomFloats(3 * 8, 1), v = RandomFloats(3 * 8, 2);
    const std::vector<int64_t> slots = {19, 0, 7};
    KvWriteArgs w;
    w.cache = cache.c;
    w.k = k.data();
    w.ldk = 8;  // padded rows
    w.v = v.data();
    w.ldv = 8;
    w.slots = slots.data();
    w.tokens = 3;
    ASSERT_TRUE(WriteKv(w).ok());
    const int64_t row = s.kv_row();
    for (int64_t slot = 0; slot < 20; ++slot) {
      const auto it = std::find(slots.begin(), slots.end(), slot);
      for (int64_t i = 0; i < row; ++i) {
        const int64_t e = slot * row + i;
        if (it == slots.end()) {
          // Untouched bytes keep the fill pattern.
          EXPECT_EQ(cache.k[e * DTypeSize(dtype)], 0xCD);
          continue;
        }
        const int64_t t = it - slots.begin();
        const float ek =
            dtype == DType::kF32 ? k[t * 8 + i] : RoundToBF16(k[t * 8 + i]);
        const float ev =
            dtype == DType::kF32 ? v[t * 8 + i] : RoundToBF16(v[t * 8 + i]);
        EXPECT_EQ(LoadAsF32(cache.k.data(), dtype, e), ek);
        EXPECT_EQ(LoadAsF32(cache.v.data(), dtype, e), ev);
      }
    }
  }
}

TEST(WriteKv, RepeatedSlotKeepsLaterToken) {
  const Shape s{1, 1, 4};
  Cache cache(s, DType::kF32, 2, 2);
  const auto k = RandomFloats(3 * 4, 3), v = RandomFloats(3 * 4, 4);
  const std::vector<int64_t> slots = {1, 2, 1};
  KvWriteArgs w;
  w.cache = cache.c;
  w.k = k.data();
  w.ldk = 4;
  w.v = v.data();
  w.ldv = 4;
  w.slots = slots.data();
  w.tokens = 3;
  ASSERT_TRUE(WriteKv(w).ok());
  EXPECT_EQ(std::memcmp(cache.k.data() + 1 * 16, k.data() + 8, 16), 0);
  EXPECT_EQ(std::memcmp(cache.v.data() + 1 * 16, v.data() + 8, 16), 0);
}

TEST(Attention, BadArguments) {
  const Shape s{4, 2, 8};
  const Seq seq = RandomSeq(s, 6, 1);
  Cache cache(s, DType::kF32, 3, 4);
  const std::vector<int32_t> table = {2, 0};
  Write(cache, s, seq, table, 0, 6);
  auto invalid = [](const absl::Status& st, const char* what) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument)
        << what << ": " << st;
  };

  // WriteKv.
  const std::vector<int64_t> slots = {0, 11};
  KvWriteArgs w;
  w.cache = cache.c;
  w.k = seq.k.data();
  w.ldk = s.kv_row();
  w.v = seq.v.data();
  w.ldv = s.kv_row();
  w.slots = slots.data();
  w.tokens = 2;
  ASSERT_TRUE(WriteKv(w).ok());
  KvWriteArgs wb = w;
  wb.k = nullptr;
  invalid(WriteKv(wb), "null k");
  wb = w;
  wb.slots = nullptr;
  invalid(WriteKv(wb), "null slots");
  wb = w;
  wb.cache.v = nullptr;
  invalid(WriteKv(wb), "null cache.v");
  wb = w;
  wb.ldv = s.kv_row() - 1;
  invalid(WriteKv(wb), "ldv too small");
  wb = w;
  wb.cache.page_size = 0;
  invalid(WriteKv(wb), "page_size 0");
  for (int64_t bad : {int64_t{-1}, int64_t{12}}) {
    const std::vector<int64_t> bad_slots = {3, bad};
    Cache fresh(s, DType::kF32, 3, 4);
    wb = w;
    wb.cache = fresh.c;
    wb.slots = bad_slots.data();
    invalid(WriteKv(wb), "slot out of range");
    EXPECT_TRUE(std::all_of(fresh.k.begin(), fresh.k.end(), [](uint8_t b) {
      return b == 0xCD;
    })) << "nothing written on error";
  }

  // PagedAttention.
  std::vector<float> out(2 * s.q_row());
  std::vector<int32_t> pos = {5, 2}, seq_ids = {0, 0};
  std::vector<int32_t> bt = {2, 0, -1};  // one sequence, 3 blocks, third unset
  PagedAttentionArgs p;
  p.cache = cache.c;
  p.q = seq.q.data();
  p.ldq = s.q_row();
  p.out = out.data();
  p.ldo = s.q_row();
  p.tokens = 2;
  p.num_q_heads = s.hq;
  p.scale = s.scale();
  p.positions = pos.data();
  p.seq_ids = seq_ids.data();
  p.block_tables = bt.data();
  p.num_seqs = 1;
  p.max_blocks_per_seq = 3;
  ASSERT_TRUE(PagedAttention(p).ok());
  PagedAttentionArgs pb = p;
  pb.q = nullptr;
  invalid(PagedAttention(pb), "null q");
  pb = p;
  pb.out = nullptr;
  invalid(PagedAttention(pb), "null out");
  pb = p;
  pb.positions = nullptr;
  invalid(PagedAttention(pb), "null positions");
  pb = p;
  pb.seq_ids = nullptr;
  invalid(PagedAttention(pb), "null seq_ids");
  pb = p;
  pb.block_tables = nullptr;
  invalid(PagedAttention(pb), "null block_tables");
  pb = p;
  pb.num_q_heads = 3;
  invalid(PagedAttention(pb), "num_q_heads not a multiple of num_kv_heads");
  pb = p;
  pb.num_q_heads = 0;
  invalid(PagedAttention(pb), "num_q_heads 0");
  pb = p;
  pb.ldq = s.q_row() - 1;
  invalid(PagedAttention(pb), "ldq too small");
  pb = p;
  pb.ldo = 1;
  invalid(PagedAttention(pb), "ldo too small");
  pb = p;
  pb.scale = std::nanf("");
  invalid(PagedAttention(pb), "NaN scale");
  pb = p;
  pb.num_seqs = 0;
  invalid(PagedAttention(pb), "num_seqs 0");
  pb = p;
  pb.cache.head_dim = 0;
  invalid(PagedAttention(pb), "head_dim 0");
  pb = p;
  pb.cache.dtype = static_cast<DType>(3);
  invalid(PagedAttention(pb), "bad dtype");
  {
    std::vector<float> out2(out.size(), 7.0f);
    std::vector<int32_t> bad_pos = {5, 12};  // block 3 >= max_blocks 3
    pb = p;
    pb.out = out2.data();
    pb.positions = bad_pos.data();
    invalid(PagedAttention(pb), "position beyond block table");
    EXPECT_TRUE(std::all_of(out2.begin(), out2.end(), [](float x) {
      return x == 7.0f;
    })) << "nothing written on error";
    bad_pos = {5, 8};  // block 2 is -1 in the table
    invalid(PagedAttention(pb), "unset page id");
    bad_pos = {-1, 0};
    invalid(PagedAttention(pb), "negative position");
    std::vector<int32_t> bad_seq = {0, 1};
    pb = p;
    pb.seq_ids = bad_seq.data();
    invalid(PagedAttention(pb), "seq id out of range");
    std::vector<int32_t> bad_bt = {2, 3, 0};  // page 3 >= num_pages 3
    pb = p;
    pb.block_tables = bad_bt.data();
    invalid(PagedAttention(pb), "page id out of range");
  }

  // PrefillAttention.
  std::vector<float> pout(seq.len * s.q_row());
  PrefillAttentionArgs f;
  f.q = seq.q.data();
  f.ldq = s.q_row();
  f.k = seq.k.data();
  f.v = seq.v.data();
  f.ldk = s.kv_row();
  f.out = pout.data();
  f.ldo = s.q_row();
  f.tokens = seq.len;
  f.num_q_heads = s.hq;
  f.num_kv_heads = s.hkv;
  f.head_dim = s.dim;
  f.scale = s.scale();
  ASSERT_TRUE(PrefillAttention(f).ok());
  PrefillAttentionArgs fb = f;
  fb.k = nullptr;
  invalid(PrefillAttention(fb), "null k");
  fb = f;
  fb.v = nullptr;
  invalid(PrefillAttention(fb), "null v");
  fb = f;
  fb.q = nullptr;
  invalid(PrefillAttention(fb), "null q");
  fb = f;
  fb.out = nullptr;
  invalid(PrefillAttention(fb), "null out");
  fb = f;
  fb.num_kv_heads = 3;
  invalid(PrefillAttention(fb), "bad head ratio");
  fb = f;
  fb.num_kv_heads = 0;
  invalid(PrefillAttention(fb), "no kv heads");
  fb = f;
  fb.head_dim = 0;
  invalid(PrefillAttention(fb), "head_dim 0");
  fb = f;
  fb.ldk = s.kv_row() - 1;
  invalid(PrefillAttention(fb), "ldk too small");
  fb = f;
  fb.tokens = -3;
  invalid(PrefillAttention(fb), "negative tokens");
  fb = f;
  fb.scale = INFINITY;
  invalid(PrefillAttention(fb), "infinite scale");

  if (!CudaKernelsBuilt()) {
    const ExecContext cuda{Device::kCuda, nullptr};
    EXPECT_EQ(PrefillAttention(f, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(PagedAttention(p, cuda).code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(WriteKv(w, cuda).code(), absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace lockstep::kernels
