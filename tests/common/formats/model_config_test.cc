#include "common/formats/model_config.h"

#include "tests/common/formats/hf_config_samples.h"

#include <unistd.h>

#include <cmath>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/formats/model_generator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace lockstep::common {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

using testing::kLlama31RopeScaling;
using testing::kLlama3_8B;
using testing::kQwen3_1_7B;
using testing::kQwen3_30B_A3B;

json Qwen() { return json::parse(kQwen3_1_7B); }

// Parses `j` and expects InvalidArgument mentioning every needle.
void ExpectInvalid(const json& j, const std::vector<std::string>& needles) {
  auto c = ModelConfig::FromJson(j.dump());
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument)
      << c.status();
  for (const auto& n : needles) {
    EXPECT_THAT(std::string(c.status().message()), HasSubstr(n)) << j.dump();
  }
}

TEST(ModelConfigTest, ParsesQwen3_1_7B) {
  auto c = ModelConfig::FromJson(kQwen3_1_7B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "qwen3");
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_EQ(c->hidden_size, 2048);
  EXPECT_EQ(c->intermediate_size, 6144);
  EXPECT_EQ(c->num_hidden_layers, 28);
  EXPECT_EQ(c->num_attention_heads, 16);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope.rope_theta, 1e6);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->max_position_embeddings, 40960);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->dtype, kernels::DType::kBF16);
  EXPECT_EQ(c->bos_token_id, 151643);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{151645});
  // 1,720,574,976 distinct weights ("1.7B"; the embedding is tied).
  EXPECT_EQ(c->NumParameters(), 1720574976);
}

TEST(ModelConfigTest, ParsesLlama3_8B) {
  auto c = ModelConfig::FromJson(kLlama3_8B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->head_dim, 128);  // derived: 4096 / 32
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope.rope_theta, 500000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->max_position_embeddings, 8192);
  EXPECT_EQ(c->eos_token_ids, std::vector<int64_t>{128001});
  // Llama 3 8B has exactly 8,030,261,248 parameters.
  EXPECT_EQ(c->NumParameters(), 8030261248);
}

TEST(ModelConfigTest, Defaults) {
  auto c = ModelConfig::FromJson(R"({"model_type": "mistral",
      "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 8})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope.rope_theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->dtype, kernels::DType::kBF16);
  EXPECT_FALSE(c->bos_token_id.has_value());
  EXPECT_TRUE(c->eos_token_ids.empty());
}

TEST(ModelConfigTest, EosListAndNulls) {
  json j = json::parse(kLlama3_8B);
  j["eos_token_id"] = {128001, 128008, 128009};
  j["head_dim"] = nullptr;  // null means "absent"
  j["torch_dtype"] = "float32";
  auto c = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->dtype, kernels::DType::kF32);
}

TEST(ModelConfigTest, NewerDtypeKeyAndDefaultRopeScaling) {
  json j = Qwen();
  j.erase("torch_dtype");
  j["dtype"] = "float32";
  j["rope_scaling"] = {{"rope_type", "default"}};
  auto c = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->dtype, kernels::DType::kF32);
  j["rope_scaling"] = {{"type", "default"}};
  EXPECT_TRUE(ModelConfig::FromJson(j.dump()).ok());
}

TEST(ModelConfigTest, ToJsonRoundTrips) {
  for (const char* text : {kQwen3_1_7B, kLlama3_8B}) {
    auto c = ModelConfig::FromJson(text);
    ASSERT_TRUE(c.ok());
    const std::string out = c->ToJson();
    auto back = ModelConfig::FromJson(out);
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << out;
    EXPECT_EQ(*back, *c);
    const json j = json::parse(out);
    EXPECT_EQ(j["architectures"][0], c->model_type == "qwen3"
                                         ? "Qwen3ForCausalLM"
                                         : "LlamaForCausalLM");
    // transformers-5 form: "dtype" and "rope_parameters".
    EXPECT_EQ(j["dtype"], "bfloat16");
    EXPECT_EQ(j["head_dim"], 128);
    EXPECT_FALSE(j.contains("rope_theta"));
    EXPECT_EQ(j["rope_parameters"]["rope_type"], "default");
    EXPECT_EQ(j["rope_parameters"]["rope_theta"], c->rope.rope_theta);
  }
  ModelConfig multi = *ModelConfig::FromJson(kLlama3_8B);
  multi.eos_token_ids = {1, 2};
  multi.dtype = kernels::DType::kF32;
  EXPECT_EQ(*ModelConfig::FromJson(multi.ToJson()), multi);
}

