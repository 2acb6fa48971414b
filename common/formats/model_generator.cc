#include "common/formats/model_generator.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/formats/safetensors.h"
#include "common/status/status_macros.h"

namespace lockstep::common {
namespace {

constexpr double kWeightStd = 0.02;
constexpr double kNormStd = 0.01;
constexpr size_t kChunkBytes = size_t{4} << 20;

int64_t Numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t Fnv1a64(std::string_view s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

// Seeding per tensor (not one stream for the file) keeps each tensor's values
// independent of which other tensors exist and of their order.
uint64_t TensorSeed(uint64_t seed, std::string_view name) {
  return SplitMix64(SplitMix64(seed) ^ Fnv1a64(name));
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Coefficients are folded by the compiler with correctly rounded IEEE
// arithmetic, so they are the same doubles everywhere.
constexpr double kLn2 = 0.69314718055994530941723212145818;
constexpr double kHalfPi = 1.5707963267948966192313216916398;
constexpr double kSqrtHalf = 0.70710678118654752440084436210485;

// Writes config.json through a temporary file + rename, like the weights.
absl::Status WriteTextAtomically(const std::string& path,
                                 const std::string& text) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot create '", tmp, "'"));
    }
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return absl::DataLossError(absl::StrCat("write to '", tmp, "' failed"));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("rename to '", path, "' failed: ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

double ReproducibleLog(double x) {
  int e = 0;
  double m = std::frexp(x, &e);  // exact: x = m * 2^e, m in [0.5, 1)
  if (m < kSqrtHalf) {
    m *= 2.0;  // exact
    --e;
  }
  // m in [sqrt(1/2), sqrt(2)): log(m) = 2 atanh(s), |s| <= 0.1716, and the
  // odd series to s^21 is below double rounding.
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double p = 1.0 / 21.0;
  for (int k = 19; k >= 1; k -= 2) p = p * s2 + 1.0 / static_cast<double>(k);
  return static_cast<double>(e) * kLn2 + 2.0 * s * p;
}

namespace {

// sin and cos of x in [0, pi/4] by Taylor series to x^19 / x^18 (the
// remainders are < 1e-19).
void SinCosSmall(double x, double* c, double* s) {
  const double x2 = x * x;
  double ps = 0.0;
  double pc = 0.0;
  // Horner from the highest term down: sin = x (1 - x2/(2*3) (1 - x2/(4*5) ..
  for (int k = 9; k >= 1; --k) {
    ps = (1.0 - ps) * x2 /
         (static_cast<double>(2 * k) * static_cast<double>(2 * k + 1));
    pc = (1.0 - pc) * x2 /
         (static_cast<double>(2 * k - 1) * static_cast<double>(2 * k));
  }
  *s = x * (1.0 - ps);
  *c = 1.0 - pc;
}

}  // namespace

void ReproducibleCosSin2Pi(double u, double* cos_out, double* sin_out) {
  // Quadrant reduction is exact: 4u, its integer part and the remainder are
  // all representable.
  const double t = 4.0 * u;
  const double qf = std::floor(t);
  const int q = static_cast<int>(qf) & 3;
  const double r = t - qf;  // in [0, 1)
  double c, s;
  if (r <= 0.5) {
    SinCosSmall(kHalfPi * r, &c, &s);
  } else {
    // cos(pi/2 r) = sin(pi/2 (1 - r)); 1 - r is exact here.
    SinCosSmall(kHalfPi * (1.0 - r), &s, &c);
  }
  switch (q) {
    case 0:
      *cos_out = c;
      *sin_out = s;
      break;
    case 1:
      *cos_out = -s;
      *sin_out = c;
      break;
    case 2:
      *cos_out = -c;
      *sin_out = -s;
      break;
    default:
      *cos_out = s;
      *sin_out = -c;
      break;
  }
}

double NormalStream::Next() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  const uint64_t a = engine_();
  const uint64_t b = engine_();
  // u1 in (0, 1] (never 0, so the log is finite), u2 in [0, 1).
  const double u1 = static_cast<double>((a >> 11) + 1) * 0x1p-53;
  const double u2 = static_cast<double>(b >> 11) * 0x1p-53;
  const double radius = std::sqrt(-2.0 * ReproducibleLog(u1));
  double c, s;
  ReproducibleCosSin2Pi(u2, &c, &s);
  spare_ = radius * s;
  has_spare_ = true;
  return radius * c;
}

}  // namespace internal

ModelConfig TinyConfig() {
  ModelConfig c;
  c.model_type = "qwen3";
  c.vocab_size = 64;
  c.hidden_size = 64;
  c.intermediate_size = 192;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.rms_norm_eps = 1e-6;
  c.rope.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  c.max_position_embeddings = 512;
  c.qk_norm = true;
  c.dtype = kernels::DType::kF32;
  return c;
}

ModelConfig Config100M() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 32000;
  c.hidden_size = 768;
  c.intermediate_size = 2048;
  c.num_hidden_layers = 12;
  c.num_attention_heads = 12;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.rms_norm_eps = 1e-5;
  c.rope.rope_theta = 10000.0;
  c.tie_word_embeddings = true;
  c.max_position_embeddings = 2048;
  c.qk_norm = false;
  c.dtype = kernels::DType::kF32;
  return c;
}

namespace {

ModelConfig Qwen3Base() {
  ModelConfig c;
  c.model_type = "qwen3";
  c.vocab_size = 151936;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-6;
  c.rope.rope_theta = 1000000.0;
  c.max_position_embeddings = 40960;
  c.qk_norm = true;
  c.dtype = kernels::DType::kBF16;
  c.bos_token_id = 151643;
  c.eos_token_ids = {151645};
  return c;
}

}  // namespace

ModelConfig Qwen3_1_7BConfig() {
  ModelConfig c = Qwen3Base();
  c.hidden_size = 2048;
  c.intermediate_size = 6144;
  c.num_hidden_layers = 28;
  c.num_attention_heads = 16;
  c.tie_word_embeddings = true;
  return c;
}

ModelConfig Qwen3_4BConfig() {
  ModelConfig c = Qwen3Base();
  c.hidden_size = 2560;
  c.intermediate_size = 9728;
  c.num_hidden_layers = 36;
  c.num_attention_heads = 32;
  c.tie_word_embeddings = true;
  return c;
}

ModelConfig Qwen3_8BConfig() {
  ModelConfig c = Qwen3Base();
  c.hidden_size = 4096;
  c.intermediate_size = 12288;
  c.num_hidden_layers = 36;
  c.num_attention_heads = 32;
  c.tie_word_embeddings = false;
  return c;
}

ModelConfig TinyMoeConfig() {
  ModelConfig c = TinyConfig();
  c.model_type = "qwen3_moe";
  c.num_hidden_layers = 3;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 32;
  c.norm_topk_prob = true;
  c.decoder_sparse_step = 1;
  c.mlp_only_layers = {1};
  c.router_aux_loss_coef = 0.001;
  return c;
}

ModelConfig Qwen3_30B_A3BConfig() {
  ModelConfig c = Qwen3Base();
  c.model_type = "qwen3_moe";
  c.hidden_size = 2048;
  c.intermediate_size = 6144;
  c.num_hidden_layers = 48;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 4;
  c.tie_word_embeddings = false;
  c.num_experts = 128;
  c.num_experts_per_tok = 8;
  c.moe_intermediate_size = 768;
  c.norm_topk_prob = true;
  c.decoder_sparse_step = 1;
  c.router_aux_loss_coef = 0.001;
  return c;
}

std::vector<std::string> PresetNames() {
  return {"tiny", "100m", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-moe-tiny", "qwen3-30b-a3b"};
}

absl::StatusOr<ModelConfig> PresetConfig(std::string_view name) {
  if (name == "tiny") return TinyConfig();
  if (name == "100m") return Config100M();
  if (name == "qwen3-1.7b") return Qwen3_1_7BConfig();
  if (name == "qwen3-4b") return Qwen3_4BConfig();
  if (name == "qwen3-8b") return Qwen3_8BConfig();
  if (name == "qwen3-moe-tiny") return TinyMoeConfig();
  if (name == "qwen3-30b-a3b") return Qwen3_30B_A3BConfig();
  return absl::NotFoundError(
      absl::StrCat("unknown model preset '", std::string(name),
                   "' (choices: ", absl::StrJoin(PresetNames(), ", "), ")"));
}

namespace {

// Shards as huggingface_hub's split_state_dict_into_shards forms them: lists
// of indices into `sizes`, in the order the files are numbered.
std::vector<std::vector<size_t>> SplitIntoShards(
    const std::vector<uint64_t>& sizes, uint64_t max_shard_bytes) {
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_bytes = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + sizes[i] > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += sizes[i];
  }
  if (!current.empty()) shards.push_back(std::move(current));
  return shards;
}

// "model-NNNNN-of-NNNNN.safetensors", the names SafetensorsShardName makes.
bool IsShardFileName(std::string_view name) {
  constexpr std::string_view kPrefix = "model-";
  constexpr std::string_view kOf = "-of-";
  constexpr std::string_view kSuffix = ".safetensors";
  if (name.size() != kPrefix.size() + 5 + kOf.size() + 5 + kSuffix.size() ||
      name.substr(0, kPrefix.size()) != kPrefix ||
      name.substr(kPrefix.size() + 5, kOf.size()) != kOf ||
      !EndsWith(name, kSuffix)) {
    return false;
  }
  for (size_t start : {kPrefix.size(), kPrefix.size() + 5 + kOf.size()}) {
    for (size_t i = start; i < start + 5; ++i) {
      if (name[i] < '0' || name[i] > '9') return false;
    }
  }
  return true;
}

absl::Status RemoveIfPresent(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  if (ec) {
    return absl::Status(absl::ErrnoToStatusCode(ec.value()),
                        absl::StrCat("cannot remove stale '", path.string(),
                                     "': ", ec.message()));
  }
  return absl::OkStatus();
}

// Removes the shard-named files of `dir` that are not in `keep`.
absl::Status RemoveStaleShards(const std::string& dir,
                               const std::set<std::string>& keep) {
  std::error_code ec;
  std::vector<std::filesystem::path> stale;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (IsShardFileName(name) && keep.count(name) == 0) {
      stale.push_back(entry.path());
    }
  }
  if (ec) {
    return absl::Status(
        absl::ErrnoToStatusCode(ec.value()),
        absl::StrCat("cannot list '", dir, "': ", ec.message()));
  }
  for (const auto& path : stale) {
    LOCKSTEP_RETURN_IF_ERROR(RemoveIfPresent(path));
  }
  return absl::OkStatus();
}

// Writes the tensors `expected[i]` for i in `indices`, in that order, as the
// safetensors file `path`.
absl::Status WriteWeightsFile(
    const std::string& path, const ModelConfig& config, uint64_t seed,
    const std::vector<std::pair<std::string, std::vector<int64_t>>>& expected,
    const std::vector<size_t>& indices) {
  std::vector<TensorSpec> specs;
  specs.reserve(indices.size());
  for (size_t i : indices) {
    specs.push_back({expected[i].first, config.dtype, expected[i].second});
  }
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"generator", "lockstep"},
      {"seed", absl::StrCat(seed)}};
  LOCKSTEP_ASSIGN_OR_RETURN(
      auto writer, SafetensorsWriter::Create(path, std::move(specs), metadata));

  // Every tensor has its own seeded stream, so tensors are generated in
  // parallel (a window of whole tensors at a time, bounded in count and
  // bytes) and appended in file order: the bytes do not depend on the
  // thread count.
  const int64_t elem = kernels::DTypeSize(config.dtype);
  const size_t threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 16);
  constexpr int64_t kWindowBytes = int64_t{4} << 30;
  for (size_t w = 0; w < indices.size();) {
    std::vector<size_t> window;
    int64_t window_bytes = 0;
    for (; w < indices.size() && window.size() < threads; ++w) {
      const int64_t bytes = Numel(expected[indices[w]].second) * elem;
      if (!window.empty() && window_bytes + bytes > kWindowBytes) break;
      window.push_back(indices[w]);
      window_bytes += bytes;
    }
    std::vector<std::vector<uint8_t>> buffers(window.size());
    std::vector<std::thread> workers;
    for (size_t j = 0; j < window.size(); ++j) {
      workers.emplace_back([&, j] {
        const auto& [name, shape] = expected[window[j]];
        const bool is_norm = EndsWith(name, "norm.weight");
        const double mean = is_norm ? 1.0 : 0.0;
        const double stddev = is_norm ? kNormStd : kWeightStd;
        internal::NormalStream normals(TensorSeed(seed, name));
        const int64_t numel = Numel(shape);
        buffers[j].resize(static_cast<size_t>(numel * elem));
        for (int64_t i = 0; i < numel; ++i) {
          const float v = static_cast<float>(mean + stddev * normals.Next());
          kernels::StoreFromF32(buffers[j].data(), config.dtype, i, v);
        }
      });
    }
    for (std::thread& t : workers) t.join();
    for (std::vector<uint8_t>& b : buffers) {
      for (size_t off = 0; off < b.size(); off += kChunkBytes) {
        LOCKSTEP_RETURN_IF_ERROR(
            writer->Append(b.data() + off, std::min(kChunkBytes, b.size() - off)));
      }
      std::vector<uint8_t>().swap(b);
    }
  }
  return writer->Finish();
}

}  // namespace

