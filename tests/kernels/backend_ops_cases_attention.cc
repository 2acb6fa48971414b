// Op cases of attention (kernels/attention.h): full-sequence prefill is the
// full problem; decode, chunked prefill and decode batched with other
// sequences' queries (in shuffled order) through WriteKv + PagedAttention
// on a shuffled page layout are the batches, which must give every query the
// prefill's bits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "tests/kernels/backend_ops_cases.h"
#include "tests/testing/random.h"

namespace lockstep::kernels::backend_ops {
namespace {

using ::lockstep::testing::RandomFloats;

struct AttnSpec {
  int64_t d = 64, tokens = 100, hq = 8, hkv = 2;
  DType dtype = DType::kBF16;  // of K/V
  uint64_t seed = 0;
  int64_t page_size = 16;
  int64_t others = 2;           // other sequences in the cache
  uint64_t world_seed = 0;      // page permutation, other sequences' K/V
  std::vector<int32_t> decode;  // positions decoded alone; empty: all
  std::vector<int32_t> chunks;  // chunked prefill lengths, cyclic
  // The mixed batch: every position q of sequence 0, after each one with
  // q % filler_every == 0 a query of sequence 1 + q % filler_seqs at
  // position (q * filler_stride) % tokens; shuffled by shuffle_seed.
  int filler_every = 1, filler_seqs = 2, filler_stride = 7;
  uint64_t shuffle_seed = 5;
  // A backend with tensor-core attention must take it for this shape.
  bool expect_tensor_cores = false;
  // Bad page: queries (0, good_pos) and (1, bad_pos) with entry bad_block
  // of sequence 1's block table set to bad_page.
  bool bad_page_check = false;
  int32_t good_pos = 0, bad_pos = 0;
  int64_t bad_block = 0;
  int32_t bad_page = 0;
  // The standard mode's FlashDecoding splits (PagedAttentionArgs::
  // batch_dependent_splits): invariance holds only within the first key
  // block (Batchings); CheckProperties checks
  // every query decoded alone (the most splits) against float64 and, on a
  // tensor-core backend, that some query's bits change with the batch (the
  // negative control of the invariant splits).
  bool batch_dependent_splits = false;
};

class AttentionCase : public OpCase {
 public:
  explicit AttentionCase(const AttnSpec& s) : s_(s), row_(s.hq * s.d) {
    scale_ = 1.0f / std::sqrt(static_cast<float>(s.d));
    q_ = RandomFloats(s.tokens * s.hq * s.d, s.seed, -2.0f, 2.0f);
    k_ = RandomFloats(s.tokens * s.hkv * s.d, s.seed + 1, -2.0f, 2.0f);
    v_ = RandomFloats(s.tokens * s.hkv * s.d, s.seed + 2);
    if (s.dtype == DType::kBF16) {
      k_ = RoundedBf16(k_);
      v_ = RoundedBf16(v_);
    }
    noise_ = RandomFloats(row_, 999);
    for (int32_t q = 0; q < s.tokens; ++q) {
      if (q % s.filler_every == 0) {
        fillers_.push_back(
            {1 + q % s.filler_seqs,
             static_cast<int32_t>((q * s.filler_stride) % s.tokens)});
      }
    }
    max_blocks_ = (s.tokens + s.page_size - 1) / s.page_size;
    num_seqs_ = 1 + s.others;
    pages_ = num_seqs_ * max_blocks_ + 3;
    std::vector<int32_t> perm(pages_);
    std::iota(perm.begin(), perm.end(), 0);
    std::mt19937_64 rng(s.world_seed);
    std::shuffle(perm.begin(), perm.end(), rng);
    tables_.assign(perm.begin(), perm.begin() + num_seqs_ * max_blocks_);
  }

  int64_t rows() const override { return s_.tokens; }

