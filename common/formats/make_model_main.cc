// lockstep_make_model: writes a seeded random checkpoint (config.json +
// model.safetensors, or + model.safetensors.index.json and its shards) for a
// preset or a given config.json.
//
//   lockstep_make_model --preset tiny --seed 1 --out DIR [--dtype f32|bf16]
//   lockstep_make_model --config config.json --seed 1 --out DIR
//   lockstep_make_model --preset qwen3-8b --max_shard_bytes=5000000000
//                       --out DIR

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "absl/strings/str_join.h"
#include "common/formats/model_config.h"
#include "common/formats/model_generator.h"
#include "common/formats/safetensors.h"

namespace {

void PrintUsage(std::FILE* f) {
  std::fprintf(
      f,
      "Usage: lockstep_make_model (--preset NAME | --config FILE) --out DIR\n"
      "                           [--seed N] [--dtype f32|bf16]\n"
      "                           [--max_shard_bytes N]\n"
      "Writes DIR/config.json and DIR/model.safetensors with seeded random\n"
      "weights (bitwise reproducible for a given seed), or, with\n"
      "--max_shard_bytes, a sharded checkpoint in Hugging Face layout.\n"
      "  --preset NAME   one of: %s\n"
      "  --config FILE   a Hugging Face config.json to use instead of a "
      "preset\n"
      "  --out DIR       output directory (created if missing)\n"
      "  --seed N        unsigned 64-bit seed (default 0)\n"
      "  --dtype D       f32 or bf16: overrides the config's torch_dtype\n"
      "  --max_shard_bytes N\n"
      "                  split the weights into shards of at most N bytes of\n"
      "                  tensor data (a larger tensor gets its own shard),\n"
      "                  named model-00001-of-0000K.safetensors ... and\n"
      "                  listed in model.safetensors.index.json, as\n"
      "                  transformers' save_pretrained(max_shard_size=N)\n"
      "                  does; one model.safetensors if all fit in one\n"
      "                  (default 0: one file)\n"
      "  --help          this text\n",
      absl::StrJoin(lockstep::common::PresetNames(), ", ").c_str());
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "lockstep_make_model: %s\n", message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset, config_path, out, dtype;
  uint64_t seed = 0;
  lockstep::common::GenerateModelOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      PrintUsage(stdout);
      return 0;
    }
    std::string_view name = arg;
    std::string value;
    if (const size_t eq = arg.find('=');
        arg.rfind("--", 0) == 0 && eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    } else if (arg == "--preset" || arg == "--config" || arg == "--out" ||
               arg == "--seed" || arg == "--dtype" ||
               arg == "--max_shard_bytes") {
      if (i + 1 >= argc) {
        PrintUsage(stderr);
        return Fail(std::string(arg) + " needs a value");
      }
      value = argv[++i];
    } else {
      PrintUsage(stderr);
      return Fail("unknown argument '" + std::string(arg) + "'");
    }
    if (name == "--preset") {
      preset = value;
    } else if (name == "--config") {
      config_path = value;
    } else if (name == "--out") {
      out = value;
    } else if (name == "--dtype") {
      dtype = value;
    } else if (name == "--seed") {
      char* end = nullptr;
      errno = 0;
      const unsigned long long v = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || value[0] == '-' || *end != '\0' || errno != 0) {
        return Fail("--seed wants an unsigned integer, got '" + value + "'");
      }
      seed = v;
    } else if (name == "--max_shard_bytes") {
      char* end = nullptr;
      errno = 0;
      const unsigned long long v = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || value[0] == '-' || *end != '\0' || errno != 0) {
        return Fail("--max_shard_bytes wants an unsigned integer, got '" +
                    value + "'");
      }
      options.max_shard_bytes = v;
    } else {
      PrintUsage(stderr);
      return Fail("unknown argument '" + std::string(name) + "'");
    }
  }
  if (preset.empty() == config_path.empty()) {
    PrintUsage(stderr);
    return Fail("give exactly one of --preset and --config");
  }
  if (out.empty()) {
    PrintUsage(stderr);
    return Fail("--out is required");
  }

  absl::StatusOr<lockstep::common::ModelConfig> config =
      preset.empty() ? lockstep::common::ModelConfig::FromFile(config_path)
                     : lockstep::common::PresetConfig(preset);
  if (!config.ok()) return Fail(config.status().ToString());
  if (dtype == "f32") {
    config->dtype = lockstep::kernels::DType::kF32;
  } else if (dtype == "bf16") {
    config->dtype = lockstep::kernels::DType::kBF16;
  } else if (!dtype.empty()) {
    return Fail("--dtype wants f32 or bf16, got '" + dtype + "'");
  }

  const absl::Status status =
      lockstep::common::GenerateModel(*config, seed, out, options);
  if (!status.ok()) return Fail(status.ToString());
  const int64_t params = config->NumParameters();
  std::string weights = lockstep::common::kSafetensorsFileName;
  if (std::filesystem::exists(std::filesystem::path(out) /
                              lockstep::common::kSafetensorsIndexFileName)) {
    weights = std::string(lockstep::common::kSafetensorsIndexFileName) +
              " (+ shards)";
  }
  std::printf(
      "wrote %s/config.json and %s/%s: %s, %lld "
      "parameters (%.1f MB), dtype %s, seed %llu\n",
      out.c_str(), out.c_str(), weights.c_str(), config->model_type.c_str(),
      static_cast<long long>(params),
      static_cast<double>(params) *
          static_cast<double>(lockstep::kernels::DTypeSize(config->dtype)) /
          1e6,
      std::string(lockstep::kernels::DTypeName(config->dtype)).c_str(),
      static_cast<unsigned long long>(seed));
  return 0;
}