TEST(ModelConfigTest, FromFile) {
  const std::string path = ::testing::TempDir() + "/lockstep_cfg_" +
                           std::to_string(getpid()) + ".json";
  { std::ofstream(path) << kQwen3_1_7B; }
  auto c = ModelConfig::FromFile(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 2048);
  { std::ofstream(path) << "{\"model_type\": \"qwen3\"}"; }
  auto bad = ModelConfig::FromFile(path);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr(path));
  std::filesystem::remove(path);

  auto missing = ModelConfig::FromFile(path);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(path));
}

TEST(ModelConfigTest, NotJsonOrNotObject) {
  for (const char* text :
       {"", "{", "nope", "{\"a\":}", "[1, 2]", "17", "\"str\"", "null"}) {
    auto c = ModelConfig::FromJson(text);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

TEST(ModelConfigTest, MissingRequiredFields) {
  for (const char* key :
       {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "model_type"}) {
    json j = Qwen();
    j.erase(key);
    ExpectInvalid(j, {key, "missing"});
    j[key] = nullptr;
    ExpectInvalid(j, {key});
  }
}

TEST(ModelConfigTest, WrongTypes) {
  const std::vector<std::pair<std::string, json>> cases = {
      {"vocab_size", "151936"},
      {"vocab_size", 151936.5},
      {"hidden_size", true},
      {"num_hidden_layers", json::array({28})},
      {"num_key_value_heads", "8"},
      {"head_dim", 128.5},
      {"rms_norm_eps", "1e-6"},
      {"rope_theta", json::object()},
      {"tie_word_embeddings", 1},
      {"model_type", 3},
      {"torch_dtype", 16},
      {"eos_token_id", "x"},
      {"eos_token_id", json::array({1, "2"})},
      {"rope_scaling", "linear"},
      {"max_position_embeddings", "4096"},
  };
  for (const auto& [key, value] : cases) {
    json j = Qwen();
    j[key] = value;
    ExpectInvalid(j, {key});
  }
}

TEST(ModelConfigTest, NonPositiveValues) {
  for (const char* key :
       {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim",
        "max_position_embeddings"}) {
    for (int v : {0, -4}) {
      json j = Qwen();
      j[key] = v;
      ExpectInvalid(j, {key});
    }
  }
  for (const char* key : {"rms_norm_eps", "rope_theta"}) {
    json j = Qwen();
    j[key] = 0.0;
    ExpectInvalid(j, {key});
  }
}

TEST(ModelConfigTest, InconsistentHeads) {
  json j = json::parse(kLlama3_8B);
  j["num_attention_heads"] = 30;  // 4096 % 30 != 0 and no head_dim
  ExpectInvalid(j, {"hidden_size", "not divisible", "num_attention_heads"});

  j = json::parse(kLlama3_8B);
  j["num_key_value_heads"] = 5;  // 32 % 5 != 0
  ExpectInvalid(j, {"num_attention_heads", "num_key_value_heads"});

  j = Qwen();
  j["head_dim"] = 127;
  ExpectInvalid(j, {"head_dim", "even"});

  j = Qwen();
  j["bos_token_id"] = 151936;  // == vocab_size
  ExpectInvalid(j, {"bos_token_id"});
}

TEST(ModelConfigTest, UnsupportedRopeScaling) {
  json j = json::parse(kLlama3_8B);
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  ExpectInvalid(j, {"rope_scaling.rope_type", "dynamic"});
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  ExpectInvalid(j, {"rope_scaling.rope_type", "longrope"});
  j["rope_scaling"] = {{"factor", 4.0}};
  ExpectInvalid(j, {"rope_scaling.rope_type", "missing"});
  j["rope_scaling"] = "yarn";
  ExpectInvalid(j, {"rope_scaling"});
  j["rope_scaling"] = {{"rope_type", "linear"}};
  ExpectInvalid(j, {"rope_scaling.factor", "linear"});
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}};
  ExpectInvalid(j, {"original_max_position_embeddings", "llama3"});
  j["rope_scaling"] = json::parse(kLlama31RopeScaling);
  j["rope_scaling"]["high_freq_factor"] = 0.5;
  ExpectInvalid(j, {"high_freq_factor"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", -2.0}};
  ExpectInvalid(j, {"factor"});
  // transformers 5 form: the same checks, named by their rope_parameters key.
  j = json::parse(kLlama3_8B);
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "su"}, {"rope_theta", 1e4}};
  ExpectInvalid(j, {"rope_parameters.rope_type", "su"});
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e4},
                          {"partial_rotary_factor", 0.5}};
  ExpectInvalid(j, {"partial_rotary_factor", "0.5"});
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", -1.0}};
  ExpectInvalid(j, {"rope_theta"});
  // Top-level partial_rotary_factor (transformers 4 spelling).
  j = json::parse(kLlama3_8B);
  j["partial_rotary_factor"] = 0.25;
  ExpectInvalid(j, {"partial_rotary_factor"});
  j["partial_rotary_factor"] = 1.0;
  EXPECT_TRUE(ModelConfig::FromJson(j.dump()).ok());
}

