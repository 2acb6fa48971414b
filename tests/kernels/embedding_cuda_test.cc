// CUDA embedding gather. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/dtype.h"
#include "tests/testing/cuda_test_util.h"
#include "tests/testing/random.h"
#include "kernels/cuda/embedding.h"
#include "kernels/embedding.h"

namespace lockstep::kernels {
namespace {


TEST(EmbeddingCudaTest, GathersExactlyAndRejectsBadIds) {
  SKIP_WITHOUT_GPU();
  const int64_t vocab = 500, dim = 96, tokens = 33;
  std::vector<float> table = RoundedBf16(testing::RandomFloats(vocab * dim, 1));
  std::vector<int32_t> ids = testing::RandomInts(tokens, 2, 0, vocab - 1);
  DevBuf<float> tf(table);
  DevBuf<uint16_t> tb(ToBf16(table));
  DevBuf<int32_t> di(ids);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    DevBuf<float> out(tokens * dim);
    out.Poison();
    EmbeddingArgs a;
    a.table = dt == DType::kF32 ? static_cast<const void*>(tf.get()) : tb.get();
    a.table_dtype = dt;
    a.ld_table = dim;
    a.vocab = vocab;
    a.ids = di.get();
    a.out = out.get();
    a.ld_out = dim;
    a.tokens = tokens;
    a.dim = dim;
    ASSERT_TRUE(cuda::Embedding(a, nullptr).ok());
    const std::vector<float> y = out.Download();
    for (int64_t t = 0; t < tokens; ++t) {
      ASSERT_EQ(std::memcmp(&y[t * dim], &table[ids[t] * dim], dim * 4), 0);
    }
    DevBuf<int32_t> bad(std::vector<int32_t>{1, static_cast<int32_t>(vocab)});
    a.ids = bad.get();
    a.tokens = 2;
    EXPECT_EQ(cuda::Embedding(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace lockstep::kernels
