#include "common/formats/model_config.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/formats/config_json.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace lockstep::common {
namespace {

using json = nlohmann::json;

// Keys read for every supported model_type: the architecture, the RoPE
// (either form), the dtype (either key), the token ids, and metadata that
// does not change the arithmetic (use_cache, initializer_range, ...).
constexpr const char* kCommonConfigKeys[] = {
    "_name_or_path", "architectures", "attention_dropout", "bos_token_id", "dtype",
    "eos_token_id", "head_dim", "hidden_act", "hidden_size", "initializer_range",
    "intermediate_size", "layer_types", "max_position_embeddings", "model_type",
    "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id",
    "partial_rotary_factor", "rms_norm_eps", "rope_parameters", "rope_scaling", "rope_theta",
    "tie_word_embeddings", "torch_dtype", "transformers_version", "use_cache", "vocab_size"};

// The table of understood keys per model_type, besides kCommonConfigKeys.
// pretraining_tp (Llama) only splits transformers' matmuls into slices that
// sum to the same product; max_window_layers only matters with an active
// sliding window, which is refused.
struct FamilyKeys {
  const char* model_type;
  std::vector<const char*> keys;
};
const std::vector<FamilyKeys>& UnderstoodConfigKeys() {
  static const auto* table = new std::vector<FamilyKeys>{
      {"llama", {"attention_bias", "mlp_bias", "pretraining_tp"}},
      {"mistral", {"sliding_window"}},
      {"qwen2", {"use_sliding_window", "sliding_window", "max_window_layers"}},
      {"qwen3",
       {"attention_bias", "use_sliding_window", "sliding_window", "max_window_layers"}},
      // output_router_logits only makes transformers return the router's
      // logits; router_aux_loss_coef is the training loss's coefficient.
      {"qwen3_moe",
       {"attention_bias", "use_sliding_window", "sliding_window", "max_window_layers",
        "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
        "norm_topk_prob",
        "decoder_sparse_step", "mlp_only_layers", "output_router_logits",
        "router_aux_loss_coef"}},
  };
  return *table;
}

// Keys of other architectures that change the arithmetic in ways lockstep
// does not implement: present and not null, they fail the load.
constexpr const char* kRefusedConfigKeys[] = {
    "quantization_config",   "attn_logit_softcapping", "final_logit_softcapping",
    "embedding_multiplier",  "residual_multiplier",    "attention_multiplier",
    "logits_scaling",        "query_pre_attn_scalar",  "num_experts",
    "num_local_experts"};

bool SupportedModelType(const std::string& t) {
  for (const FamilyKeys& f : UnderstoodConfigKeys()) {
    if (t == f.model_type) return true;
  }
  return false;
}

bool Understood(const std::string& model_type, const std::string& key) {
  for (const char* k : kCommonConfigKeys) {
    if (key == k) return true;
  }
  for (const FamilyKeys& f : UnderstoodConfigKeys()) {
    if (model_type != f.model_type) continue;
    for (const char* k : f.keys) {
      if (key == k) return true;
    }
  }
  return false;
}

const char* Architecture(const std::string& model_type) {
  if (model_type == "qwen3") return "Qwen3ForCausalLM";
  if (model_type == "qwen3_moe") return "Qwen3MoeForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  return "LlamaForCausalLM";
}

// The dtype named by "dtype" (transformers >= 4.56) or "torch_dtype".
absl::StatusOr<std::string> CheckpointDType(const json& j) {
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<std::string> s, OptionalConfigString(j, "dtype"));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<std::string> t,
                            OptionalConfigString(j, "torch_dtype"));
  if (s.has_value() && t.has_value() && *s != *t) {
    return ConfigError(absl::StrCat("\"dtype\" '", *s, "' and \"torch_dtype\" '", *t,
                                    "' disagree"));
  }
  const std::string name = s.value_or(t.value_or("bfloat16"));
  if (name != "bfloat16" && name != "float32" && name != "float16") {
    return ConfigError(absl::StrCat("unsupported ", s.has_value() ? "dtype" : "torch_dtype",
                                    " '", name, "' (supported: bfloat16, float32, float16)"));
  }
  return name;
}

