// Tests of the embedding gather (kernels/embedding.h): exact rows for both
// table dtypes, strides, batch invariance and id/argument checks.

#include "kernels/embedding.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/testing/random.h"

namespace lockstep::kernels {
namespace {

using ::lockstep::testing::RandomFloats;
using ::lockstep::testing::RandomInts;

struct Table {
  DType dtype;
  int64_t vocab, dim, ld;
  std::vector<uint8_t> bytes;
};

Table RandomTable(DType dtype, int64_t vocab, int64_t dim, int64_t ld,
                  uint64_t seed) {
  Table t{dtype, vocab, dim, ld, {}};
  t.bytes.resize(vocab * ld * DTypeSize(dtype));
  const auto v = RandomFloats(vocab * ld, seed, -4.0f, 4.0f);
  for (int64_t i = 0; i < vocab * ld; ++i)
    StoreFromF32(t.bytes.data(), dtype, i, v[i]);
  return t;
}

EmbeddingArgs Args(const Table& t, const std::vector<int32_t>& ids,
                   std::vector<float>& out, int64_t ld_out) {
  EmbeddingArgs a;
  a.table = t.bytes.data();
  a.table_dtype = t.dtype;
  a.ld_table = t.ld;
  a.vocab = t.vocab;
  a.ids = ids.data();
  a.out = out.data();
  a.ld_out = ld_out;
  a.tokens = static_cast<int64_t>(ids.size());
  a.dim = t.dim;
  return a;
}

TEST(Embedding, GathersExactRows) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [vocab, dim, ld, tokens, ld_out] :
         std::vector<std::array<int64_t, 5>>{
             {1, 1, 1, 3, 1}, {50, 7, 9, 33, 8}, {1000, 256, 256, 100, 256}}) {
      const Table t = RandomTable(dtype, vocab, dim, ld, vocab + dim);
      const auto ids = RandomInts(tokens, tokens, 0, vocab - 1);
      std::vector<float> out(tokens * ld_out, -1.5f);
      ASSERT_TRUE(Embedding(Args(t, ids, out, ld_out)).ok());
      for (int64_t i = 0; i < tokens; ++i) {
        for (int64_t d = 0; d < ld_out; ++d) {
          const float expect =
              d < dim ? LoadAsF32(t.bytes.data(), dtype, ids[i] * ld + d)
                      : -1.5f;
          const float got = out[i * ld_out + d];
          EXPECT_EQ(std::memcmp(&got, &expect, 4), 0)
              << DTypeName(dtype) << " token " << i << " d " << d;
        }
      }
    }
  }
}

TEST(Embedding, BatchInvariant) {
  const Table t = RandomTable(DType::kBF16, 300, 64, 64, 5);
  std::vector<float> alone(64);
  ASSERT_TRUE(Embedding(Args(t, {123}, alone, 64)).ok());
  for (int64_t batch = 1; batch <= 64; ++batch) {
    auto ids = RandomInts(batch, batch, 0, 299);
    ids[batch / 2] = 123;
    std::vector<float> out(batch * 64);
    ASSERT_TRUE(Embedding(Args(t, ids, out, 64)).ok());
    EXPECT_EQ(std::memcmp(out.data() + (batch / 2) * 64, alone.data(), 64 * 4),
              0);
  }
}

TEST(Embedding, BadArguments) {
  const Table t = RandomTable(DType::kF32, 10, 4, 4, 1);
  const std::vector<int32_t> ids = {0, 9, 3};
  std::vector<float> out(12, 0.0f);
  const EmbeddingArgs good = Args(t, ids, out, 4);
  ASSERT_TRUE(Embedding(good).ok());
  auto expect_invalid = [](EmbeddingArgs a, const char* what) {
    EXPECT_EQ(Embedding(a).code(), absl::StatusCode::kInvalidArgument) << what;
  };
  EmbeddingArgs a = good;
  a.table = nullptr;
  expect_invalid(a, "null table");
  a = good;
  a.ids = nullptr;
  expect_invalid(a, "null ids");
  a = good;
  a.out = nullptr;
  expect_invalid(a, "null out");
  a = good;
  a.ld_table = 3;
  expect_invalid(a, "ld_table < dim");
  a = good;
  a.ld_out = 3;
  expect_invalid(a, "ld_out < dim");
  a = good;
  a.vocab = 0;
  expect_invalid(a, "vocab 0");
  a = good;
  a.tokens = -1;
  expect_invalid(a, "tokens < 0");
  for (int32_t bad : {-1, 10, 1 << 30}) {
    const std::vector<int32_t> bad_ids = {1, bad};
    std::vector<float> out2(8, 42.0f);
    a = Args(t, bad_ids, out2, 4);
    expect_invalid(a, "id out of range");
    for (float v : out2) EXPECT_EQ(v, 42.0f) << "nothing written on error";
  }
  EmbeddingArgs empty;
  empty.vocab = 1;
  EXPECT_TRUE(Embedding(empty).ok());
  if (!CudaKernelsBuilt()) {
    EXPECT_EQ(Embedding(good, ExecContext{Device::kCuda, nullptr}).code(),
              absl::StatusCode::kFailedPrecondition);
  }
}

}  // namespace
}  // namespace lockstep::kernels
