// Model hyper-parameters of the supported decoder-only transformers (Llama,
// Mistral, Qwen2, Qwen3 families), read from and written to Hugging Face
// `config.json`, and the weight names and shapes they imply.
#ifndef LOCKSTEP_COMMON_MODEL_CONFIG_H_
#define LOCKSTEP_COMMON_MODEL_CONFIG_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/safetensors.h"
#include "kernels/dtype.h"

namespace lockstep::common {

// Hyper-parameters of a pre-norm RMSNorm / RoPE / GQA / SwiGLU transformer
// without biases. Field names follow Hugging Face's config.json keys.
struct ModelConfig {
  // "llama", "mistral", "qwen2" or "qwen3".
  std::string model_type = "llama";
  int64_t vocab_size = 0;         // V
  int64_t hidden_size = 0;        // H
  int64_t intermediate_size = 0;  // I (SwiGLU width)
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;  // Hq
  int64_t num_key_value_heads = 0;  // Hkv; FromJson defaults it to Hq
  int64_t head_dim = 0;             // D; FromJson defaults it to H / Hq
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  // True: lm_head shares model.embed_tokens.weight (no lm_head.weight).
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 2048;
  // Per-head RMSNorm of q and k before RoPE (q_norm / k_norm weights [D]).
  // Derived: true exactly when model_type is "qwen3".
  bool qk_norm = false;
  // Storage dtype of the weights ("torch_dtype": bfloat16 / float32).
  kernels::DType dtype = kernels::DType::kBF16;
  std::optional<int64_t> bos_token_id;
  // HF allows one id or a list; either way all of them are kept here.
  std::vector<int64_t> eos_token_ids;

  // Parses a Hugging Face config.json. Unknown keys are ignored. Errors are
  // InvalidArgument with a message naming the key:
  //   not JSON / not an object; a required key (vocab_size, hidden_size,
  //   intermediate_size, num_hidden_layers, num_attention_heads) missing or
  //   null; a key of the wrong JSON type (integers must be integers); any
  //   check of Validate(); plus unsupported features: rope_scaling other than
  //   null or {"type"/"rope_type": "default"}, hidden_act other than "silu",
  //   attention_bias / mlp_bias true, an active sliding window
  //   (use_sliding_window true, or for mistral a sliding_window smaller than
  //   max_position_embeddings), torch_dtype (or "dtype") other than
  //   bfloat16 / float32.
  static absl::StatusOr<ModelConfig> FromJson(std::string_view json);

  // Reads `path` and calls FromJson (errno-derived error when unreadable,
  // e.g. NotFound). Messages name the path.
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);

  // InvalidArgument unless: model_type is supported; every size is > 0;
  // Hq % Hkv == 0; head_dim is even; qk_norm == (model_type == "qwen3");
  // rms_norm_eps > 0 and rope_theta > 0 (finite); token ids in [0, V).
  absl::Status Validate() const;

  // Hugging Face config.json text (sorted keys, 2-space indent) with
  // "architectures" (e.g. ["Qwen3ForCausalLM"]), head_dim, torch_dtype,
  // hidden_act "silu", attention_bias false, rope_scaling null.
  // FromJson(ToJson()) == *this for a valid config.
  std::string ToJson() const;

  // Total number of weights (sum of the numel of ExpectedTensors()).
  int64_t NumParameters() const;

  friend bool operator==(const ModelConfig& a, const ModelConfig& b);
  friend bool operator!=(const ModelConfig& a, const ModelConfig& b) {
    return !(a == b);
  }
};

// The Hugging Face weight names and shapes of `config`, in a fixed order:
//   model.embed_tokens.weight                         [V, H]
//   for each layer i, prefix model.layers.<i>.:
//     input_layernorm.weight                          [H]
//     self_attn.q_proj.weight                         [Hq*D, H]
//     self_attn.k_proj.weight                         [Hkv*D, H]
//     self_attn.v_proj.weight                         [Hkv*D, H]
//     self_attn.o_proj.weight                         [H, Hq*D]
//     self_attn.q_norm.weight, self_attn.k_norm.weight [D]  (qk_norm only)
//     post_attention_layernorm.weight                 [H]
//     mlp.gate_proj.weight, mlp.up_proj.weight        [I, H]
//     mlp.down_proj.weight                            [H, I]
//   model.norm.weight                                 [H]
//   lm_head.weight                                    [V, H]  (unless tied)
// Linear weights are [out_features, in_features] as in torch.nn.Linear.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const ModelConfig& config);

// OK when `name_to_shape` holds exactly ExpectedTensors(config). Tolerated
// extras: names ending in ".rotary_emb.inv_freq" (a buffer some converters
// save) and, for tied configs, an "lm_head.weight" of shape [V, H] (some
// tied checkpoints, e.g. Qwen3-1.7B's, store the shared matrix twice; loaders
// should use model.embed_tokens.weight).
// Otherwise InvalidArgument listing the missing names, the unexpected names
// and the names whose shape differs (expected vs found), up to 8 of each
// with the total counts.
absl::Status CheckTensorShapes(
    const ModelConfig& config,
    const std::map<std::string, std::vector<int64_t>>& name_to_shape);

// CheckTensorShapes over the tensors of an opened file (message names the
// file). Dtypes are not checked: a loader may convert.
absl::Status CheckTensorShapes(const ModelConfig& config,
                               const SafetensorsFile& file);

// CheckTensorShapes over the tensors of an opened checkpoint directory (the
// message names model.safetensors, as the overload above does, or the
// index). Dtypes are not checked.
absl::Status CheckTensorShapes(const ModelConfig& config,
                               const SafetensorsCheckpoint& checkpoint);

}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_MODEL_CONFIG_H_
