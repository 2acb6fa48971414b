// CUDA attention: prefill, decode, chunked prefill, page layouts and
// batching give identical bits per query; accuracy against float64.
// Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/dtype.h"
#include "tests/testing/cuda_test_util.h"
#include "tests/testing/random.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/attention_tc.h"

namespace lockstep::kernels {
namespace {


struct AttnSetup {
  int64_t hq = 8, hkv = 2, d = 64, tokens = 100;
  DType dtype = DType::kBF16;
  float scale = 0.125f;
  std::vector<float> q, k, v;  // k, v rounded to dtype (the stored values)
};

AttnSetup MakeSetup(int64_t d, DType dtype, uint64_t seed, int64_t tokens = 100,
                    int64_t hq = 8, int64_t hkv = 2) {
  AttnSetup s;
  s.tokens = tokens;
  s.hq = hq;
  s.hkv = hkv;
  s.d = d;
  s.dtype = dtype;
  s.scale = 1.0f / std::sqrt(static_cast<float>(d));
  s.q = testing::RandomFloats(s.tokens * s.hq * d, seed, -2.0f, 2.0f);
  s.k = testing::RandomFloats(s.tokens * s.hkv * d, seed + 1, -2.0f, 2.0f);
  s.v = testing::RandomFloats(s.tokens * s.hkv * d, seed + 2);
  if (dtype == DType::kBF16) {
    s.k = RoundedBf16(s.k);
    s.v = RoundedBf16(s.v);
  }
  return s;
}

// Device storage of a float array in `dtype`.
struct Stored {
  DevBuf<float> f;
  DevBuf<uint16_t> b;
  DType dtype;
  Stored(const std::vector<float>& v, DType dt) : dtype(dt) {
    if (dt == DType::kF32) {
      f = DevBuf<float>(v);
    } else {
      b = DevBuf<uint16_t>(ToBf16(v));
    }
  }
  void* get() const {
    return dtype == DType::kF32 ? static_cast<void*>(f.get()) : b.get();
  }
};

std::vector<float> RunPrefill(const AttnSetup& s) {
  DevBuf<float> q(s.q);
  Stored k(s.k, s.dtype), v(s.v, s.dtype);
  DevBuf<float> out(s.tokens * s.hq * s.d);
  out.Poison();
  PrefillAttentionArgs a;
  a.q = q.get();
  a.ldq = s.hq * s.d;
  a.k = k.get();
  a.v = v.get();
  a.ldk = s.hkv * s.d;
  a.kv_dtype = s.dtype;
  a.out = out.get();
  a.ldo = s.hq * s.d;
  a.tokens = s.tokens;
  a.num_q_heads = s.hq;
  a.num_kv_heads = s.hkv;
  a.head_dim = s.d;
  a.scale = s.scale;
  absl::Status st = cuda::PrefillAttention(a, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return out.Download();
}

// A paged cache holding the setup's sequence (seq 0) and `others` random
// sequences, pages assigned by a permutation drawn from `seed`.
struct PagedWorld {
  int64_t page_size;
  int64_t max_blocks;
  int64_t num_seqs;
  std::vector<int32_t> tables;  // [num_seqs, max_blocks]
  DevBuf<float> kc32, vc32;
  DevBuf<uint16_t> kc16, vc16;
  PagedKvCache cache;
};

void BuildWorld(PagedWorld& w, const AttnSetup& s, int64_t page_size,
                int64_t others, uint64_t seed) {
  w.page_size = page_size;
  w.max_blocks = (s.tokens + page_size - 1) / page_size;
  w.num_seqs = 1 + others;
  const int64_t pages = w.num_seqs * w.max_blocks + 3;
  std::vector<int32_t> perm(pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  w.tables.assign(perm.begin(), perm.begin() + w.num_seqs * w.max_blocks);
  const int64_t elems = pages * page_size * s.hkv * s.d;
  w.cache.dtype = s.dtype;
  w.cache.num_pages = pages;
  w.cache.page_size = page_size;
  w.cache.num_kv_heads = s.hkv;
  w.cache.head_dim = s.d;
  if (s.dtype == DType::kF32) {
    w.kc32 = DevBuf<float>(elems);
    w.vc32 = DevBuf<float>(elems);
    w.cache.k = w.kc32.get();
    w.cache.v = w.vc32.get();
  } else {
    w.kc16 = DevBuf<uint16_t>(elems);
    w.vc16 = DevBuf<uint16_t>(elems);
    w.cache.k = w.kc16.get();
    w.cache.v = w.vc16.get();
  }
  // Write every sequence's K/V through WriteKv (other sequences: random).
  for (int64_t sq = 0; sq < w.num_seqs; ++sq) {
    std::vector<float> k = sq == 0 ? s.k : testing::RandomFloats(s.k.size(), seed + 10 * sq);
    std::vector<float> v = sq == 0 ? s.v : testing::RandomFloats(s.v.size(), seed + 10 * sq + 1);
    std::vector<int64_t> slots(s.tokens);
    for (int64_t t = 0; t < s.tokens; ++t) {
      slots[t] = int64_t{w.tables[sq * w.max_blocks + t / page_size]} * page_size +
                 t % page_size;
    }
    DevBuf<float> dk(k), dv(v);
    DevBuf<int64_t> ds(slots);
    KvWriteArgs a;
    a.cache = w.cache;
    a.k = dk.get();
    a.ldk = s.hkv * s.d;
    a.v = dv.get();
    a.ldv = s.hkv * s.d;
    a.slots = ds.get();
    a.tokens = s.tokens;
    EXPECT_TRUE(cuda::WriteKv(a, nullptr).ok());
    cudaDeviceSynchronize();
  }
}

// Runs PagedAttention on a flat batch: entries (seq, position); queries of
// seq 0 come from the setup, others are random. Returns [entries, hq*d].
std::vector<float> RunPaged(const AttnSetup& s, const PagedWorld& w,
                            const std::vector<std::pair<int32_t, int32_t>>& batch) {
  const int64_t row = s.hq * s.d;
  std::vector<float> q(batch.size() * row);
  std::vector<float> noise = testing::RandomFloats(row, 999);
  for (size_t i = 0; i < batch.size(); ++i) {
    const float* src = batch[i].first == 0 ? &s.q[batch[i].second * row] : noise.data();
    std::memcpy(&q[i * row], src, row * sizeof(float));
  }
  std::vector<int32_t> pos(batch.size()), seq(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    seq[i] = batch[i].first;
    pos[i] = batch[i].second;
  }
  DevBuf<float> dq(q);
  DevBuf<int32_t> dpos(pos), dseq(seq), dt(w.tables);
  DevBuf<float> out(batch.size() * row);
  out.Poison();
  PagedAttentionArgs a;
  a.cache = w.cache;
  a.q = dq.get();
  a.ldq = row;
  a.out = out.get();
  a.ldo = row;
  a.tokens = static_cast<int64_t>(batch.size());
  a.num_q_heads = s.hq;
  a.scale = s.scale;
  a.positions = dpos.get();
  a.seq_ids = dseq.get();
  a.block_tables = dt.get();
  a.num_seqs = w.num_seqs;
  a.max_blocks_per_seq = w.max_blocks;
  absl::Status st = cuda::PagedAttention(a, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return out.Download();
}

std::vector<double> RefAttention(const AttnSetup& s) {
  const int64_t g = s.hq / s.hkv;
  std::vector<double> out(s.tokens * s.hq * s.d);
  for (int64_t t = 0; t < s.tokens; ++t) {
    for (int64_t h = 0; h < s.hq; ++h) {
      const int64_t kvh = h / g;
      std::vector<double> sc(t + 1);
      double mx = -1e300;
      for (int64_t j = 0; j <= t; ++j) {
        double dot = 0;
        for (int64_t e = 0; e < s.d; ++e) {
          dot += double(s.q[(t * s.hq + h) * s.d + e]) * s.k[(j * s.hkv + kvh) * s.d + e];
        }
        sc[j] = dot * s.scale;
        mx = std::max(mx, sc[j]);
      }
      double den = 0;
      for (int64_t j = 0; j <= t; ++j) den += std::exp(sc[j] - mx);
      for (int64_t e = 0; e < s.d; ++e) {
        double acc = 0;
        for (int64_t j = 0; j <= t; ++j) {
          acc += std::exp(sc[j] - mx) * s.v[(j * s.hkv + kvh) * s.d + e];
        }
        out[(t * s.hq + h) * s.d + e] = acc / den;
      }
    }
  }
  return out;
}

// The tensor-core path (bf16 K/V, head_dim 64/128) rounds q and p to bf16:
// the bf16 bound; the SIMT path computes in fp32.
double Tolerance(const AttnSetup& s) {
  return cuda::TcAttentionApplies(s.dtype, s.d, s.hq / s.hkv) ? 1e-2 : 1e-5;
}

class AttentionCudaTest
    : public ::testing::TestWithParam<std::tuple<int64_t, DType>> {};

// Prefill, token-by-token decode, chunked prefill (chunks 1, 3, 16, 61),
// two page layouts (page sizes 16 and 5, shuffled pages) and decode batched
// with other sequences in shuffled order: identical bits for every query.
TEST_P(AttentionCudaTest, PrefillDecodeChunkedAndPageLayoutsAgreeBitwise) {
  SKIP_WITHOUT_GPU();
  const auto [d, dtype] = GetParam();
  const AttnSetup s = MakeSetup(d, dtype, 17 + d);
  const int64_t row = s.hq * s.d;
  const std::vector<float> prefill = RunPrefill(s);
  for (float x : prefill) ASSERT_FALSE(std::isnan(x));
  EXPECT_LE(RelErr(RefAttention(s), prefill), Tolerance(s));

  for (int64_t page_size : {16, 5}) {
    PagedWorld w;
    BuildWorld(w, s, page_size, /*others=*/2, 1000 + page_size);
    // Decode: one query at a time.
    for (int32_t p = 0; p < s.tokens; ++p) {
      std::vector<float> o = RunPaged(s, w, {{0, p}});
      ASSERT_EQ(std::memcmp(o.data(), &prefill[p * row], row * sizeof(float)), 0)
          << "decode p=" << p << " page_size=" << page_size;
    }
    // Chunked prefill.
    const int chunks[] = {1, 3, 16, 61};
    int32_t p = 0;
    for (int ci = 0; p < s.tokens; ++ci) {
      const int32_t len = std::min<int32_t>(chunks[ci % 4], s.tokens - p);
      std::vector<std::pair<int32_t, int32_t>> b;
      for (int32_t i = 0; i < len; ++i) b.push_back({0, p + i});
      std::vector<float> o = RunPaged(s, w, b);
      ASSERT_EQ(std::memcmp(o.data(), &prefill[p * row], len * row * sizeof(float)), 0)
          << "chunk at " << p << " len " << len;
      p += len;
    }
    // Decode of every position of seq 0, batched with queries of the other
    // sequences, in shuffled order.
    std::vector<std::pair<int32_t, int32_t>> b;
    for (int32_t q = 0; q < s.tokens; ++q) {
      b.push_back({0, q});
      b.push_back({1 + q % 2, (q * 7) % static_cast<int32_t>(s.tokens)});
    }
    std::mt19937_64 rng(5);
    std::shuffle(b.begin(), b.end(), rng);
    std::vector<float> o = RunPaged(s, w, b);
    for (size_t i = 0; i < b.size(); ++i) {
      if (b[i].first != 0) continue;
      ASSERT_EQ(std::memcmp(&o[i * row], &prefill[b[i].second * row], row * sizeof(float)), 0)
          << "batched p=" << b[i].second;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    HeadDimsAndDtypes, AttentionCudaTest,
    ::testing::Values(std::make_tuple(int64_t{64}, DType::kBF16),
                      std::make_tuple(int64_t{128}, DType::kBF16),
                      std::make_tuple(int64_t{128}, DType::kF32),
                      std::make_tuple(int64_t{36}, DType::kBF16),
                      std::make_tuple(int64_t{40}, DType::kF32)));

// Contexts longer than one 512-key split (the tensor-core path folds splits
// inline in prefill and in a second kernel for the paged cache): prefill,
// decode at split boundaries, chunked prefill and a shuffled batch of every
// position give identical bits; accuracy against float64.
TEST(AttentionCudaSplitTest, LongContextsAgreeBitwiseAcrossSplits) {
  SKIP_WITHOUT_GPU();
  for (const auto& [d, hq, hkv] : {std::make_tuple(128, 4, 2), std::make_tuple(64, 16, 1)}) {
    SCOPED_TRACE(::testing::Message() << "d=" << d << " hq=" << hq << " hkv=" << hkv);
    const AttnSetup s = MakeSetup(d, DType::kBF16, 91 + d, /*tokens=*/1100, hq, hkv);
    ASSERT_TRUE(cuda::TcAttentionApplies(s.dtype, s.d, s.hq / s.hkv));
    const int64_t row = s.hq * s.d;
    const std::vector<float> prefill = RunPrefill(s);
    for (float x : prefill) ASSERT_FALSE(std::isnan(x));
    EXPECT_LE(RelErr(RefAttention(s), prefill), Tolerance(s));
    PagedWorld w;
    BuildWorld(w, s, /*page_size=*/16, /*others=*/1, 4242);
    for (int32_t p : {0, 63, 64, 510, 511, 512, 513, 1000, 1023, 1024, 1099}) {
      std::vector<float> o = RunPaged(s, w, {{0, p}});
      ASSERT_EQ(std::memcmp(o.data(), &prefill[p * row], row * sizeof(float)), 0)
          << "decode p=" << p;
    }
    int32_t p = 0;
    const int chunks[] = {700, 1, 61, 338};
    for (int ci = 0; p < s.tokens; ++ci) {
      const int32_t len = std::min<int32_t>(chunks[ci % 4], s.tokens - p);
      std::vector<std::pair<int32_t, int32_t>> b;
      for (int32_t i = 0; i < len; ++i) b.push_back({0, p + i});
      std::vector<float> o = RunPaged(s, w, b);
      ASSERT_EQ(std::memcmp(o.data(), &prefill[p * row], len * row * sizeof(float)), 0)
          << "chunk at " << p << " len " << len;
      p += len;
    }
    std::vector<std::pair<int32_t, int32_t>> b;
    for (int32_t q = 0; q < s.tokens; ++q) {
      b.push_back({0, q});
      if (q % 3 == 0) b.push_back({1, (q * 13) % static_cast<int32_t>(s.tokens)});
    }
    std::mt19937_64 rng(8);
    std::shuffle(b.begin(), b.end(), rng);
    std::vector<float> o = RunPaged(s, w, b);
    for (size_t i = 0; i < b.size(); ++i) {
      if (b[i].first != 0) continue;
      ASSERT_EQ(std::memcmp(&o[i * row], &prefill[b[i].second * row], row * sizeof(float)), 0)
          << "batched p=" << b[i].second;
    }
  }
}

// A block table pointing outside the cache poisons that query's output
// instead of reading out of place; other queries are untouched.
TEST(AttentionCudaGuardTest, BadPageGivesNaNRowOnly) {
  SKIP_WITHOUT_GPU();
  const AttnSetup s = MakeSetup(64, DType::kBF16, 3);
  PagedWorld w;
  BuildWorld(w, s, 16, 1, 77);
  const std::vector<float> good = RunPaged(s, w, {{0, 50}, {1, 20}});
  w.tables[1 * w.max_blocks + 0] = 1 << 20;  // seq 1's first page: invalid
  const std::vector<float> mixed = RunPaged(s, w, {{0, 50}, {1, 20}});
  const int64_t row = s.hq * s.d;
  EXPECT_EQ(std::memcmp(mixed.data(), good.data(), row * sizeof(float)), 0);
  EXPECT_TRUE(std::isnan(mixed[row]));
}

// Same across splits: a bad page in a 1100-token context poisons every value
// of that query (through the split combine), and only that query.
TEST(AttentionCudaGuardTest, BadPageAcrossSplitsGivesNaNRowOnly) {
  SKIP_WITHOUT_GPU();
  const AttnSetup s = MakeSetup(128, DType::kBF16, 5, /*tokens=*/1100);
  PagedWorld w;
  BuildWorld(w, s, 16, 1, 78);
  const std::vector<float> good = RunPaged(s, w, {{0, 1050}, {1, 900}});
  w.tables[1 * w.max_blocks + 40] = -3;  // seq 1, keys 640..655: invalid
  const std::vector<float> mixed = RunPaged(s, w, {{0, 1050}, {1, 900}});
  const int64_t row = s.hq * s.d;
  EXPECT_EQ(std::memcmp(mixed.data(), good.data(), row * sizeof(float)), 0);
  for (int64_t i = row; i < 2 * row; ++i) ASSERT_TRUE(std::isnan(mixed[i])) << i;
}

}  // namespace
}  // namespace lockstep::kernels
