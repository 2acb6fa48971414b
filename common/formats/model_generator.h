// Preset model configurations and seeded random checkpoints in Hugging Face
// layout (config.json + model.safetensors, or + an index and shards), for
// tests, demos and benchmarks.
#ifndef LOCKSTEP_COMMON_FORMATS_MODEL_GENERATOR_H_
#define LOCKSTEP_COMMON_FORMATS_MODEL_GENERATOR_H_

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/formats/model_config.h"

namespace lockstep::common {

// Qwen3-style toy model for unit tests and char-level tasks: vocab 64,
// hidden 64, intermediate 192, 2 layers, 4 heads, 2 KV heads, head_dim 16,
// qk_norm, untied, max_position 512, rope_theta 10000, float32.
ModelConfig TinyConfig();

// Llama-style model of about 100M parameters (100.1M): vocab 32000, hidden
// 768, intermediate 2048, 12 layers, 12 heads, 4 KV heads, head_dim 64, tied
// embeddings, max_position 2048, float32.
ModelConfig Config100M();

// The shapes of Qwen/Qwen3-1.7B (1.72B parameters, tied embeddings),
// bfloat16.
ModelConfig Qwen3_1_7BConfig();

// The shapes of Qwen/Qwen3-4B (4.02B parameters, tied embeddings),
// bfloat16.
ModelConfig Qwen3_4BConfig();

// The shapes of Qwen/Qwen3-8B (8.19B parameters), bfloat16.
ModelConfig Qwen3_8BConfig();

// Qwen3-MoE toy model: TinyConfig's attention with 3 layers, 8 experts of
// width 32, top 2 renormalised, layer 1 dense (mlp_only_layers {1}),
// float32.
ModelConfig TinyMoeConfig();

// The shapes of Qwen/Qwen3-30B-A3B (30.5B parameters, 3.3B active: 48
// layers, hidden 2048, 32 / 4 heads of 128, 128 experts of width 768, top 8
// renormalised), bfloat16.
ModelConfig Qwen3_30B_A3BConfig();

// Names accepted by PresetConfig: "tiny", "100m", "qwen3-1.7b", "qwen3-8b",
// "qwen3-moe-tiny", "qwen3-30b-a3b".
std::vector<std::string> PresetNames();

// The preset called `name` (see PresetNames); NotFound naming the choices
// otherwise.
absl::StatusOr<ModelConfig> PresetConfig(std::string_view name);

// How GenerateModel lays out the weights.
struct GenerateModelOptions {
  // 0: one `dir`/model.safetensors. Otherwise the largest shard, in bytes of
  // tensor data, of a sharded checkpoint in Hugging Face layout, split as
  // transformers' save_pretrained(max_shard_size=...) splits (huggingface_hub
  // split_state_dict_into_shards): tensors are taken in ExpectedTensors
  // order and a shard is closed when the next tensor would push it past the
  // limit; a tensor larger than the limit gets a shard of its own (placed
  // before the shard being filled). The shards are named
  // model-00001-of-0000N.safetensors ... and listed by
  // model.safetensors.index.json ({"metadata": {"total_size": <data
  // bytes>}, "weight_map": {...}}). If everything fits in one shard, one
  // model.safetensors is written instead, as transformers does.
  uint64_t max_shard_bytes = 0;
};

// Writes the weights to `dir` (creating it; see GenerateModelOptions for the
// layout), then `dir`/config.json, each file atomically. Layout files left in
// `dir` by an earlier run that the new layout does not use are removed first
// (model.safetensors before a sharded write, the index before a single-file
// write; then, as save_pretrained does, model-NNNNN-of-NNNNN.safetensors
// files the new index does not list), so the directory always loads as what
// was written last. Weights are in config.dtype, laid out in ExpectedTensors
// order; matrices and the embedding ~ N(0, 0.02^2), norm weights
// 1 + N(0, 0.01^2). Every tensor draws from its own std::mt19937_64 seeded
// from (seed, tensor name), turned into normals by a Box-Muller transform
// built from IEEE basic operations only, so the bytes are the same on every
// platform and compiler (given -ffp-contract=off) and independent of
// tensor order and sharding. Memory use is bounded (tensors are streamed in
// 4 MiB pieces), so even qwen3-8b (16 GB) is fine. The safetensors metadata
// of every file holds
// {"format": "pt", "generator": "lockstep", "seed": "<seed>"}.
// InvalidArgument for an invalid config; I/O errors as from
// SafetensorsWriter.
absl::Status GenerateModel(const ModelConfig& config, uint64_t seed,
                           const std::string& dir,
                           const GenerateModelOptions& options = {});

namespace internal {

// Natural log of x > 0 and cos/sin of 2*pi*u for u in [0, 1), computed with
// +, -, *, / and exact scaling only (bitwise reproducible; |error| < 1e-15
// relative to libm). Exposed for tests.
double ReproducibleLog(double x);
void ReproducibleCosSin2Pi(double u, double* cos_out, double* sin_out);

// Seeded stream of standard normal doubles (Box-Muller pairs over a
// std::mt19937_64). Exposed for tests.
class NormalStream {
 public:
  explicit NormalStream(uint64_t seed) : engine_(seed) {}
  double Next();

 private:
  std::mt19937_64 engine_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace internal
}  // namespace lockstep::common

#endif  // LOCKSTEP_COMMON_FORMATS_MODEL_GENERATOR_H_
