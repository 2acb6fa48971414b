// Model hyper-parameters of the supported decoder-only transformers (Llama,
// Mistral, Qwen2, Qwen3 and Qwen3-MoE families), read from and written to Hugging Face
// `config.json` (transformers 4 and 5 forms), and the weight names and
// shapes they imply.
#ifndef LOCKSTEP_COMMON_FORMATS_MODEL_CONFIG_H_
#define LOCKSTEP_COMMON_FORMATS_MODEL_CONFIG_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/formats/rope_parameters.h"
#include "common/formats/safetensors.h"
#include "kernels/dtype.h"

namespace lockstep::common {

// Hyper-parameters of a pre-norm RMSNorm / RoPE / GQA / SwiGLU transformer
// (q/k/v biases in Qwen2 only; mixture-of-experts MLPs in Qwen3-MoE only).
// Field names follow Hugging Face's config.json keys.
struct ModelConfig {
  // "llama", "mistral", "qwen2", "qwen3" or "qwen3_moe".
  std::string model_type = "llama";
  int64_t vocab_size = 0;         // V
  int64_t hidden_size = 0;        // H
  int64_t intermediate_size = 0;  // I (SwiGLU width)
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;  // Hq
  int64_t num_key_value_heads = 0;  // Hkv; FromJson defaults it to Hq
  int64_t head_dim = 0;             // D; FromJson defaults it to H / Hq
  double rms_norm_eps = 1e-6;
  // RoPE type, base and scaling, from rope_parameters (transformers 5) or
  // rope_theta + rope_scaling (transformers 4).
  RopeParameters rope;
  // True: lm_head shares model.embed_tokens.weight (no lm_head.weight).
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 2048;
  // Per-head RMSNorm of q and k before RoPE (q_norm / k_norm weights [D]).
  // Derived: true exactly when model_type is "qwen3" or "qwen3_moe".
  bool qk_norm = false;
  // Mixture of experts (model_type "qwen3_moe" only; 0 elsewhere). A sparse
  // layer's MLP is a router [E, H] choosing num_experts_per_tok of
  // num_experts SwiGLU experts of width moe_intermediate_size per token;
  // IsSparseLayer says which layers are sparse (the others keep the dense
  // MLP of width intermediate_size). Defaults when config.json omits a key
  // are transformers' Qwen3MoeConfig defaults (128, 8, 768, false, 1, []).
  int64_t num_experts = 0;            // E
  int64_t num_experts_per_tok = 0;    // k
  int64_t moe_intermediate_size = 0;  // Ie
  // Renormalise the k chosen probabilities to sum to 1.
  bool norm_topk_prob = false;
  // Every decoder_sparse_step-th layer (1-based) is sparse ...
  int64_t decoder_sparse_step = 1;
  // ... except these (0-based layer indices).
  std::vector<int64_t> mlp_only_layers;
  // The coefficient of the load-balancing loss the checkpoint was trained
  // with (router_aux_loss_coef; the learner's default for its own option).
  // Informational: not compared by ==.
  double router_aux_loss_coef = 0.0;
  // Biases on q_proj, k_proj and v_proj (q/k/v_proj.bias [out]).
  // Derived: true exactly when model_type is "qwen2".
  bool qkv_bias = false;
  // Storage and compute dtype of the weights and activations: bfloat16 or
  // float32. A float16 checkpoint is served in float32: every fp16 value is
  // exactly representable, so the weights are widened once at load and no
  // information is lost (bf16 would drop 3 mantissa bits).
  kernels::DType dtype = kernels::DType::kBF16;
  // The dtype config.json names ("dtype" or "torch_dtype"; "bfloat16" when
  // absent). Informational: not compared by ==, not written by ToJson.
  std::string checkpoint_dtype = "bfloat16";
  // config.json keys that are neither understood for this model_type nor
  // refused (see FromJson), e.g. "rope_parameters.mscale" for llama3.
  // Servers list them once at start-up. Informational: not compared by ==.
  std::vector<std::string> ignored_keys;
  std::optional<int64_t> bos_token_id;
  // HF allows one id or a list; either way all of them are kept here.
  std::vector<int64_t> eos_token_ids;