// layer_types (transformers >= 4.54): every layer must be full attention.
absl::StatusOr<std::vector<std::string>> LayerTypes(const json& j, int64_t layers) {
  std::vector<std::string> out;
  const json* lt = FindConfigKey(j, "layer_types");
  if (lt == nullptr) return out;
  if (!lt->is_array()) {
    return ConfigError(absl::StrCat("\"layer_types\" must be a list, got ", lt->dump()));
  }
  if (static_cast<int64_t>(lt->size()) != layers) {
    return ConfigError(absl::StrCat("\"layer_types\" has ", lt->size(),
                                    " entries for num_hidden_layers ", layers));
  }
  for (size_t i = 0; i < lt->size(); ++i) {
    const json& e = (*lt)[i];
    if (!e.is_string() || e.get<std::string>() != "full_attention") {
      return ConfigError(absl::StrCat("\"layer_types\"[", i, "] is ", e.dump(),
                                      ": only \"full_attention\" is supported (no sliding "
                                      "window)"));
    }
    out.push_back(e.get<std::string>());
  }
  return out;
}

// Features the transformer does not implement: refuse rather than run a
// different model than the checkpoint's.
absl::Status CheckUnimplemented(const json& j, const ModelConfig& c) {
  for (const char* key : kRefusedConfigKeys) {
    if (Understood(c.model_type, key)) continue;  // e.g. qwen3_moe's num_experts
    if (const json* v = FindConfigKey(j, key); v != nullptr) {
      if ((v->is_number() && v->get<double>() == 0.0) || (v->is_boolean() && !v->get<bool>())) {
        continue;  // e.g. "num_experts": 0, "final_logit_softcapping": false
      }
      return ConfigError(absl::StrCat("\"", key, "\": ", v->dump(),
                                      " is unsupported (changes the arithmetic; not "
                                      "implemented)"));
    }
  }
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<std::string> act,
                            OptionalConfigString(j, "hidden_act"));
  if (act.has_value() && *act != "silu") {
    return ConfigError(
        absl::StrCat("unsupported hidden_act '", *act, "' (only silu is supported)"));
  }
  if (c.model_type != "qwen2") {
    for (const char* key : {"attention_bias", "mlp_bias"}) {
      if (!Understood(c.model_type, key)) continue;
      LOCKSTEP_ASSIGN_OR_RETURN(std::optional<bool> bias, OptionalConfigBool(j, key));
      if (bias.value_or(false)) {
        return ConfigError(absl::StrCat("\"", key, "\": true is unsupported for ",
                                        c.model_type, " (no biases in this family)"));
      }
    }
  }
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> dropout,
                            OptionalConfigDouble(j, "attention_dropout"));
  if (dropout.value_or(0.0) != 0.0) {
    return ConfigError(absl::StrCat("\"attention_dropout\": ", *dropout,
                                    " is unsupported (lockstep trains without dropout)"));
  }
  if (Understood(c.model_type, "use_sliding_window")) {
    LOCKSTEP_ASSIGN_OR_RETURN(std::optional<bool> use_sw,
                              OptionalConfigBool(j, "use_sliding_window"));
    if (use_sw.value_or(false)) {
      return ConfigError(
          "\"use_sliding_window\": true is unsupported (full attention only)");
    }
  }
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> window,
                            OptionalConfigInt(j, "sliding_window"));
  if (c.model_type == "mistral" && window.has_value() && *window < c.max_position_embeddings) {
    return ConfigError(absl::StrCat(
        "mistral \"sliding_window\" ", *window,
        " < max_position_embeddings is unsupported (full attention only)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RequiredInt(const json& j, const char* key) {
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> v, OptionalConfigInt(j, key));
  if (!v.has_value()) {
    return ConfigError(absl::StrCat("required key \"", key, "\" is missing"));
  }
  return *v;
}

bool QkNormFamily(const std::string& model_type) {
  return model_type == "qwen3" || model_type == "qwen3_moe";
}

// The mixture-of-experts keys of a qwen3_moe config.json, with
// transformers' Qwen3MoeConfig defaults for absent ones. The expert count is
// "num_experts" in Hub checkpoints (transformers 4) and "num_local_experts"
// in what transformers 5 writes; both present, they must agree.
absl::Status ParseMoe(const json& j, ModelConfig& c) {
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> e, OptionalConfigInt(j, "num_experts"));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> local,
                            OptionalConfigInt(j, "num_local_experts"));
  if (e.has_value() && local.has_value() && *e != *local) {
    return ConfigError(absl::StrCat("\"num_experts\" ", *e, " and \"num_local_experts\" ",
                                    *local, " disagree"));
  }
  if (!e.has_value()) e = local;
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> k,
                            OptionalConfigInt(j, "num_experts_per_tok"));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> ie,
                            OptionalConfigInt(j, "moe_intermediate_size"));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<bool> norm, OptionalConfigBool(j, "norm_topk_prob"));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> step,
                            OptionalConfigInt(j, "decoder_sparse_step"));
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> aux,
                            OptionalConfigDouble(j, "router_aux_loss_coef"));
  c.num_experts = e.value_or(128);
  c.num_experts_per_tok = k.value_or(8);
  c.moe_intermediate_size = ie.value_or(768);
  c.norm_topk_prob = norm.value_or(false);
  c.decoder_sparse_step = step.value_or(1);
  c.router_aux_loss_coef = aux.value_or(0.001);
  c.mlp_only_layers.clear();
  if (const json* layers = FindConfigKey(j, "mlp_only_layers"); layers != nullptr) {
    if (!layers->is_array()) {
      return ConfigError(
          absl::StrCat("\"mlp_only_layers\" must be a list, got ", layers->dump()));
    }
    for (const json& l : *layers) {
      if (!l.is_number_integer()) {
        return ConfigError(absl::StrCat("\"mlp_only_layers\" must hold integers, got ",
                                        layers->dump()));
      }
      c.mlp_only_layers.push_back(l.get<int64_t>());
    }
  }
  return absl::OkStatus();
}