// The defect this guards against: transformers 5 writes rope_parameters and
// no top-level rope_theta; reading only rope_theta served theta = 10000.
TEST(ModelConfigTest, Transformers5FormEqualsTransformers4Form) {
  json v4 = json::parse(kLlama3_8B);
  v4["rope_scaling"] = json::parse(kLlama31RopeScaling);
  json v5 = v4;
  v5.erase("rope_theta");
  v5.erase("rope_scaling");
  v5.erase("torch_dtype");
  v5["dtype"] = "bfloat16";
  v5["rope_parameters"] = json::parse(kLlama31RopeScaling);
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  auto a = ModelConfig::FromJson(v4.dump());
  auto b = ModelConfig::FromJson(v5.dump());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(b->rope.rope_type, "llama3");
  EXPECT_EQ(b->rope.rope_theta, 500000.0);
  EXPECT_EQ(b->rope.factor, 8.0);
  EXPECT_EQ(b->rope.original_max_position_embeddings, 8192);
  EXPECT_TRUE(b->ignored_keys.empty()) << b->ignored_keys.front();

  // Per-layer-type dicts (hybrid models' form): the used type's entry.
  json per_type = v5;
  per_type["rope_parameters"] = {{"full_attention", v5["rope_parameters"]}};
  per_type["layer_types"] = json::array();
  for (int i = 0; i < 32; ++i) per_type["layer_types"].push_back("full_attention");
  auto c = ModelConfig::FromJson(per_type.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(*c, *b);
  per_type["rope_parameters"] = {{"sliding_attention", v5["rope_parameters"]}};
  ExpectInvalid(per_type, {"rope_parameters", "full_attention"});
  per_type["layer_types"][3] = "sliding_attention";
  ExpectInvalid(per_type, {"layer_types", "3", "sliding_attention"});

  // Both forms present must agree.
  json both = v5;
  both["rope_theta"] = 10000.0;
  ExpectInvalid(both, {"rope_parameters", "disagree"});
  both["rope_theta"] = 500000.0;
  EXPECT_TRUE(ModelConfig::FromJson(both.dump()).ok());
  both["torch_dtype"] = "float32";
  ExpectInvalid(both, {"dtype", "torch_dtype", "disagree"});
}

TEST(ModelConfigTest, RopeTypesAndTheirTables) {
  json j = json::parse(kLlama3_8B);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};  // legacy "type" key
  auto linear = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(linear.ok()) << linear.status();
  EXPECT_EQ(linear->rope.rope_type, "linear");
  const auto plain = ModelConfig::FromJson(kLlama3_8B)->rope.InverseFrequencies(128);
  const auto halved = linear->rope.InverseFrequencies(128);
  for (size_t i = 0; i < plain.size(); ++i) EXPECT_EQ(halved[i], plain[i] / 2.0);
  EXPECT_EQ(linear->rope.EffectiveAttentionFactor(), 1.0);

  // llama3 (Llama-3.1-8B): wavelengths below 8192/4 unchanged, above 8192
  // divided by 8, smoothly blended between; float64 reference written out.
  j["rope_scaling"] = json::parse(kLlama31RopeScaling);
  auto l3 = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(l3.ok()) << l3.status();
  const auto f = l3->rope.InverseFrequencies(128);
  int unchanged = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    const double base = std::pow(500000.0, -2.0 * i / 128.0);
    const double wavelen = 2.0 * M_PI / base;
    double want;
    if (wavelen < 8192.0 / 4.0) {
      want = base;
      ++unchanged;
    } else if (wavelen > 8192.0) {
      want = base / 8.0;
      ++divided;
    } else {
      const double smooth = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1.0 - smooth) * base / 8.0 + smooth * base;
      ++blended;
    }
    EXPECT_DOUBLE_EQ(f[i], want) << i;
  }
  EXPECT_GT(unchanged, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);

  // YaRN (Qwen2.5's recommended long-context setting): attention factor
  // 0.1 ln 4 + 1, frequencies between interpolation and extrapolation.
  j = json::parse(kQwen3_1_7B);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0},
                       {"original_max_position_embeddings", 32768}};
  auto yarn = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(yarn.ok()) << yarn.status();
  EXPECT_DOUBLE_EQ(yarn->rope.EffectiveAttentionFactor(), 0.1 * std::log(4.0) + 1.0);
  const auto y = yarn->rope.InverseFrequencies(128);
  const auto q = ModelConfig::FromJson(kQwen3_1_7B)->rope.InverseFrequencies(128);
  EXPECT_EQ(y.front(), q.front());           // fastest: extrapolated (unchanged)
  EXPECT_DOUBLE_EQ(y.back(), q.back() / 4);  // slowest: interpolated
  for (size_t i = 0; i < y.size(); ++i) {
    EXPECT_LE(y[i], q[i]);
    EXPECT_GE(y[i], q[i] / 4 * (1 - 1e-15));
  }
  j["rope_scaling"]["mscale"] = 0.707;
  j["rope_scaling"]["mscale_all_dim"] = 0.707;
  EXPECT_DOUBLE_EQ(ModelConfig::FromJson(j.dump())->rope.EffectiveAttentionFactor(), 1.0);
  j["rope_scaling"]["attention_factor"] = 1.5;
  EXPECT_EQ(ModelConfig::FromJson(j.dump())->rope.EffectiveAttentionFactor(), 1.5);

  // ToJson writes each type back in the transformers-5 form.
  for (const auto* c : {&*linear, &*l3, &*yarn}) {
    auto back = ModelConfig::FromJson(c->ToJson());
    ASSERT_TRUE(back.ok()) << back.status() << c->ToJson();
    EXPECT_EQ(*back, *c);
  }
}

