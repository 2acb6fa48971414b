// LoadCheckpoint (common/checkpoint.h) on good and bad model directories:
// every malformed or unsupported config or weight file ends in a clear
// error naming the file and the key or tensor, never in a crash or a
// silently different model. Runs under AddressSanitizer + UBSan as well
// (label `asan`).
#include "common/formats/checkpoint.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/formats/model_generator.h"
#include "common/formats/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace lockstep::common {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           (std::string("lockstep_ckpt_") + info->name() + "_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    ASSERT_TRUE(GenerateModel(Qwen2Config(), 4, dir_.string()).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  static ModelConfig Qwen2Config() {
    ModelConfig c = TinyConfig();
    c.model_type = "qwen2";
    c.qk_norm = false;
    c.qkv_bias = true;
    return c;
  }

  json Config() const {
    std::ifstream in(dir_ / "config.json");
    return json::parse(in);
  }
  void WriteConfig(const json& j) const { std::ofstream(dir_ / "config.json") << j.dump(2); }
  void WriteConfigText(const std::string& text) const {
    std::ofstream(dir_ / "config.json") << text;
  }

  // Expects LoadCheckpoint to fail with `code` and every needle in the text.
  void ExpectError(absl::StatusCode code, const std::vector<std::string>& needles) const {
    auto c = LoadCheckpoint(dir_.string());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), code) << c.status();
    for (const auto& n : needles) {
      EXPECT_THAT(std::string(c.status().message()), HasSubstr(n));
    }
  }

  fs::path dir_;
};

TEST_F(CheckpointTest, LoadsGeneratedQwen2WithBiases) {
  auto c = LoadCheckpoint(dir_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->config.qkv_bias);
  EXPECT_EQ(c->tensors.size(), ExpectedTensors(c->config).size());
  const HostTensor& bias = c->tensors.at("model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(bias.shape, (std::vector<int64_t>{64}));
  // Generated biases are random, not zero.
  bool nonzero = false;
  for (int64_t i = 0; i < bias.numel(); ++i) nonzero = nonzero || bias.f32()[i] != 0.0f;
  EXPECT_TRUE(nonzero);
  // The generator writes the transformers-5 form; it reads back the same.
  const json j = Config();
  EXPECT_TRUE(j.contains("rope_parameters"));
  EXPECT_FALSE(j.contains("rope_theta"));
  EXPECT_EQ(c->config, Qwen2Config());
}

TEST_F(CheckpointTest, BadConfigsNameTheFileAndKey) {
  const std::string config_path = (dir_ / "config.json").string();
  json j = Config();
  j["rope_parameters"]["rope_type"] = "longrope";
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument,
              {config_path, "rope_parameters.rope_type", "longrope"});
  j = Config();
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 1e4}, {"factor", 8}};
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument, {config_path, "low_freq_factor"});
  j = Config();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e4}};
  j["partial_rotary_factor"] = 0.5;
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument, {config_path, "partial_rotary_factor"});
  j.erase("partial_rotary_factor");
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument, {config_path, "quantization_config"});
  j.erase("quantization_config");
  j["use_sliding_window"] = true;
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument, {config_path, "use_sliding_window"});
  j["use_sliding_window"] = false;
  j["dtype"] = "float8_e4m3fn";
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument, {config_path, "dtype", "float8_e4m3fn"});
  WriteConfigText("{\"model_type\": \"qwen2\", ");
  ExpectError(absl::StatusCode::kInvalidArgument, {config_path, "not valid JSON"});
  WriteConfigText("[1, 2]");
  ExpectError(absl::StatusCode::kInvalidArgument, {config_path, "not a JSON object"});
  fs::remove(config_path);
  ExpectError(absl::StatusCode::kNotFound, {config_path});
}

TEST_F(CheckpointTest, WeightsThatDoNotMatchTheConfig) {
  // A qwen3 config over qwen2 weights: the biases are unexpected and the
  // q/k norms missing, named in the message.
  json j = Config();
  j["model_type"] = "qwen3";
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument,
              {"model.safetensors", "q_proj.bias", "q_norm.weight"});
  // A qwen2 config over weights without biases: the biases are missing.
  fs::remove_all(dir_);
  ModelConfig llama = TinyConfig();
  llama.model_type = "llama";
  llama.qk_norm = false;
  ASSERT_TRUE(GenerateModel(llama, 1, dir_.string()).ok());
  j = Config();
  j["model_type"] = "qwen2";
  WriteConfig(j);
  ExpectError(absl::StatusCode::kInvalidArgument, {"missing", "k_proj.bias"});
}

TEST_F(CheckpointTest, TruncatedOrMissingWeights) {
  const fs::path weights = dir_ / "model.safetensors";
  const auto size = fs::file_size(weights);
  fs::resize_file(weights, size - 100);
  ExpectError(absl::StatusCode::kDataLoss, {"model.safetensors"});
  fs::remove(weights);
  ExpectError(absl::StatusCode::kNotFound, {"model.safetensors"});
}

TEST_F(CheckpointTest, Float16WeightsAreWidenedExactly) {
  // Rewrite every tensor as F16 (values chosen exactly representable).
  auto file = SafetensorsFile::Open((dir_ / "model.safetensors").string());
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<TensorInfo> out;
  for (const TensorInfo& t : (*file)->tensors()) {
    std::vector<uint8_t> buf(t.numel() * 2);
    for (int64_t i = 0; i < t.numel(); ++i) {
      const uint16_t h = kernels::F32ToF16(static_cast<float>(i % 97) / 64.0f - 0.75f);
      std::memcpy(buf.data() + 2 * i, &h, 2);
    }
    buffers.push_back(std::move(buf));
    TensorInfo info = t;
    info.dtype = kernels::DType::kF16;
    info.data = buffers.back().data();
    info.nbytes = buffers.back().size();
    out.push_back(info);
  }
  file->reset();
  ASSERT_TRUE(WriteSafetensors((dir_ / "model.safetensors").string(), out, {}).ok());
  json j = Config();
  j["dtype"] = "float16";
  WriteConfig(j);
  auto c = LoadCheckpoint(dir_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->config.dtype, kernels::DType::kF32);
  EXPECT_EQ(c->config.checkpoint_dtype, "float16");
  for (const auto& [name, t] : c->tensors) {
    ASSERT_EQ(t.dtype, kernels::DType::kF32) << name;
    for (int64_t i = 0; i < t.numel(); ++i) {
      ASSERT_EQ(t.f32()[i], static_cast<float>(i % 97) / 64.0f - 0.75f) << name << " " << i;
    }
  }
}

}  // namespace
}  // namespace lockstep::common