std::string SupportedModelTypes() {
  std::vector<std::string> names;
  for (const FamilyKeys& f : UnderstoodConfigKeys()) names.push_back(f.model_type);
  return absl::StrJoin(names, ", ");
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr,
                       /*allow_exceptions=*/false);
  if (j.is_discarded()) return ConfigError("not valid JSON");
  if (!j.is_object()) return ConfigError("not a JSON object");

  ModelConfig c;
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                            OptionalConfigString(j, "model_type"));
  if (!model_type.has_value()) {
    return ConfigError(absl::StrCat("required key \"model_type\" is missing (supported: ",
                                    SupportedModelTypes(), ")"));
  }
  c.model_type = *model_type;
  if (!SupportedModelType(c.model_type)) {
    return ConfigError(absl::StrCat("unsupported model_type '", c.model_type,
                                    "' (supported: ", SupportedModelTypes(), ")"));
  }
  c.qk_norm = QkNormFamily(c.model_type);
  c.qkv_bias = c.model_type == "qwen2";
  if (c.model_type == "qwen3_moe") LOCKSTEP_RETURN_IF_ERROR(ParseMoe(j, c));

  LOCKSTEP_ASSIGN_OR_RETURN(c.vocab_size, RequiredInt(j, "vocab_size"));
  LOCKSTEP_ASSIGN_OR_RETURN(c.hidden_size, RequiredInt(j, "hidden_size"));
  LOCKSTEP_ASSIGN_OR_RETURN(c.intermediate_size, RequiredInt(j, "intermediate_size"));
  LOCKSTEP_ASSIGN_OR_RETURN(c.num_hidden_layers, RequiredInt(j, "num_hidden_layers"));
  LOCKSTEP_ASSIGN_OR_RETURN(c.num_attention_heads, RequiredInt(j, "num_attention_heads"));
  if (c.num_attention_heads <= 0) {
    return ConfigError(absl::StrCat("\"num_attention_heads\" must be > 0, got ",
                                    c.num_attention_heads));
  }

  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> kv,
                            OptionalConfigInt(j, "num_key_value_heads"));
  c.num_key_value_heads = kv.value_or(c.num_attention_heads);
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, OptionalConfigInt(j, "head_dim"));
  if (head_dim.has_value()) {
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return ConfigError(absl::StrCat("\"hidden_size\" ", c.hidden_size,
                                      " is not divisible by \"num_attention_heads\" ",
                                      c.num_attention_heads, " (and no \"head_dim\" is given)"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }

  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<double> eps, OptionalConfigDouble(j, "rms_norm_eps"));
  c.rms_norm_eps = eps.value_or(1e-6);
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<bool> tie,
                            OptionalConfigBool(j, "tie_word_embeddings"));
  c.tie_word_embeddings = tie.value_or(false);
  LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> max_pos,
                            OptionalConfigInt(j, "max_position_embeddings"));
  c.max_position_embeddings = max_pos.value_or(2048);
  LOCKSTEP_ASSIGN_OR_RETURN(c.checkpoint_dtype, CheckpointDType(j));
  c.dtype = c.checkpoint_dtype == "bfloat16" ? kernels::DType::kBF16 : kernels::DType::kF32;
  LOCKSTEP_ASSIGN_OR_RETURN(c.bos_token_id, OptionalConfigInt(j, "bos_token_id"));

  if (const json* eos = FindConfigKey(j, "eos_token_id"); eos != nullptr) {
    if (eos->is_array()) {
      for (const json& e : *eos) {
        if (!e.is_number_integer()) {
          return ConfigError(absl::StrCat("\"eos_token_id\" list must hold integers, got ",
                                          eos->dump()));
        }
        c.eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      LOCKSTEP_ASSIGN_OR_RETURN(std::optional<int64_t> id, OptionalConfigInt(j, "eos_token_id"));
      c.eos_token_ids.push_back(*id);
    }
  }

  LOCKSTEP_ASSIGN_OR_RETURN(std::vector<std::string> layer_types,
                            LayerTypes(j, c.num_hidden_layers));
  LOCKSTEP_ASSIGN_OR_RETURN(ParsedRopeParameters rope,
                            ParseRopeParameters(j, c.max_position_embeddings, layer_types));
  c.rope = rope.rope;
  LOCKSTEP_RETURN_IF_ERROR(CheckUnimplemented(j, c));
  for (const auto& [key, value] : j.items()) {
    if (!Understood(c.model_type, key)) c.ignored_keys.push_back(key);
  }
  for (std::string& key : rope.ignored_keys) c.ignored_keys.push_back(std::move(key));

  LOCKSTEP_RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno != 0 ? errno : ENOENT;
    return absl::Status(absl::ErrnoToStatusCode(err),
                        absl::StrCat("model config '", path,
                                     "': cannot open: ", std::strerror(err)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(
        absl::StrCat("model config '", path, "': read error"));
  }
  absl::StatusOr<ModelConfig> c = FromJson(text.str());
  if (!c.ok()) {
    return absl::Status(c.status().code(),
                        absl::StrCat(path, ": ", c.status().message()));
  }
  return c;
}

absl::Status ModelConfig::Validate() const {
  if (!SupportedModelType(model_type)) {
    return ConfigError(absl::StrCat(
        "unsupported model_type '", model_type,
        "' (supported: ", SupportedModelTypes(), ")"));
  }
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"max_position_embeddings", max_position_embeddings}};
  for (const auto& [key, value] : sizes) {
    if (value <= 0) {
      return ConfigError(
          absl::StrCat("\"", key, "\" must be > 0, got ", value));
    }
    // Keeps every product of two sizes (and NumParameters) far from int64
    // overflow.
    if (value > (int64_t{1} << 24)) {
      return ConfigError(
          absl::StrCat("\"", key, "\" is implausibly large: ", value));
    }
  }
  if (num_attention_heads % num_key_value_heads != 0) {
    return ConfigError(absl::StrCat(
        "\"num_attention_heads\" ", num_attention_heads,
        " is not a multiple of \"num_key_value_heads\" ", num_key_value_heads));
  }
  if (head_dim % 2 != 0) {
    return ConfigError(absl::StrCat("\"head_dim\" ", head_dim,
                                    " must be even (RoPE rotates pairs)"));
  }
  if (qk_norm != QkNormFamily(model_type)) {
    return ConfigError(absl::StrCat("qk_norm must be ",
                                    QkNormFamily(model_type) ? "true" : "false",
                                    " for model_type '", model_type, "'"));
  }
  if (model_type == "qwen3_moe") {
    if (num_experts <= 0 || num_experts > 4096) {
      return ConfigError(
          absl::StrCat("\"num_experts\" must be in [1, 4096], got ", num_experts));
    }
    if (num_experts_per_tok < 1 || num_experts_per_tok > num_experts) {
      return ConfigError(absl::StrCat("\"num_experts_per_tok\" must be in [1, num_experts ",
                                      num_experts, "], got ", num_experts_per_tok));
    }
    if (moe_intermediate_size <= 0 || moe_intermediate_size > (int64_t{1} << 24)) {
      return ConfigError(absl::StrCat("\"moe_intermediate_size\" must be > 0, got ",
                                      moe_intermediate_size));
    }
    if (decoder_sparse_step < 1) {
      return ConfigError(absl::StrCat("\"decoder_sparse_step\" must be >= 1, got ",
                                      decoder_sparse_step));
    }
    for (int64_t l : mlp_only_layers) {
      if (l < 0 || l >= num_hidden_layers) {
        return ConfigError(absl::StrCat("\"mlp_only_layers\" entry ", l,
                                        " is outside [0, num_hidden_layers ",
                                        num_hidden_layers, ")"));
      }
    }
  } else if (num_experts != 0 || num_experts_per_tok != 0 || moe_intermediate_size != 0) {
    return ConfigError(absl::StrCat("model_type '", model_type,
                                    "' has no experts (num_experts must be 0)"));
  }
  if (!(rms_norm_eps > 0.0) || !std::isfinite(rms_norm_eps)) {
    return ConfigError(
        absl::StrCat("\"rms_norm_eps\" must be > 0, got ", rms_norm_eps));
  }
  if (qkv_bias != (model_type == "qwen2")) {
    return ConfigError(absl::StrCat("qkv_bias must be ",
                                    model_type == "qwen2" ? "true" : "false",
                                    " for model_type '", model_type, "'"));
  }
  if (absl::Status s = rope.Validate(); !s.ok()) {
    return ConfigError(absl::StrCat("rope_parameters: ", s.message()));
  }
  auto check_token = [&](const char* key, int64_t id) -> absl::Status {
    if (id < 0 || id >= vocab_size) {
      return ConfigError(absl::StrCat("\"", key, "\" ", id,
                                      " is outside [0, vocab_size ", vocab_size,
                                      ")"));
    }
    return absl::OkStatus();
  };
  if (bos_token_id.has_value()) {
    LOCKSTEP_RETURN_IF_ERROR(check_token("bos_token_id", *bos_token_id));
  }
  for (int64_t id : eos_token_ids) {
    LOCKSTEP_RETURN_IF_ERROR(check_token("eos_token_id", id));
  }
  return absl::OkStatus();
}