TEST(ModelConfigTest, UnknownKeysAreListedNotSilentlyUsed) {
  json j = Qwen();
  j["my_custom_flag"] = 3;
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"mscale", 1.0}};
  auto c = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->ignored_keys,
              ::testing::UnorderedElementsAre("my_custom_flag", "rope_scaling.mscale"));
  // A published config has nothing lockstep does not read.
  EXPECT_TRUE(ModelConfig::FromJson(kQwen3_1_7B)->ignored_keys.empty());
  EXPECT_TRUE(ModelConfig::FromJson(kLlama3_8B)->ignored_keys.empty());
}

TEST(ModelConfigTest, Qwen2HasQkvBiasesAndFloat16IsServedAsFloat32) {
  json j = Qwen();
  j["model_type"] = "qwen2";
  j.erase("head_dim");
  j.erase("attention_bias");
  j["torch_dtype"] = "float16";
  auto c = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->dtype, kernels::DType::kF32);
  EXPECT_EQ(c->checkpoint_dtype, "float16");
  const auto names = ExpectedTensors(*c);
  int biases = 0;
  for (const auto& [name, shape] : names) {
    if (name.find(".bias") != std::string::npos) {
      ++biases;
      EXPECT_EQ(shape.size(), 1u) << name;
    }
  }
  EXPECT_EQ(biases, 3 * c->num_hidden_layers);
  c->qkv_bias = false;
  EXPECT_EQ(c->Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, RefusesKeysThatChangeTheArithmetic) {
  const std::vector<std::pair<std::string, json>> refused = {
      {"quantization_config", {{"quant_method", "awq"}}},
      {"final_logit_softcapping", 30.0},
      {"attn_logit_softcapping", 50.0},
      {"logits_scaling", 8.0},
      {"embedding_multiplier", 12.0},
      {"num_experts", 64},
      {"attention_dropout", 0.1},
  };
  for (const auto& [key, value] : refused) {
    json j = Qwen();
    j[key] = value;
    ExpectInvalid(j, {key});
  }
  json j = Qwen();
  j["final_logit_softcapping"] = nullptr;  // null: absent
  j["num_experts"] = 0;
  EXPECT_TRUE(ModelConfig::FromJson(j.dump()).ok());
  j = json::parse(kLlama3_8B);
  j["mlp_bias"] = true;
  ExpectInvalid(j, {"mlp_bias"});
  j = Qwen();
  j["model_type"] = "qwen2";
  j["use_sliding_window"] = true;
  ExpectInvalid(j, {"use_sliding_window"});
}

