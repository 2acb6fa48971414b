#include "common/formats/model_generator.h"

#include "tests/common/formats/hf_config_samples.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/wire/crc32c.h"
#include "common/formats/model_config.h"
#include "common/formats/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"

namespace lockstep::common {
namespace {

namespace fs = std::filesystem;
using kernels::DType;
using ::testing::HasSubstr;

// Verbatim config.json of Qwen/Qwen3-8B.
constexpr char kQwen3_8B[] = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 12288,
  "max_position_embeddings": 40960,
  "max_window_layers": 36,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// Qwen/Qwen3-4B's config.json.
constexpr char kQwen3_4B[] = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2560,
  "initializer_range": 0.02,
  "intermediate_size": 9728,
  "max_position_embeddings": 40960,
  "max_window_layers": 36,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 36,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

using testing::kQwen3_1_7B;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class ModelGeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           (std::string("lockstep_gen_") + info->name() + "_" +
            std::to_string(getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Dir(const std::string& sub) const {
    return (dir_ / sub).string();
  }

  fs::path dir_;
};

TEST(PresetTest, Names) {
  for (const std::string& name : PresetNames()) {
    auto c = PresetConfig(name);
    ASSERT_TRUE(c.ok()) << name;
    EXPECT_TRUE(c->Validate().ok()) << name << ": " << c->Validate();
  }
  auto bad = PresetConfig("qwen3-72b");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("tiny, 100m, qwen3-1.7b, qwen3-4b, qwen3-8b"));
}

TEST(PresetTest, Tiny) {
  const ModelConfig c = TinyConfig();
  EXPECT_EQ(c.model_type, "qwen3");
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.vocab_size % 8, 0);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 192);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_EQ(c.rope.rope_theta, 10000.0);
  EXPECT_EQ(c.dtype, DType::kF32);
  EXPECT_EQ(*ModelConfig::FromJson(c.ToJson()), c);
}

TEST(PresetTest, About100M) {
  const ModelConfig c = Config100M();
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.NumParameters(), 100092672);
  EXPECT_EQ(c.dtype, DType::kF32);
  EXPECT_EQ(*ModelConfig::FromJson(c.ToJson()), c);
}

TEST(PresetTest, QwenPresetsMatchTheRealConfigs) {
  EXPECT_EQ(Qwen3_1_7BConfig(), *ModelConfig::FromJson(kQwen3_1_7B));
  EXPECT_EQ(Qwen3_8BConfig(), *ModelConfig::FromJson(kQwen3_8B));
  EXPECT_EQ(Qwen3_4BConfig(), *ModelConfig::FromJson(kQwen3_4B));
  EXPECT_EQ(Qwen3_4BConfig().NumParameters(), 4022468096);  // "4.0B"
  EXPECT_EQ(Qwen3_8BConfig().NumParameters(), 8190735360);  // "8.2B"
  EXPECT_EQ(Qwen3_1_7BConfig().NumParameters(), 1720574976);
}

TEST(ReproducibleMathTest, LogMatchesLibm) {
  for (double x :
       {1e-300, 1e-16, 0x1p-53, 1e-3, 0.1, 0.5, 0.70710678, 0.7071067811865476,
        0.99999, 1.0, 1.5, 2.0, 10.0, 1e10, 1e300}) {
    EXPECT_NEAR(internal::ReproducibleLog(x), std::log(x),
                4e-16 * std::max(1.0, std::fabs(std::log(x))))
        << x;
  }
  EXPECT_EQ(internal::ReproducibleLog(1.0), 0.0);
  for (int i = 1; i <= 100000; ++i) {
    const double x = i * 1e-5;
    ASSERT_NEAR(internal::ReproducibleLog(x), std::log(x),
                4e-16 * std::max(1.0, std::fabs(std::log(x))))
        << x;
  }
}

TEST(ReproducibleMathTest, CosSinMatchLibm) {
  const double two_pi = 6.283185307179586476925286766559;
  for (int i = 0; i < 100000; ++i) {
    const double u = i / 100000.0;
    double c, s;
    internal::ReproducibleCosSin2Pi(u, &c, &s);
    ASSERT_NEAR(c, std::cos(two_pi * u), 1e-15) << u;
    ASSERT_NEAR(s, std::sin(two_pi * u), 1e-15) << u;
  }
  double c, s;
  internal::ReproducibleCosSin2Pi(0.0, &c, &s);
  EXPECT_EQ(c, 1.0);
  EXPECT_EQ(s, 0.0);
  internal::ReproducibleCosSin2Pi(0.25, &c, &s);
  EXPECT_EQ(c, 0.0);
  EXPECT_EQ(s, 1.0);
}