std::string ModelConfig::ToJson() const {
  json j = json::object();
  j["architectures"] = {Architecture(model_type)};
  j["model_type"] = model_type;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_parameters"] = rope.ToJson();
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["max_position_embeddings"] = max_position_embeddings;
  j["dtype"] = dtype == kernels::DType::kF32 ? "float32" : "bfloat16";
  j["hidden_act"] = "silu";
  if (model_type != "qwen2" && model_type != "mistral") j["attention_bias"] = false;
  if (model_type == "qwen3_moe") {
    // Both spellings: transformers 4 reads num_experts, 5 writes
    // num_local_experts (and reads either).
    j["num_experts"] = num_experts;
    j["num_local_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["norm_topk_prob"] = norm_topk_prob;
    j["decoder_sparse_step"] = decoder_sparse_step;
    j["mlp_only_layers"] = mlp_only_layers;
    j["router_aux_loss_coef"] = router_aux_loss_coef;
  }
  if (bos_token_id.has_value()) j["bos_token_id"] = *bos_token_id;
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else if (!eos_token_ids.empty()) {
    j["eos_token_id"] = eos_token_ids;
  }
  return j.dump(2) + "\n";
}

std::string ModelConfig::Summary() const {
  std::string dtype_note = kernels::DType::kF32 == dtype ? "float32" : "bfloat16";
  if (checkpoint_dtype == "float16") dtype_note = "float16 checkpoint served as float32";
  return absl::StrCat(
      model_type, ": ", num_hidden_layers, " layers, hidden ", hidden_size, ", ",
      num_attention_heads, "/", num_key_value_heads, " heads x ", head_dim, ", vocab ",
      vocab_size, qkv_bias ? ", q/k/v biases" : "", qk_norm ? ", q/k norm" : "",
      tie_word_embeddings ? ", tied embeddings" : "",
      IsMoe() ? absl::StrCat(", ", num_experts, " experts of width ", moe_intermediate_size,
                             " (top ", num_experts_per_tok,
                             norm_topk_prob ? ", renormalised" : "",
                             "; decoder_sparse_step ", decoder_sparse_step,
                             mlp_only_layers.empty() ? "" : ", dense layers ",
                             absl::StrJoin(mlp_only_layers, ","), ")")
              : "",
      "; rope ", rope.rope_type, " ",
      rope.ToJson().dump(), " (attention factor ", rope.EffectiveAttentionFactor(),
      "); dtype ", dtype_note, "; ignored config keys: ",
      ignored_keys.empty() ? "none" : absl::StrJoin(ignored_keys, ", "));
}

bool ModelConfig::IsSparseLayer(int64_t layer) const {
  if (num_experts <= 0 || decoder_sparse_step <= 0) return false;
  if ((layer + 1) % decoder_sparse_step != 0) return false;
  return std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) ==
         mlp_only_layers.end();
}