TEST(ModelConfigTest, UnsupportedModelTypesAndFeatures) {
  json j = Qwen();
  j["model_type"] = "gpt2";
  ExpectInvalid(j, {"model_type", "gpt2", "qwen3"});
  j = Qwen();
  j["torch_dtype"] = "float64";
  ExpectInvalid(j, {"torch_dtype", "float64"});
  j = Qwen();
  j.erase("torch_dtype");
  j["dtype"] = "int8";
  ExpectInvalid(j, {"dtype", "int8"});
  j = Qwen();
  j["hidden_act"] = "gelu";
  ExpectInvalid(j, {"hidden_act", "gelu"});
  j = Qwen();
  j["attention_bias"] = true;
  ExpectInvalid(j, {"attention_bias"});
  j = Qwen();
  j["use_sliding_window"] = true;
  ExpectInvalid(j, {"use_sliding_window"});
  j = Qwen();
  j["model_type"] = "mistral";
  j["sliding_window"] = 4096;
  ExpectInvalid(j, {"sliding_window"});
  j["sliding_window"] = nullptr;
  EXPECT_TRUE(ModelConfig::FromJson(j.dump()).ok());
}

TEST(ModelConfigTest, ValidateChecksStructs) {
  ModelConfig c = *ModelConfig::FromJson(kQwen3_1_7B);
  EXPECT_TRUE(c.Validate().ok());
  c.qk_norm = false;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  c = *ModelConfig::FromJson(kQwen3_1_7B);
  c.model_type = "falcon";
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  c = *ModelConfig::FromJson(kQwen3_1_7B);
  c.num_key_value_heads = 0;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
  c = *ModelConfig::FromJson(kQwen3_1_7B);
  c.hidden_size = int64_t{1} << 40;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, ParsesQwen3MoeAndItsExpertTensors) {
  auto c = ModelConfig::FromJson(kQwen3_30B_A3B);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "qwen3_moe");
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->num_experts, 128);
  EXPECT_EQ(c->num_experts_per_tok, 8);
  EXPECT_EQ(c->moe_intermediate_size, 768);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->decoder_sparse_step, 1);
  EXPECT_TRUE(c->mlp_only_layers.empty());
  EXPECT_DOUBLE_EQ(c->router_aux_loss_coef, 0.001);
  EXPECT_TRUE(c->ignored_keys.empty()) << absl::StrJoin(c->ignored_keys, ", ");
  // The generator's preset is this config.
  EXPECT_EQ(*c, Qwen3_30B_A3BConfig());
  for (int64_t l = 0; l < 48; ++l) EXPECT_TRUE(c->IsSparseLayer(l)) << l;
  // 30.5B parameters, 3 x 128 expert matrices and a router per layer.
  EXPECT_EQ(c->NumParameters(), 30532122624);
  const auto tensors = ExpectedTensors(*c);
  std::map<std::string, std::vector<int64_t>> by_name(tensors.begin(), tensors.end());
  EXPECT_EQ(by_name.at("model.layers.0.mlp.gate.weight"), (std::vector<int64_t>{128, 2048}));
  EXPECT_EQ(by_name.at("model.layers.47.mlp.experts.127.down_proj.weight"),
            (std::vector<int64_t>{2048, 768}));
  EXPECT_EQ(by_name.at("model.layers.3.mlp.experts.5.gate_proj.weight"),
            (std::vector<int64_t>{768, 2048}));
  EXPECT_EQ(by_name.count("model.layers.0.mlp.gate_proj.weight"), 0u);
  // ToJson writes the MoE keys back.
  auto again = ModelConfig::FromJson(c->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *c);
  EXPECT_NE(c->Summary().find("128 experts"), std::string::npos) << c->Summary();

  // Dense layers: decoder_sparse_step and mlp_only_layers, as transformers.
  json j = json::parse(kQwen3_30B_A3B);
  j["num_hidden_layers"] = 6;
  j["max_window_layers"] = 6;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  auto d = ModelConfig::FromJson(j.dump());
  ASSERT_TRUE(d.ok()) << d.status();
  std::vector<bool> sparse;
  for (int64_t l = 0; l < 6; ++l) sparse.push_back(d->IsSparseLayer(l));
  EXPECT_EQ(sparse, (std::vector<bool>{false, true, false, false, false, true}));
  const auto dt = ExpectedTensors(*d);
  std::map<std::string, std::vector<int64_t>> dn(dt.begin(), dt.end());
  EXPECT_EQ(dn.at("model.layers.3.mlp.gate_proj.weight"), (std::vector<int64_t>{6144, 2048}));
  EXPECT_EQ(dn.count("model.layers.3.mlp.gate.weight"), 0u);
  EXPECT_EQ(dn.count("model.layers.5.mlp.gate.weight"), 1u);
}