absl::Status GenerateModel(const ModelConfig& config, uint64_t seed,
                           const std::string& dir,
                           const GenerateModelOptions& options) {
  LOCKSTEP_RETURN_IF_ERROR(config.Validate());
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot create model directory '", dir, "': ", ec.message()));
  }
  const auto expected = ExpectedTensors(config);
  std::vector<uint64_t> sizes;
  uint64_t total_size = 0;
  for (const auto& [name, shape] : expected) {
    uint64_t n = static_cast<uint64_t>(kernels::DTypeSize(config.dtype));
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    sizes.push_back(n);
    total_size += n;
  }
  const std::filesystem::path out(dir);
  std::vector<std::vector<size_t>> shards;
  if (options.max_shard_bytes > 0) {
    shards = SplitIntoShards(sizes, options.max_shard_bytes);
  }
  if (shards.size() <= 1) {
    std::vector<size_t> all(expected.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    LOCKSTEP_RETURN_IF_ERROR(RemoveIfPresent(out / kSafetensorsIndexFileName));
    LOCKSTEP_RETURN_IF_ERROR(WriteWeightsFile(
        (out / kSafetensorsFileName).string(), config, seed, expected, all));
    LOCKSTEP_RETURN_IF_ERROR(RemoveStaleShards(dir, {}));
  } else {
    // A model.safetensors left beside the index would win when loading.
    LOCKSTEP_RETURN_IF_ERROR(RemoveIfPresent(out / kSafetensorsFileName));
    const int n = static_cast<int>(shards.size());
    std::map<std::string, std::string> weight_map;
    std::set<std::string> names;
    for (int k = 0; k < n; ++k) {
      const std::string name = SafetensorsShardName(k + 1, n);
      names.insert(name);
      for (size_t i : shards[k]) weight_map[expected[i].first] = name;
      LOCKSTEP_RETURN_IF_ERROR(WriteWeightsFile((out / name).string(), config,
                                                seed, expected, shards[k]));
    }
    LOCKSTEP_RETURN_IF_ERROR(WriteSafetensorsIndex(
        (out / kSafetensorsIndexFileName).string(), weight_map, total_size));
    LOCKSTEP_RETURN_IF_ERROR(RemoveStaleShards(dir, names));
  }
  return WriteTextAtomically((out / "config.json").string(), config.ToJson());
}

}  // namespace lockstep::common