int64_t ModelConfig::NumParameters() const {
  int64_t total = 0;
  for (const auto& [name, shape] : ExpectedTensors(*this)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    total += n;
  }
  return total;
}

bool operator==(const ModelConfig& a, const ModelConfig& b) {
  return a.model_type == b.model_type && a.vocab_size == b.vocab_size &&
         a.hidden_size == b.hidden_size &&
         a.intermediate_size == b.intermediate_size &&
         a.num_hidden_layers == b.num_hidden_layers &&
         a.num_attention_heads == b.num_attention_heads &&
         a.num_key_value_heads == b.num_key_value_heads &&
         a.head_dim == b.head_dim && a.rms_norm_eps == b.rms_norm_eps &&
         a.rope == b.rope && a.qkv_bias == b.qkv_bias &&
         a.tie_word_embeddings == b.tie_word_embeddings &&
         a.max_position_embeddings == b.max_position_embeddings &&
         a.qk_norm == b.qk_norm && a.dtype == b.dtype &&
         a.bos_token_id == b.bos_token_id && a.eos_token_ids == b.eos_token_ids &&
         a.num_experts == b.num_experts && a.num_experts_per_tok == b.num_experts_per_tok &&
         a.moe_intermediate_size == b.moe_intermediate_size &&
         a.norm_topk_prob == b.norm_topk_prob &&
         a.decoder_sparse_step == b.decoder_sparse_step &&
         a.mlp_only_layers == b.mlp_only_layers;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const ModelConfig& c) {
  const int64_t v = c.vocab_size, h = c.hidden_size, i = c.intermediate_size;
  const int64_t q = c.num_attention_heads * c.head_dim;
  const int64_t kv = c.num_key_value_heads * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.reserve(3 + c.num_hidden_layers * 14);
  out.push_back({"model.embed_tokens.weight", {v, h}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "self_attn.q_proj.weight", {q, h}});
    if (c.qkv_bias) out.push_back({p + "self_attn.q_proj.bias", {q}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    if (c.qkv_bias) out.push_back({p + "self_attn.k_proj.bias", {kv}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    if (c.qkv_bias) out.push_back({p + "self_attn.v_proj.bias", {kv}});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}});
    if (c.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    if (c.IsSparseLayer(l)) {
      const int64_t ie = c.moe_intermediate_size;
      out.push_back({p + "mlp.gate.weight", {c.num_experts, h}});
      for (int64_t e = 0; e < c.num_experts; ++e) {
        const std::string x = absl::StrCat(p, "mlp.experts.", e, ".");
        out.push_back({x + "gate_proj.weight", {ie, h}});
        out.push_back({x + "up_proj.weight", {ie, h}});
        out.push_back({x + "down_proj.weight", {h, ie}});
      }
      continue;
    }
    out.push_back({p + "mlp.gate_proj.weight", {i, h}});
    out.push_back({p + "mlp.up_proj.weight", {i, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, i}});
  }
  out.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {v, h}});
  return out;
}

namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// "a, b, c (and 5 more)" from the first kMaxListed items.
std::string Listing(const std::vector<std::string>& items) {
  constexpr size_t kMaxListed = 8;
  std::vector<std::string> shown(
      items.begin(), items.begin() + std::min(items.size(), kMaxListed));
  std::string s = absl::StrJoin(shown, ", ");
  if (items.size() > kMaxListed) {
    absl::StrAppend(&s, " (and ", items.size() - kMaxListed, " more)");
  }
  return s;
}

}  // namespace

absl::Status CheckTensorShapes(
    const ModelConfig& config,
    const std::map<std::string, std::vector<int64_t>>& name_to_shape) {
  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> expected_names;
  for (const auto& [name, shape] : ExpectedTensors(config)) {
    expected_names.insert(name);
    auto it = name_to_shape.find(name);
    if (it == name_to_shape.end()) {
      missing.push_back(name);
    } else if (it->second != shape) {
      mismatched.push_back(absl::StrCat(name, " (expected ", ShapeString(shape),
                                        ", found ", ShapeString(it->second),
                                        ")"));
    }
  }
  for (const auto& [name, shape] : name_to_shape) {
    if (expected_names.count(name) != 0 ||
        absl::EndsWith(name, ".rotary_emb.inv_freq")) {
      continue;
    }
    // Some tied checkpoints (Qwen3-1.7B among them) still store the shared
    // matrix as lm_head.weight; it is harmless when the shape fits.
    if (config.tie_word_embeddings && name == "lm_head.weight") {
      const std::vector<int64_t> want = {config.vocab_size, config.hidden_size};
      if (shape != want) {
        mismatched.push_back(absl::StrCat(name, " (expected ",
                                          ShapeString(want), ", found ",
                                          ShapeString(shape), ")"));
      }
      continue;
    }
    unexpected.push_back(name);
  }
  if (missing.empty() && unexpected.empty() && mismatched.empty()) {
    return absl::OkStatus();
  }
  std::vector<std::string> parts;
  if (!missing.empty()) {
    parts.push_back(
        absl::StrCat(missing.size(), " missing: ", Listing(missing)));
  }
  if (!unexpected.empty()) {
    parts.push_back(
        absl::StrCat(unexpected.size(), " unexpected: ", Listing(unexpected)));
  }
  if (!mismatched.empty()) {
    parts.push_back(absl::StrCat(mismatched.size(),
                                 " with wrong shape: ", Listing(mismatched)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("weights do not match the ", config.model_type,
                   " config: ", absl::StrJoin(parts, "; ")));
}

absl::Status CheckTensorShapes(const ModelConfig& config,
                               const SafetensorsFile& file) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const TensorInfo& t : file.tensors()) shapes[t.name] = t.shape;
  absl::Status s = CheckTensorShapes(config, shapes);
  if (!s.ok()) {
    return absl::Status(
        s.code(),
        absl::StrCat("safetensors file '", file.path(), "': ", s.message()));
  }
  return s;
}

absl::Status CheckTensorShapes(const ModelConfig& config,
                               const SafetensorsCheckpoint& checkpoint) {
  if (!checkpoint.sharded()) {
    return CheckTensorShapes(config, *checkpoint.files().front());
  }
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const TensorInfo& t : checkpoint.tensors()) shapes[t.name] = t.shape;
  absl::Status s = CheckTensorShapes(config, shapes);
  if (!s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat("safetensors index '", checkpoint.path(),
                                     "': ", s.message()));
  }
  return s;
}

absl::Status CheckTokenIds(absl::Span<const int32_t> ids, int64_t vocab_size,
                           absl::string_view what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": token id ", ids[i], " at position ",
                                                     i, " is outside the vocabulary [0, ",
                                                     vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace lockstep::common