  absl::Status Prepare(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(dq_, b.Upload(q_));
    LOCKSTEP_ASSIGN_OR_RETURN(dk_, b.Upload(StoreAs(k_, s_.dtype)));
    LOCKSTEP_ASSIGN_OR_RETURN(dv_, b.Upload(StoreAs(v_, s_.dtype)));
    LOCKSTEP_ASSIGN_OR_RETURN(dtables_, b.Upload(tables_));
    // The paged cache, every sequence written through WriteKv (the others'
    // K/V random).
    const int64_t elems = pages_ * s_.page_size * s_.hkv * s_.d;
    LOCKSTEP_ASSIGN_OR_RETURN(kc_, b.Alloc(elems * DTypeSize(s_.dtype)));
    LOCKSTEP_ASSIGN_OR_RETURN(vc_, b.Alloc(elems * DTypeSize(s_.dtype)));
    cache_.k = kc_.data();
    cache_.v = vc_.data();
    cache_.dtype = s_.dtype;
    cache_.num_pages = pages_;
    cache_.page_size = s_.page_size;
    cache_.num_kv_heads = s_.hkv;
    cache_.head_dim = s_.d;
    for (int64_t sq = 0; sq < num_seqs_; ++sq) {
      const std::vector<float> k =
          sq == 0 ? k_ : RandomFloats(k_.size(), s_.world_seed + 10 * sq);
      const std::vector<float> v =
          sq == 0 ? v_ : RandomFloats(v_.size(), s_.world_seed + 10 * sq + 1);
      std::vector<int64_t> slots(s_.tokens);
      for (int64_t t = 0; t < s_.tokens; ++t) {
        slots[t] = int64_t{tables_[sq * max_blocks_ + t / s_.page_size]} *
                       s_.page_size +
                   t % s_.page_size;
      }
      LOCKSTEP_ASSIGN_OR_RETURN(Buffer dk, b.Upload(k));
      LOCKSTEP_ASSIGN_OR_RETURN(Buffer dv, b.Upload(v));
      LOCKSTEP_ASSIGN_OR_RETURN(Buffer ds, b.Upload(slots));
      KvWriteArgs a;
      a.cache = cache_;
      a.k = dk.as<float>();
      a.ldk = s_.hkv * s_.d;
      a.v = dv.as<float>();
      a.ldv = s_.hkv * s_.d;
      a.slots = ds.as<int64_t>();
      a.tokens = s_.tokens;
      LOCKSTEP_RETURN_IF_ERROR(WriteKv(a, b.context()));
      // Waits for the write before the upload buffers go.
      LOCKSTEP_RETURN_IF_ERROR(b.Synchronize());
    }
    return absl::OkStatus();
  }

  // Full-sequence prefill.
  absl::StatusOr<Output> RunFull(Backend& b) override {
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer out, b.Alloc(s_.tokens * row_ * 4));
    PrefillAttentionArgs a;
    a.q = dq_.as<float>();
    a.ldq = row_;
    a.k = dk_.data();
    a.v = dv_.data();
    a.ldk = s_.hkv * s_.d;
    a.kv_dtype = s_.dtype;
    a.out = out.as<float>();
    a.ldo = row_;
    a.tokens = s_.tokens;
    a.num_q_heads = s_.hq;
    a.num_kv_heads = s_.hkv;
    a.head_dim = s_.d;
    a.scale = scale_;
    LOCKSTEP_RETURN_IF_ERROR(PrefillAttention(a, b.context()));
    return DownloadOutput(b, out.as<float>(), OutType::kF32, s_.tokens, row_);
  }

  // PagedAttention of one flat batch: row r is sequence 0's query at
  // position r, fillers other sequences' (noise) queries.
  absl::StatusOr<Output> Run(Backend& b, const Batch& batch) override {
    std::vector<std::pair<int32_t, int32_t>> entries;
    for (int64_t r : batch.rows) {
      entries.push_back(
          r >= 0 ? std::make_pair(int32_t{0}, static_cast<int32_t>(r))
                 : fillers_.at(FillerIndex(r)));
    }
    return RunPaged(b, entries, dtables_);
  }

  std::vector<double> Reference() const override {
    const int64_t g = s_.hq / s_.hkv;
    std::vector<double> out(s_.tokens * row_);
    std::vector<double> w(s_.tokens);
    for (int64_t t = 0; t < s_.tokens; ++t) {
      for (int64_t h = 0; h < s_.hq; ++h) {
        const int64_t kvh = h / g;
        const float* q = &q_[(t * s_.hq + h) * s_.d];
        double mx = -1e300;
        for (int64_t j = 0; j <= t; ++j) {
          const float* k = &k_[(j * s_.hkv + kvh) * s_.d];
          double dot = 0;
          for (int64_t e = 0; e < s_.d; ++e) dot += double{q[e]} * k[e];
          w[j] = dot * scale_;
          mx = std::max(mx, w[j]);
        }
        double den = 0;
        for (int64_t j = 0; j <= t; ++j) {
          w[j] = std::exp(w[j] - mx);
          den += w[j];
        }
        double* o = &out[(t * s_.hq + h) * s_.d];
        for (int64_t j = 0; j <= t; ++j) {
          const float* v = &v_[(j * s_.hkv + kvh) * s_.d];
          for (int64_t e = 0; e < s_.d; ++e) o[e] += w[j] * v[e];
        }
        for (int64_t e = 0; e < s_.d; ++e) o[e] /= den;
      }
    }
    return out;
  }
  // The tensor-core path (bf16 K/V, head_dim 64/128) rounds q and p to
  // bf16: the bf16 bound; the others compute in fp32.
  double Tolerance(const Backend& b) const override {
    return b.TensorCoreAttention(s_.dtype, s_.d, s_.hq / s_.hkv) ? 1e-2 : 1e-5;
  }