TEST(ModelConfigTest, BadMoeKeysAreInvalid) {
  const std::vector<std::pair<std::string, json>> bad = {
      {"num_experts_per_tok", 129}, {"num_experts_per_tok", 0}, {"num_experts", 0},
      {"moe_intermediate_size", 0}, {"decoder_sparse_step", 0}, {"mlp_only_layers", {48}},
      {"mlp_only_layers", {-1}},    {"mlp_only_layers", "all"}, {"num_experts", "many"},
      {"norm_topk_prob", 1}};
  for (const auto& [key, value] : bad) {
    json j = json::parse(kQwen3_30B_A3B);
    j[key] = value;
    ExpectInvalid(j, {key});
  }
  // transformers 5 writes the expert count as num_local_experts.
  json v5 = json::parse(kQwen3_30B_A3B);
  v5.erase("num_experts");
  v5["num_local_experts"] = 64;
  auto c5 = ModelConfig::FromJson(v5.dump());
  ASSERT_TRUE(c5.ok()) << c5.status();
  EXPECT_EQ(c5->num_experts, 64);
  EXPECT_TRUE(c5->ignored_keys.empty()) << absl::StrJoin(c5->ignored_keys, ", ");
  v5["num_experts"] = 128;
  ExpectInvalid(v5, {"num_experts", "num_local_experts", "disagree"});
  // A dense family never takes experts (num_experts stays refused there).
  json q = Qwen();
  q["num_experts"] = 8;
  ExpectInvalid(q, {"num_experts"});
  ModelConfig c = TinyConfig();
  c.num_experts = 4;
  EXPECT_EQ(c.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, ExpectedTensorsForQwen3) {
  ModelConfig c = *ModelConfig::FromJson(kQwen3_1_7B);
  c.num_hidden_layers = 1;
  const auto t = ExpectedTensors(c);
  const std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"model.embed_tokens.weight", {151936, 2048}},
      {"model.layers.0.input_layernorm.weight", {2048}},
      {"model.layers.0.self_attn.q_proj.weight", {2048, 2048}},
      {"model.layers.0.self_attn.k_proj.weight", {1024, 2048}},
      {"model.layers.0.self_attn.v_proj.weight", {1024, 2048}},
      {"model.layers.0.self_attn.o_proj.weight", {2048, 2048}},
      {"model.layers.0.self_attn.q_norm.weight", {128}},
      {"model.layers.0.self_attn.k_norm.weight", {128}},
      {"model.layers.0.post_attention_layernorm.weight", {2048}},
      {"model.layers.0.mlp.gate_proj.weight", {6144, 2048}},
      {"model.layers.0.mlp.up_proj.weight", {6144, 2048}},
      {"model.layers.0.mlp.down_proj.weight", {2048, 6144}},
      {"model.norm.weight", {2048}},
  };  // tied: no lm_head
  EXPECT_EQ(t, want);
}