  // Parses a Hugging Face config.json in the transformers-4 form
  // (rope_theta, rope_scaling, torch_dtype) or the transformers-5 form
  // (rope_parameters, dtype); both forms of one model give equal configs.
  // Keys are read from one table per model_type (kUnderstoodConfigKeys in
  // model_config.cc); every other key is recorded in ignored_keys. Errors are
  // InvalidArgument with a message naming the key and value:
  //   not JSON / not an object; a required key (model_type, vocab_size,
  //   hidden_size, intermediate_size, num_hidden_layers,
  //   num_attention_heads) missing or null; a key of the wrong JSON type
  //   (integers must be integers); any check of Validate(); the RoPE errors
  //   of ParseRopeParameters (unknown rope_type, partial_rotary_factor != 1,
  //   ...); and features that change the arithmetic but are not
  //   implemented: hidden_act other than "silu"; attention_bias or mlp_bias
  //   true (qwen2's fixed q/k/v biases are implemented); an active sliding
  //   window (use_sliding_window true, a layer_types entry other than
  //   "full_attention", or for mistral a sliding_window smaller than
  //   max_position_embeddings); attention_dropout > 0; quantization_config;
  //   logit soft-capping or Granite-style multipliers; dtype other than
  //   bfloat16 / float32 / float16.
  static absl::StatusOr<ModelConfig> FromJson(std::string_view json);

  // Reads `path` and calls FromJson (errno-derived error when unreadable,
  // e.g. NotFound). Messages name the path.
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);

  // InvalidArgument unless: model_type is supported; every size is > 0;
  // Hq % Hkv == 0; head_dim is even; qk_norm == (model_type is "qwen3" or
  // "qwen3_moe"); for qwen3_moe 1 <= k <= E, Ie > 0, decoder_sparse_step >= 1
  // and mlp_only_layers within [0, layers), elsewhere num_experts == 0;
  // qkv_bias == (model_type == "qwen2"); rms_norm_eps > 0 (finite);
  // rope.Validate(); token ids in [0, V).
  absl::Status Validate() const;

  // Hugging Face config.json text in the transformers-5 form (sorted keys,
  // 2-space indent) with "architectures" (e.g. ["Qwen3ForCausalLM"]),
  // head_dim, "dtype", "rope_parameters", hidden_act "silu" and, except for
  // qwen2, attention_bias false. FromJson(ToJson()) == *this for a valid
  // config.
  std::string ToJson() const;

  // The start-up line both services print: the family and sizes, the
  // effective RoPE and dtype, and every ignored config.json key (so that a
  // user sees what was not read), e.g.
  //   "qwen2: 28 layers, hidden 3584, 28/4 heads x 128, vocab 152064; rope
  //    yarn {...}; dtype bfloat16; ignored config keys: none".
  std::string Summary() const;

  // Total number of weights (sum of the numel of ExpectedTensors()).
  int64_t NumParameters() const;

  // True when layer `layer`'s MLP is a mixture of experts: num_experts > 0,
  // (layer + 1) % decoder_sparse_step == 0 and layer not in mlp_only_layers
  // (transformers' rule).
  bool IsSparseLayer(int64_t layer) const;
  // True for a family with sparse layers (model_type "qwen3_moe").
  bool IsMoe() const { return num_experts > 0; }

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
//     self_attn.q_proj.bias                           [Hq*D]   (qkv_bias only)
//     self_attn.k_proj.weight                         [Hkv*D, H]
//     self_attn.k_proj.bias                           [Hkv*D]  (qkv_bias only)
//     self_attn.v_proj.weight                         [Hkv*D, H]
//     self_attn.v_proj.bias                           [Hkv*D]  (qkv_bias only)
//     self_attn.o_proj.weight                         [H, Hq*D]
//     self_attn.q_norm.weight, self_attn.k_norm.weight [D]  (qk_norm only)
//     post_attention_layernorm.weight                 [H]
//     dense layers:
//       mlp.gate_proj.weight, mlp.up_proj.weight      [I, H]
//       mlp.down_proj.weight                          [H, I]
//     sparse layers (IsSparseLayer), for each expert e in [0, E):
//       mlp.gate.weight                               [E, H]  (the router)
//       mlp.experts.<e>.gate_proj.weight, .up_proj.weight  [Ie, H]
//       mlp.experts.<e>.down_proj.weight              [H, Ie]
//   model.norm.weight                                 [H]
//   lm_head.weight                                    [V, H]  (unless tied)
// Linear weights are [out_features, in_features] as in torch.nn.Linear.
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const ModelConfig& config);

// The one check of token ids against a model's vocabulary (requests, the
// learner's trajectories, the model's own entry points): INVALID_ARGUMENT
// "<what>: token id <id> at position <i> is outside the vocabulary [0, V)"
// for the first id outside [0, vocab_size).
absl::Status CheckTokenIds(absl::Span<const int32_t> ids, int64_t vocab_size,
                           absl::string_view what);

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

#endif  // LOCKSTEP_COMMON_FORMATS_MODEL_CONFIG_H_