  std::vector<Batch> Batchings() const override {
    std::vector<Batch> out;
    if (s_.batch_dependent_splits) {
      // Queries within the first 64-key block have one split under every
      // policy, so these keep the prefill's bits; the rest is checked in
      // CheckProperties.
      for (int32_t p : {0, 1, 31, 63}) out.push_back({absl::StrCat("decode p=", p), {p}, false});
      return out;
    }
    // Decode: one query at a time.
    std::vector<int32_t> decode = s_.decode;
    if (decode.empty()) {
      for (int32_t p = 0; p < s_.tokens; ++p) decode.push_back(p);
    }
    for (int32_t p : decode) {
      out.push_back({absl::StrCat("decode p=", p), {p}, false});
    }
    // Chunked prefill.
    int32_t p = 0;
    for (size_t ci = 0; p < s_.tokens; ++ci) {
      const int32_t len =
          std::min<int32_t>(s_.chunks[ci % s_.chunks.size()], s_.tokens - p);
      Batch c{absl::StrCat("chunk at ", p, " len ", len), {}, false};
      for (int32_t i = 0; i < len; ++i) c.rows.push_back(p + i);
      out.push_back(std::move(c));
      p += len;
    }
    // Every position of sequence 0 among other sequences' queries, shuffled.
    Batch mixed{"every position among other sequences, shuffled", {}, false};
    int64_t f = 0;
    for (int32_t q = 0; q < s_.tokens; ++q) {
      mixed.rows.push_back(q);
      if (q % s_.filler_every == 0) mixed.rows.push_back(Filler(f++));
    }
    std::mt19937_64 rng(s_.shuffle_seed);
    std::shuffle(mixed.rows.begin(), mixed.rows.end(), rng);
    out.push_back(std::move(mixed));
    return out;
  }

  CpuContract cpu_contract() const override {
    return CpuContract::kWithinTolerance;  // exp differs
  }

  void CheckProperties(Backend& b, const Output&) override {
    if (s_.expect_tensor_cores && b.HasTensorCoreAttention()) {
      EXPECT_TRUE(b.TensorCoreAttention(s_.dtype, s_.d, s_.hq / s_.hkv))
          << "this shape must take the tensor-core path";
    }
    if (s_.bad_page_check) CheckBadPage(b);
    if (s_.batch_dependent_splits) CheckBatchDependentSplits(b);
  }

