// Model::Load over both checkpoint layouts: a sharded checkpoint (index +
// shards) written by the generator loads into the same model, bit for bit,
// as the same weights in one model.safetensors; broken checkpoints fail with
// the codes of SafetensorsCheckpoint::Open.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/formats/checkpoint.h"
#include "common/formats/model_generator.h"
#include "common/formats/safetensors.h"
#include "common/model/sequence_logprobs.h"
#include "common/model/model.h"
#include "nlohmann/json.hpp"
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
    auto la = (*a)->Score(seqs, prefix);
    auto lb = (*b)->Score(seqs, prefix);
    ASSERT_TRUE(la.ok()) << la.status();
    ASSERT_TRUE(lb.ok()) << lb.status();
    for (size_t s = 0; s < seqs.size(); ++s) {
      ASSERT_FALSE((*la)[s].empty());
      EXPECT_TRUE(SameBits((*la)[s], (*lb)[s])) << s;
    }
    fs::remove_all(dir_);
  }
}

// Writes the float32 model in `from` again as `dtype` (F16 rounds each value
// to the nearest fp16; F32 writes `from`'s values widened from that fp16,
// i.e. the same numbers), with config.json's "dtype" set to `config_dtype`.
void Rewrite(const std::string& from, const std::string& to, kernels::DType dtype,
             const std::string& config_dtype) {
  fs::create_directories(to);
  auto file = SafetensorsFile::Open(from + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<TensorInfo> out;
  for (const TensorInfo& t : (*file)->tensors()) {
    ASSERT_EQ(t.dtype, kernels::DType::kF32);
    const int64_t n = t.numel();
    std::vector<uint8_t> buf(n * kernels::DTypeSize(dtype));
    for (int64_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, t.data + 4 * i, 4);
      const uint16_t h = kernels::F32ToF16(v);
      if (dtype == kernels::DType::kF16) {
        std::memcpy(buf.data() + 2 * i, &h, 2);
      } else {
        const float w = kernels::F16ToF32(h);
        std::memcpy(buf.data() + 4 * i, &w, 4);
      }
    }
    buffers.push_back(std::move(buf));
    TensorInfo info = t;
    info.dtype = dtype;
    info.data = buffers.back().data();
    info.nbytes = buffers.back().size();
    out.push_back(info);
  }
  ASSERT_TRUE(WriteSafetensors(to + "/model.safetensors", out, {}).ok());
  std::ifstream in(from + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config.erase("torch_dtype");
  config["dtype"] = config_dtype;
  std::ofstream(to + "/config.json") << config.dump(2);
}

// An fp16 checkpoint is widened once, exactly, to fp32 and served in fp32:
// it loads into the same model as the fp32 file holding the same numbers,
// and the learner's differentiable forward over the same loader's tensors
// gives the rollout's bits.
TEST_F(TransformerLoadTest, Float16CheckpointIsServedAsFloat32) {
  ModelConfig config = TinyConfig();
  config.dtype = kernels::DType::kF32;
  ASSERT_TRUE(GenerateModel(config, 5, Dir("f32")).ok());
  Rewrite(Dir("f32"), Dir("f16"), kernels::DType::kF16, "float16");
  Rewrite(Dir("f32"), Dir("widened"), kernels::DType::kF32, "float32");
  auto f16 = SafetensorsFile::Open(Dir("f16") + "/model.safetensors");
  ASSERT_TRUE(f16.ok());
  EXPECT_EQ((*f16)->tensors()[0].dtype, kernels::DType::kF16);

  auto half = Model::Load(Dir("f16"), ModelOptions());
  auto widened = Model::Load(Dir("widened"), ModelOptions());
  ASSERT_TRUE(half.ok()) << half.status();
  ASSERT_TRUE(widened.ok()) << widened.status();
  EXPECT_EQ((*half)->config().dtype, kernels::DType::kF32);
  EXPECT_EQ((*half)->config().checkpoint_dtype, "float16");
  for (const auto& [name, t] : (*widened)->tensors()) {
    EXPECT_EQ((*half)->tensors().at(name).data, t.data) << name;
  }
  const auto seqs = RandomSequences(config.vocab_size, 13);
  const std::vector<int64_t> prefix(seqs.size(), 1);
  auto a = (*half)->Score(seqs, prefix);
  auto b = (*widened)->Score(seqs, prefix);
  ASSERT_TRUE(a.ok() && b.ok());
  auto checkpoint = LoadCheckpoint(Dir("f16"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  torch::NoGradGuard no_grad;
  auto learner = SequenceLogprobs(checkpoint->config, ToTorch(checkpoint->tensors),
                                  KernelMode::kInvariant, seqs, prefix);
  ASSERT_TRUE(learner.ok()) << learner.status();
  for (size_t s = 0; s < seqs.size(); ++s) {
    EXPECT_TRUE(SameBits((*a)[s], (*b)[s])) << s;
    auto l = (*learner)[s].contiguous();
    EXPECT_TRUE(SameBits(std::vector<float>(l.data_ptr<float>(), l.data_ptr<float>() + l.numel()),
                         (*a)[s]))
        << s;
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