TEST(ModelConfigTest, ExpectedTensorsForLlamaHaveLmHeadAndNoQkNorm) {
  const ModelConfig c = *ModelConfig::FromJson(kLlama3_8B);
  const auto t = ExpectedTensors(c);
  EXPECT_EQ(t.size(), 1 + 32 * 9 + 2u);
  EXPECT_EQ(t.back().first, "lm_head.weight");
  EXPECT_EQ(t.back().second, (std::vector<int64_t>{128256, 4096}));
  for (const auto& [name, shape] : t) {
    EXPECT_EQ(name.find("q_norm"), std::string::npos);
  }
}

TEST(ModelConfigTest, CheckTensorShapes) {
  ModelConfig c = *ModelConfig::FromJson(kQwen3_1_7B);
  c.num_hidden_layers = 2;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [name, shape] : ExpectedTensors(c)) shapes[name] = shape;
  EXPECT_TRUE(CheckTensorShapes(c, shapes).ok());

  // Buffers some converters keep are ignored.
  auto with_buffer = shapes;
  with_buffer["model.layers.0.self_attn.rotary_emb.inv_freq"] = {64};
  EXPECT_TRUE(CheckTensorShapes(c, with_buffer).ok());

  // A tied checkpoint may carry the shared matrix as lm_head.weight too.
  auto with_lm_head = shapes;
  with_lm_head["lm_head.weight"] = {151936, 2048};
  EXPECT_TRUE(CheckTensorShapes(c, with_lm_head).ok());
  with_lm_head["lm_head.weight"] = {151936, 1024};
  EXPECT_THAT(std::string(CheckTensorShapes(c, with_lm_head).message()),
              HasSubstr("lm_head.weight (expected [151936, 2048], found "
                        "[151936, 1024])"));

  auto broken = shapes;
  broken.erase("model.layers.1.mlp.up_proj.weight");
  broken["model.layers.0.self_attn.q_proj.bias"] = {2048};  // no biases
  broken["model.layers.0.self_attn.k_proj.weight"] = {2048,
                                                      1024};  // transposed
  const absl::Status s = CheckTensorShapes(c, broken);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  const std::string m(s.message());
  EXPECT_THAT(m, HasSubstr("1 missing: model.layers.1.mlp.up_proj.weight"));
  EXPECT_THAT(m,
              HasSubstr("1 unexpected: model.layers.0.self_attn.q_proj.bias"));
  EXPECT_THAT(m, HasSubstr("model.layers.0.self_attn.k_proj.weight (expected "
                           "[1024, 2048], found [2048, 1024])"));

  // Long lists are cut with a count.
  const absl::Status empty = CheckTensorShapes(c, {});
  EXPECT_THAT(std::string(empty.message()), HasSubstr("(and "));
}

}  // namespace
}  // namespace lockstep::common