 private:
  absl::StatusOr<Output> RunPaged(
      Backend& b, const std::vector<std::pair<int32_t, int32_t>>& entries,
      const Buffer& tables) {
    const int64_t n = static_cast<int64_t>(entries.size());
    std::vector<float> q(n * row_);
    std::vector<int32_t> pos(n), seq(n);
    for (int64_t i = 0; i < n; ++i) {
      const float* src =
          entries[i].first == 0 ? &q_[entries[i].second * row_] : noise_.data();
      std::memcpy(&q[i * row_], src, row_ * 4);
      seq[i] = entries[i].first;
      pos[i] = entries[i].second;
    }
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer dq, b.Upload(q));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer dpos, b.Upload(pos));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer dseq, b.Upload(seq));
    LOCKSTEP_ASSIGN_OR_RETURN(Buffer out, b.Alloc(n * row_ * 4));
    PagedAttentionArgs a;
    a.cache = cache_;
    a.q = dq.as<float>();
    a.ldq = row_;
    a.out = out.as<float>();
    a.ldo = row_;
    a.tokens = n;
    a.num_q_heads = s_.hq;
    a.scale = scale_;
    a.positions = dpos.as<int32_t>();
    a.seq_ids = dseq.as<int32_t>();
    a.block_tables = tables.as<int32_t>();
    a.num_seqs = num_seqs_;
    a.max_blocks_per_seq = max_blocks_;
    a.batch_dependent_splits = s_.batch_dependent_splits;
    LOCKSTEP_RETURN_IF_ERROR(PagedAttention(a, b.context()));
    return DownloadOutput(b, out.as<float>(), OutType::kF32, n, row_);
  }

  // Every query of sequence 0 decoded alone, within the tolerance of float64;
  // the same queries in one batch with the others' (fewer splits each) differ
  // in some bit on a tensor-core backend.
  void CheckBatchDependentSplits(Backend& b) {
    std::vector<std::pair<int32_t, int32_t>> batch;
    std::vector<double> alone;
    std::vector<uint8_t> alone_bits;
    for (int32_t p = 0; p < s_.tokens; ++p) {
      absl::StatusOr<Output> one = RunPaged(b, {{0, p}}, dtables_);
      ASSERT_TRUE(one.ok()) << one.status();
      const std::vector<double> v = one->Values();
      alone.insert(alone.end(), v.begin(), v.end());
      alone_bits.insert(alone_bits.end(), one->bytes.begin(), one->bytes.end());
      batch.push_back({0, p});
    }
    EXPECT_LE(RelErr(Reference(), alone), Tolerance(b)) << "decode alone vs float64";
    for (const auto& f : fillers_) batch.push_back(f);
    absl::StatusOr<Output> all = RunPaged(b, batch, dtables_);
    ASSERT_TRUE(all.ok()) << all.status();
    const bool same =
        std::memcmp(all->bytes.data(), alone_bits.data(), alone_bits.size()) == 0;
    if (b.TensorCoreAttention(s_.dtype, s_.d, s_.hq / s_.hkv)) {
      EXPECT_FALSE(same) << "batch-dependent splits gave the invariant bits";
    }
  }

  // A block table pointing outside the cache never reads out of place:
  // the backend refuses the call, or poisons only that query's output; alone
  // and crowded by filler queries (>= 2,048 (token, KV head) pairs: the
  // paged kernel's whole-token mode on any GPU up to 682 SMs).
  void CheckBadPage(Backend& b) {
    std::vector<std::pair<int32_t, int32_t>> queries = {{0, s_.good_pos}, {1, s_.bad_pos}};
    CheckBadPage(b, queries);
    for (size_t i = 0; static_cast<int64_t>(queries.size()) * s_.hkv < 2048; ++i) {
      queries.push_back(fillers_[i % fillers_.size()]);
    }
    CheckBadPage(b, queries);
  }

  // CheckBadPage for one batch whose first two rows are (0, good_pos) and
  // (1, bad_pos).
  void CheckBadPage(Backend& b, const std::vector<std::pair<int32_t, int32_t>>& queries) {
    SCOPED_TRACE(absl::StrCat(queries.size(), " queries"));
    absl::StatusOr<Output> good = RunPaged(b, queries, dtables_);
    ASSERT_TRUE(good.ok()) << good.status();
    std::vector<int32_t> bad = tables_;
    bad[1 * max_blocks_ + s_.bad_block] = s_.bad_page;
    absl::StatusOr<Buffer> dbad = b.Upload(bad);
    ASSERT_TRUE(dbad.ok()) << dbad.status();
    absl::StatusOr<Output> mixed = RunPaged(b, queries, *dbad);
    if (b.bad_page_handling() == BadPageHandling::kInvalidArgument) {
      EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument)
          << "a bad page was accepted";
      return;
    }
    ASSERT_TRUE(mixed.ok()) << mixed.status();
    EXPECT_EQ(std::memcmp(mixed->row(0), good->row(0), row_ * 4), 0)
        << "the good query changed";
    const std::vector<double> v = mixed->Values();
    for (int64_t i = row_; i < 2 * row_; ++i) {
      ASSERT_TRUE(std::isnan(v[i]))
          << "bad query's element " << i - row_ << " is not NaN";
    }
  }

  AttnSpec s_;
  int64_t row_;
  float scale_;
  std::vector<float> q_, k_, v_;  // k, v rounded to dtype (the stored values)
  std::vector<float> noise_;      // the query of every filler
  std::vector<std::pair<int32_t, int32_t>> fillers_;  // (sequence, position)
  int64_t max_blocks_, num_seqs_, pages_;
  std::vector<int32_t> tables_;  // [num_seqs, max_blocks] page ids
  Buffer dq_, dk_, dv_, dtables_, kc_, vc_;
  PagedKvCache cache_;
};

std::string Vars(const AttnSpec& s) {
  return absl::StrCat("d=", s.d, ",kv=", std::string(DTypeName(s.dtype)),
                      ",tokens=", s.tokens, ",hq=", s.hq, ",hkv=", s.hkv,
                      ",page=", s.page_size);
}

}  // namespace

