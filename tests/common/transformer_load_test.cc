// Model::Load over both checkpoint layouts: a sharded checkpoint (index +
// shards) written by the generator loads into the same model, bit for bit,
// as the same weights in one model.safetensors; broken checkpoints fail with
// the codes of SafetensorsCheckpoint::Open.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/model_generator.h"
#include "common/safetensors.h"
#include "common/transformer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lockstep::common {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TransformerLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           (std::string("lockstep_load_") + info->name() + "_" +
            std::to_string(getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Dir(const std::string& sub) const {
    return (dir_ / sub).string();
  }

  fs::path dir_;
};

std::vector<std::vector<int32_t>> RandomSequences(int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> seqs(4);
  for (auto& s : seqs) {
    s.resize(5 + rng() % 20);
    for (int32_t& t : s) t = static_cast<int32_t>(rng() % vocab);
  }
  return seqs;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST_F(TransformerLoadTest, ShardedCheckpointScoresBitwiseLikeOneFile) {
  for (kernels::DType dtype : {kernels::DType::kF32, kernels::DType::kBF16}) {
    SCOPED_TRACE(kernels::DTypeName(dtype));
    ModelConfig config = TinyConfig();
    config.dtype = dtype;
    const std::string one = Dir("one");
    const std::string sharded = Dir("sharded");
    ASSERT_TRUE(GenerateModel(config, 3, one).ok());
    GenerateModelOptions options;
    options.max_shard_bytes = 40000;  // several shards, some of one tensor
    ASSERT_TRUE(GenerateModel(config, 3, sharded, options).ok());
    ASSERT_FALSE(fs::exists(sharded + "/model.safetensors"));
    auto checkpoint = SafetensorsCheckpoint::Open(sharded);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    ASSERT_GT((*checkpoint)->files().size(), 2u);

    auto a = Model::Load(one, ModelOptions());
    auto b = Model::Load(sharded, ModelOptions());
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    // The same weights...
    ASSERT_EQ((*a)->tensors().size(), (*b)->tensors().size());
    for (const auto& [name, t] : (*a)->tensors()) {
      auto it = (*b)->tensors().find(name);
      ASSERT_NE(it, (*b)->tensors().end()) << name;
      EXPECT_EQ(it->second.data, t.data) << name;
    }
    // ... and the same logprobs, bit for bit.
    const auto seqs = RandomSequences(config.vocab_size, 11);
    const std::vector<int64_t> prefix(seqs.size(), 2);
    auto la = (*a)->ScoreSequences(seqs, prefix);
    auto lb = (*b)->ScoreSequences(seqs, prefix);
    ASSERT_TRUE(la.ok()) << la.status();
    ASSERT_TRUE(lb.ok()) << lb.status();
    for (size_t s = 0; s < seqs.size(); ++s) {
      ASSERT_FALSE((*la)[s].empty());
      EXPECT_TRUE(SameBits((*la)[s], (*lb)[s])) << s;
    }
    fs::remove_all(dir_);
  }
}

TEST_F(TransformerLoadTest, BrokenShardedCheckpointsFail) {
  GenerateModelOptions options;
  options.max_shard_bytes = 100000;
  ASSERT_TRUE(GenerateModel(TinyConfig(), 1, Dir("m"), options).ok());
  ASSERT_TRUE(Model::Load(Dir("m"), ModelOptions()).ok());

  // Weights of another config: the shape check names the index.
  ModelConfig one_layer = TinyConfig();
  one_layer.num_hidden_layers = 1;
  ASSERT_TRUE(GenerateModel(one_layer, 1, Dir("short"), options).ok());
  fs::copy_file(Dir("m") + "/config.json", Dir("short") + "/config.json",
                fs::copy_options::overwrite_existing);
  auto mismatched = Model::Load(Dir("short"), ModelOptions());
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mismatched.status().message()),
              HasSubstr("model.safetensors.index.json"));
  EXPECT_THAT(std::string(mismatched.status().message()), HasSubstr("missing"));

  // A shard gone.
  ASSERT_TRUE(fs::remove(Dir("m") + "/model-00002-of-00005.safetensors"));
  auto missing = Model::Load(Dir("m"), ModelOptions());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("model-00002-of-00005.safetensors"));

  // No weights at all.
  fs::remove(Dir("m") + "/model.safetensors.index.json");
  auto none = Model::Load(Dir("m"), ModelOptions());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("model.safetensors.index.json"));
}

}  // namespace
}  // namespace lockstep::common