TEST(NormalStreamTest, StandardNormalMoments) {
  internal::NormalStream normals(42);
  const int n = 200000;
  double sum = 0, sum2 = 0;
  int within1 = 0;
  for (int i = 0; i < n; ++i) {
    const double z = normals.Next();
    ASSERT_TRUE(std::isfinite(z));
    sum += z;
    sum2 += z * z;
    within1 += std::fabs(z) < 1.0;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sum2 / n, 1.0, 0.01);
  EXPECT_NEAR(static_cast<double>(within1) / n, 0.6827, 0.005);
}

TEST(NormalStreamTest, DeterministicPerSeed) {
  internal::NormalStream a(7), b(7), c(8);
  bool any_diff = false;
  for (int i = 0; i < 1000; ++i) {
    const double x = a.Next();
    EXPECT_EQ(x, b.Next());
    any_diff |= x != c.Next();
  }
  EXPECT_TRUE(any_diff);
}

TEST_F(ModelGeneratorTest, TinyIsDeterministicAndValid) {
  const ModelConfig config = TinyConfig();
  ASSERT_TRUE(GenerateModel(config, 1, Dir("a")).ok());
  ASSERT_TRUE(GenerateModel(config, 1, Dir("b")).ok());
  ASSERT_TRUE(GenerateModel(config, 2, Dir("c")).ok());

  const std::string a = ReadAll(Dir("a") + "/model.safetensors");
  const std::string b = ReadAll(Dir("b") + "/model.safetensors");
  const std::string c = ReadAll(Dir("c") + "/model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a.size(), c.size());
  EXPECT_EQ(ReadAll(Dir("a") + "/config.json"),
            ReadAll(Dir("c") + "/config.json"));

  // Pinned bytes (cross-checked against an independent Python
  // re-implementation of mt19937_64 + this Box-Muller): changing them breaks
  // every recorded tiny-model result, so only change this on purpose.
  EXPECT_EQ(Crc32c(a.data(), a.size()), 0x890000C9u)
      << std::hex << Crc32c(a.data(), a.size());

  auto loaded = ModelConfig::FromFile(Dir("a") + "/config.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(*loaded, config);

  auto file = SafetensorsFile::Open(Dir("a") + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(CheckTensorShapes(config, **file).ok())
      << CheckTensorShapes(config, **file);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->metadata().at("seed"), "1");
  for (const TensorInfo& t : (*file)->tensors()) {
    EXPECT_EQ(t.dtype, DType::kF32) << t.name;
  }
  int64_t total = 0;
  for (const TensorInfo& t : (*file)->tensors()) total += t.numel();
  EXPECT_EQ(total, config.NumParameters());
}

TEST_F(ModelGeneratorTest, WeightStatistics) {
  ASSERT_TRUE(GenerateModel(TinyConfig(), 3, Dir("m")).ok());
  auto file = SafetensorsFile::Open(Dir("m") + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  auto stats = [&](const std::string& name, double* mean, double* stddev) {
    const TensorInfo* t = *(*file)->Get(name);
    double sum = 0, sum2 = 0;
    for (int64_t i = 0; i < t->numel(); ++i) {
      const double v = kernels::LoadAsF32(t->data, t->dtype, i);
      sum += v;
      sum2 += v * v;
    }
    *mean = sum / t->numel();
    *stddev = std::sqrt(sum2 / t->numel() - *mean * *mean);
  };
  double mean, sd;
  stats("model.embed_tokens.weight", &mean, &sd);  // 4096 values
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(sd, 0.02, 0.002);
  stats("model.layers.1.mlp.down_proj.weight", &mean, &sd);
  EXPECT_NEAR(mean, 0.0, 0.001);
  EXPECT_NEAR(sd, 0.02, 0.001);
  stats("model.layers.0.input_layernorm.weight", &mean, &sd);
  EXPECT_NEAR(mean, 1.0, 0.005);
  EXPECT_NEAR(sd, 0.01, 0.003);
  stats("model.layers.0.self_attn.q_norm.weight", &mean, &sd);
  EXPECT_NEAR(mean, 1.0, 0.01);
}

TEST_F(ModelGeneratorTest, TensorsDoNotDependOnOtherTensors) {
  ModelConfig one_layer = TinyConfig();
  one_layer.num_hidden_layers = 1;
  ASSERT_TRUE(GenerateModel(TinyConfig(), 5, Dir("two")).ok());
  ASSERT_TRUE(GenerateModel(one_layer, 5, Dir("one")).ok());
  auto two = SafetensorsFile::Open(Dir("two") + "/model.safetensors");
  auto one = SafetensorsFile::Open(Dir("one") + "/model.safetensors");
  ASSERT_TRUE(two.ok() && one.ok());
  for (const TensorInfo& t : (*one)->tensors()) {
    const TensorInfo* u = *(*two)->Get(t.name);
    ASSERT_EQ(t.nbytes, u->nbytes) << t.name;
    EXPECT_EQ(0, std::memcmp(t.data, u->data, t.nbytes)) << t.name;
  }
}

TEST_F(ModelGeneratorTest, Bf16IsTheRoundedF32Model) {
  ModelConfig bf16 = TinyConfig();
  bf16.dtype = DType::kBF16;
  ASSERT_TRUE(GenerateModel(TinyConfig(), 9, Dir("f32")).ok());
  ASSERT_TRUE(GenerateModel(bf16, 9, Dir("bf16")).ok());
  auto f = SafetensorsFile::Open(Dir("f32") + "/model.safetensors");
  auto h = SafetensorsFile::Open(Dir("bf16") + "/model.safetensors");
  ASSERT_TRUE(f.ok() && h.ok());
  EXPECT_EQ(ModelConfig::FromFile(Dir("bf16") + "/config.json")->dtype,
            DType::kBF16);
  ASSERT_EQ((*f)->tensors().size(), (*h)->tensors().size());
  for (size_t k = 0; k < (*f)->tensors().size(); ++k) {
    const TensorInfo& tf = (*f)->tensors()[k];
    const TensorInfo& th = (*h)->tensors()[k];
    ASSERT_EQ(th.dtype, DType::kBF16);
    ASSERT_EQ(tf.numel(), th.numel());
    for (int64_t i = 0; i < tf.numel(); ++i) {
      const float want =
          kernels::RoundToBF16(kernels::LoadAsF32(tf.data, tf.dtype, i));
      ASSERT_EQ(want, kernels::LoadAsF32(th.data, th.dtype, i)) << tf.name << i;
    }
  }
}

TEST_F(ModelGeneratorTest, Errors) {
  ModelConfig bad = TinyConfig();
  bad.num_key_value_heads = 3;
  const absl::Status s = GenerateModel(bad, 1, Dir("bad"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(Dir("bad") + "/model.safetensors"));

  // The output "directory" is a regular file.
  fs::create_directories(dir_);
  { std::ofstream(Dir("file")) << "x"; }
  EXPECT_FALSE(GenerateModel(TinyConfig(), 1, Dir("file")).ok());
}

// The files of `dir`, sorted.
std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// huggingface_hub's split_state_dict_into_shards, re-stated: the tensor
// names of each shard.
std::vector<std::vector<std::string>> HfShards(const ModelConfig& config,
                                               uint64_t max_bytes) {
  std::vector<std::vector<std::string>> shards;
  std::vector<std::string> current;
  uint64_t current_bytes = 0;
  for (const auto& [name, shape] : ExpectedTensors(config)) {
    uint64_t bytes = kernels::DTypeSize(config.dtype);
    for (int64_t d : shape) bytes *= d;
    if (bytes > max_bytes) {
      shards.push_back({name});
      continue;
    }
    if (current_bytes + bytes > max_bytes) {
      shards.push_back(current);
      current.clear();
      current_bytes = 0;
    }
    current.push_back(name);
    current_bytes += bytes;
  }
  if (!current.empty()) shards.push_back(current);
  return shards;
}

TEST_F(ModelGeneratorTest, ShardedHoldsTheSameTensorsAsOneFile) {
  const ModelConfig config = TinyConfig();  // 427520 bytes of f32 data
  ASSERT_TRUE(GenerateModel(config, 1, Dir("one")).ok());
  GenerateModelOptions options;
  // Below the 49152-byte MLP matrices, so those get shards of their own.
  options.max_shard_bytes = 40000;
  ASSERT_TRUE(GenerateModel(config, 1, Dir("sharded"), options).ok());

  const auto want = HfShards(config, options.max_shard_bytes);
  const int n = static_cast<int>(want.size());
  ASSERT_GT(n, 3);
  std::vector<std::string> names = {"config.json",
                                    "model.safetensors.index.json"};
  for (int k = 1; k <= n; ++k) names.push_back(SafetensorsShardName(k, n));
  std::sort(names.begin(), names.end());
  EXPECT_EQ(Listing(Dir("sharded")), names);
  EXPECT_EQ(ReadAll(Dir("sharded") + "/config.json"),
            ReadAll(Dir("one") + "/config.json"));

  auto one = SafetensorsCheckpoint::Open(Dir("one"));
  auto sharded = SafetensorsCheckpoint::Open(Dir("sharded"));
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  EXPECT_FALSE((*one)->sharded());
  ASSERT_TRUE((*sharded)->sharded());
  EXPECT_TRUE(CheckTensorShapes(config, **sharded).ok())
      << CheckTensorShapes(config, **sharded);
  // The single file is the one GenerateModel always wrote (pinned above).
  const std::string bytes = ReadAll(Dir("one") + "/model.safetensors");
  EXPECT_EQ(Crc32c(bytes.data(), bytes.size()), 0x890000C9u);

  // Same tensors, same bytes.
  ASSERT_EQ((*one)->tensors().size(), (*sharded)->tensors().size());
  for (size_t i = 0; i < (*one)->tensors().size(); ++i) {
    const TensorInfo& a = (*one)->tensors()[i];
    const TensorInfo& b = (*sharded)->tensors()[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_EQ(a.shape, b.shape);
    ASSERT_EQ(a.nbytes, b.nbytes);
    EXPECT_EQ(0, std::memcmp(a.data, b.data, a.nbytes)) << a.name;
  }

  // Shards as transformers would cut them, each within the limit unless it
  // holds one larger tensor, with the generator's metadata.
  ASSERT_EQ((*sharded)->files().size(), want.size());
  for (int k = 0; k < n; ++k) {
    const SafetensorsFile& file = *(*sharded)->files()[k];
    EXPECT_THAT(file.path(), HasSubstr(SafetensorsShardName(k + 1, n)));
    std::vector<std::string> got;
    uint64_t data = 0;
    for (const TensorInfo& t : file.tensors()) {
      got.push_back(t.name);
      data += t.nbytes;
    }
    std::vector<std::string> expected = want[k];
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(got, expected) << k;
    EXPECT_TRUE(data <= options.max_shard_bytes || got.size() == 1) << k;
    EXPECT_EQ(file.metadata().at("seed"), "1");
    EXPECT_EQ(file.metadata().at("format"), "pt");
  }
  const std::string index = ReadAll(Dir("sharded") + "/" +
                                    kSafetensorsIndexFileName);
  EXPECT_THAT(index, HasSubstr("\"total_size\": 427520"));
}

TEST_F(ModelGeneratorTest, ShardEveryTensorAndFitInOne) {
  const ModelConfig config = TinyConfig();
  const size_t tensors = ExpectedTensors(config).size();
  GenerateModelOptions options;
  options.max_shard_bytes = 1;  // every tensor is larger: one shard each
  ASSERT_TRUE(GenerateModel(config, 2, Dir("m"), options).ok());
  auto c = SafetensorsCheckpoint::Open(Dir("m"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->files().size(), tensors);
  // Numbered in ExpectedTensors order.
  for (size_t k = 0; k < tensors; ++k) {
    const SafetensorsFile& file = *(*c)->files()[k];
    ASSERT_EQ(file.tensors().size(), 1u);
    EXPECT_EQ(file.tensors()[0].name, ExpectedTensors(config)[k].first);
    EXPECT_THAT(file.path(),
                HasSubstr(SafetensorsShardName(k + 1, tensors)));
  }
  // A limit everything fits in: one model.safetensors, no index, as
  // transformers writes it, byte for byte what the default writes.
  options.max_shard_bytes = 427520;
  ASSERT_TRUE(GenerateModel(config, 2, Dir("fits"), options).ok());
  ASSERT_TRUE(GenerateModel(config, 2, Dir("default")).ok());
  EXPECT_EQ(Listing(Dir("fits")),
            (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_EQ(ReadAll(Dir("fits") + "/model.safetensors"),
            ReadAll(Dir("default") + "/model.safetensors"));
}

TEST_F(ModelGeneratorTest, RegeneratingReplacesTheOldLayout) {
  const ModelConfig config = TinyConfig();
  GenerateModelOptions five, three;
  five.max_shard_bytes = 100000;
  three.max_shard_bytes = 200000;
  ASSERT_TRUE(GenerateModel(config, 1, Dir("m")).ok());
  { std::ofstream(Dir("m") + "/README.md") << "kept"; }
  // Single -> sharded: model.safetensors would shadow the index; it goes.
  ASSERT_TRUE(GenerateModel(config, 1, Dir("m"), five).ok());
  EXPECT_FALSE(fs::exists(Dir("m") + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(Dir("m") + "/model-00005-of-00005.safetensors"));
  // Fewer shards: the unlisted old ones go.
  ASSERT_TRUE(GenerateModel(config, 1, Dir("m"), three).ok());
  std::vector<std::string> want = {"README.md", "config.json",
                                   "model-00001-of-00003.safetensors",
                                   "model-00002-of-00003.safetensors",
                                   "model-00003-of-00003.safetensors",
                                   "model.safetensors.index.json"};
  EXPECT_EQ(Listing(Dir("m")), want);
  auto c = SafetensorsCheckpoint::Open(Dir("m"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->files().size(), 3u);
  // Sharded -> single: index and shards go.
  ASSERT_TRUE(GenerateModel(config, 1, Dir("m")).ok());
  EXPECT_EQ(Listing(Dir("m")),
            (std::vector<std::string>{"README.md", "config.json",
                                      "model.safetensors"}));
}

}  // namespace
}  // namespace lockstep::common
