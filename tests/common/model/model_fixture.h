// In-memory random models for the model tests (no files).
#ifndef LOCKSTEP_TESTS_COMMON_MODEL_MODEL_FIXTURE_H_
#define LOCKSTEP_TESTS_COMMON_MODEL_MODEL_FIXTURE_H_

#include <random>

#include "common/formats/host_tensor.h"
#include "common/formats/model_config.h"
#include "common/formats/model_generator.h"

namespace lockstep::common::testing {

// Random weights for `config` (normal(0, stddev) matrices, norms near 1), in
// config.dtype.
inline TensorMap RandomTensors(const ModelConfig& config, uint64_t seed,
                               float stddev = 0.08f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  TensorMap out;
  for (const auto& [name, shape] : ExpectedTensors(config)) {
    HostTensor t;
    t.dtype = config.dtype;
    t.shape = shape;
    const int64_t n = t.numel();
    t.data.resize(n * kernels::DTypeSize(config.dtype));
    // Norm weights around 1; matrices and biases around 0.
    const bool norm = shape.size() == 1 && name.find(".bias") == std::string::npos;
    for (int64_t i = 0; i < n; ++i) {
      const float v = norm ? 1.0f + 0.1f * normal(rng) : stddev * normal(rng);
      kernels::StoreFromF32(t.data.data(), config.dtype, i, v);
    }
    out.emplace(name, std::move(t));
  }
  return out;
}

// A small qwen3-style config with 8 query heads (so TP = 8 divides them).
inline ModelConfig TpConfig() {
  ModelConfig c = TinyConfig();
  c.hidden_size = 64;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 128;
  c.vocab_size = 64;
  c.num_hidden_layers = 2;
  return c;
}

// A wider llama-style config where LibTorch's BLAS and softmax round
// differently with the shape of the call (standard-mode twins).
inline ModelConfig Config100MScaledDown() {
  ModelConfig c = TinyConfig();
  c.model_type = "llama";
  c.qk_norm = false;
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.intermediate_size = 512;
  c.vocab_size = 512;
  c.num_hidden_layers = 2;
  return c;
}

// A Qwen3-MoE config wide enough that LibTorch's BLAS rounds with the shape
// of the call: TinyMoeConfig's 3 layers (layer 1 dense) with hidden 256,
// 4 heads of 64, 16 experts of width 128, top 4 renormalised.
inline ModelConfig WideMoeConfig(kernels::DType dtype) {
  ModelConfig c = TinyMoeConfig();
  c.hidden_size = 256;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.intermediate_size = 512;
  c.vocab_size = 512;
  c.num_experts = 16;
  c.num_experts_per_tok = 4;
  c.moe_intermediate_size = 128;
  c.dtype = dtype;
  return c;
}

}  // namespace lockstep::common::testing

#endif  // LOCKSTEP_TESTS_COMMON_MODEL_MODEL_FIXTURE_H_