std::vector<CaseEntry> AttentionCases() {
  std::vector<CaseEntry> cases;
  auto add = [&](const AttnSpec& s, absl::string_view note, bool heavy) {
    std::string vars = Vars(s);
    if (!note.empty()) absl::StrAppend(&vars, ",", note);
    cases.push_back({"attention", vars, heavy,
                     [s] { return std::make_unique<AttentionCase>(s); }});
  };
  // PrefillDecodeChunkedAndPageLayoutsAgreeBitwise: 100 tokens, 8 query
  // heads on 2 KV heads, page sizes 16 and 5, 2 other sequences.
  for (const auto& [d, dtype] : {std::make_pair(int64_t{64}, DType::kBF16),
                                 std::make_pair(int64_t{128}, DType::kBF16),
                                 std::make_pair(int64_t{128}, DType::kF32),
                                 std::make_pair(int64_t{36}, DType::kBF16),
                                 std::make_pair(int64_t{40}, DType::kF32)}) {
    for (int64_t page : {16, 5}) {
      AttnSpec s;
      s.d = d;
      s.dtype = dtype;
      s.seed = 17 + d;
      s.page_size = page;
      s.world_seed = 1000 + page;
      s.chunks = {1, 3, 16, 61};
      add(s, "", false);
    }
  }
  // LongContextsAgreeBitwiseAcrossSplits: 1100 tokens (past the 128-key
  // splits of the tensor-core path), decode at split boundaries. Decode
  // alone and the short chunks (<= 122 (token, KV head) pairs) split a
  // token's keys across warps; the mixed batch (1,467 tokens) and the
  // 700-token chunk reach the 396 pairs (half a wave of 6 warps on 132 SMs) from
  // which the paged kernel folds a token's splits in one warp (whole-token
  // mode): the memcmp against prefill covers both modes.
  for (const auto& [d, hq, hkv] :
       {std::make_tuple(int64_t{128}, int64_t{4}, int64_t{2}),
        std::make_tuple(int64_t{64}, int64_t{16}, int64_t{1})}) {
    AttnSpec s;
    s.d = d;
    s.hq = hq;
    s.hkv = hkv;
    s.tokens = 1100;
    s.seed = 91 + d;
    s.others = 1;
    s.world_seed = 4242;
    s.decode = {0, 63, 64, 127, 128, 129, 255, 256, 510, 511, 512, 513, 1000, 1023, 1024, 1099};
    s.chunks = {700, 1, 61, 338};
    s.filler_every = 3;
    s.filler_seqs = 1;
    s.filler_stride = 13;
    s.shuffle_seed = 8;
    s.expect_tensor_cores = true;
    add(s, "long", false);
  }
  // StandardSplitsAreAccurateAndBatchVariant: 1100 tokens, the Qwen3 head
  // layout (16 query heads on 8 KV heads at head_dim 128; 2 on 1 here to
  // keep the CPU side quick).
  {
    AttnSpec s;
    s.d = 128;
    s.hq = 2;
    s.hkv = 1;
    s.tokens = 1100;
    s.seed = 123;
    s.others = 1;
    s.world_seed = 4343;
    s.filler_every = 1;
    s.filler_seqs = 1;
    s.filler_stride = 13;
    s.batch_dependent_splits = true;
    add(s, "long,standard_splits", false);
  }
  // BadPageGivesNaNRowOnly: sequence 1's first page invalid.
  {
    AttnSpec s;
    s.d = 64;
    s.seed = 3;
    s.others = 1;
    s.world_seed = 77;
    s.chunks = {1, 3, 16, 61};
    s.filler_seqs = 1;
    s.bad_page_check = true;
    s.good_pos = 50;
    s.bad_pos = 20;
    s.bad_block = 0;
    s.bad_page = 1 << 20;
    add(s, "bad_page", false);
  }
  // BadPageAcrossSplitsGivesNaNRowOnly: keys 640..655 of sequence 1 on an
  // invalid page, the query at 900 folds it through the split combine.
  {
    AttnSpec s;
    s.d = 128;
    s.tokens = 1100;
    s.seed = 5;
    s.others = 1;
    s.world_seed = 78;
    s.decode = {0, 127, 128, 511, 512, 1050, 1099};
    s.chunks = {700, 1, 61, 338};
    s.filler_every = 3;
    s.filler_seqs = 1;
    s.filler_stride = 13;
    s.shuffle_seed = 8;
    s.bad_page_check = true;
    s.good_pos = 1050;
    s.bad_pos = 900;
    s.bad_block = 40;
    s.bad_page = -3;
    add(s, "long,bad_page", false);
  }
  return cases;
}

}  // namespace lockstep::kernels::backend_ops
