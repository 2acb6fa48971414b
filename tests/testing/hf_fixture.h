// The Hugging Face parity fixtures of tests/fixtures/hf/ (written by
// tests/fixtures/hf/generate.py with transformers 5): locating them and
// reading their expected.json. Header-only, so that the unit and the
// integration test binaries share it without another library; it needs
// nlohmann_json, which lockstep::common brings.
//
// A fixture directory holds what `save_pretrained` wrote (config.json in the
// transformers-5 form, model.safetensors, generation_config.json) and
// expected.json (schema in generate.py's docstring).
#ifndef LOCKSTEP_TESTS_TESTING_HF_FIXTURE_H_
#define LOCKSTEP_TESTS_TESTING_HF_FIXTURE_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/testing/service_process.h"

namespace lockstep::testing {

// One greedy path of transformers' model.generate.
struct HfGreedyPath {
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;   // the 24 generated tokens
  std::vector<double> logprobs;  // [tokens.size()] transformers' log p
                                 // (token_k | prompt, tokens[:k])
};

// expected.json of one fixture.
struct HfFixture {
  std::string name;        // directory name, e.g. "qwen2_bias_f32"
  std::string dir;         // absolute path of the fixture directory
  std::string model_type;  // config.json's model_type
  std::string dtype;       // "float32" or "bfloat16"
  std::string transformers_version;
  std::vector<std::vector<int32_t>> sequences;
  // Per sequence, [len - 1]: log p(seq[i+1] | seq[0..i]) from transformers in
  // the fixture dtype, and from the same weights in float64.
  std::vector<std::vector<double>> logprobs;
  std::vector<std::vector<double>> logprobs_f64;
  double tf_err_max = 0;   // max |logprobs - logprobs_f64|
  double tf_err_mean = 0;  // mean of the same
  std::vector<HfGreedyPath> greedy;
  double greedy_min_margin = 0;  // smallest float64 top1 - top2 logit gap
                                 // along the greedy paths

  bool is_f32() const { return dtype == "float32"; }
};

// The fixture root: $LOCKSTEP_HF_FIXTURE_DIR when set (to run the tests on
// another generated set), else the compile definition
// LOCKSTEP_HF_FIXTURE_DIR, else $LOCKSTEP_SOURCE_DIR/tests/fixtures/hf.
inline std::string HfFixtureDir() {
  if (const char* env = std::getenv("LOCKSTEP_HF_FIXTURE_DIR");
      env != nullptr && env[0] != '\0') {
    return env;
  }
#ifdef LOCKSTEP_HF_FIXTURE_DIR
  return LOCKSTEP_HF_FIXTURE_DIR;
#else
  return SourceDir() + "/tests/fixtures/hf";
#endif
}

// True when $LOCKSTEP_HF_FIXTURE_DIR names another fixture set (e.g. the
// real-width fixtures of `generate.py --real-width`, which are not committed):
// then whatever fixture directories it holds are the set.
inline bool HfFixtureDirOverridden() {
  const char* env = std::getenv("LOCKSTEP_HF_FIXTURE_DIR");
  return env != nullptr && env[0] != '\0';
}

// The device the parity checks run on: $LOCKSTEP_HF_DEVICE, "cpu" (the
// default, also when unset or empty) or "cuda"; any other value is returned
// as given, for the caller to refuse.
inline std::string HfDeviceName() {
  const char* env = std::getenv("LOCKSTEP_HF_DEVICE");
  if (env == nullptr || env[0] == '\0') return "cpu";
  return env;
}

// Names of the fixture directories (those holding an expected.json), sorted.
inline std::vector<std::string> HfFixtureNames() {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(HfFixtureDir(), ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "expected.json")) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The whole text of `path`; NOT_FOUND when it cannot be opened.
inline absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Writes `text` to `path` (replacing it).
inline absl::Status WriteTextFile(const std::string& path,
                                  const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// Parses `path` as JSON (INVALID_ARGUMENT when it is not).
inline absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return text.status();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not JSON"));
  }
  return j;
}

// Reads <HfFixtureDir()>/<name>/expected.json. INVALID_ARGUMENT naming the
// problem when a key is missing or of the wrong type, or when the lengths do
// not line up (logprobs of len - 1 per sequence, one greedy logprob per
// greedy token).
inline absl::StatusOr<HfFixture> LoadHfFixture(const std::string& name) {
  HfFixture f;
  f.name = name;
  f.dir = HfFixtureDir() + "/" + name;
  const std::string path = f.dir + "/expected.json";
  absl::StatusOr<nlohmann::json> parsed = ReadJsonFile(path);
  if (!parsed.ok()) return parsed.status();
  const nlohmann::json& j = *parsed;
  try {
    f.model_type = j.at("model_type").get<std::string>();
    f.dtype = j.at("dtype").get<std::string>();
    f.transformers_version = j.at("transformers_version").get<std::string>();
    f.sequences = j.at("sequences").get<std::vector<std::vector<int32_t>>>();
    f.logprobs = j.at("logprobs").get<std::vector<std::vector<double>>>();
    f.logprobs_f64 =
        j.at("logprobs_f64").get<std::vector<std::vector<double>>>();
    f.tf_err_max = j.at("tf_err_max").get<double>();
    f.tf_err_mean = j.at("tf_err_mean").get<double>();
    f.greedy_min_margin = j.at("greedy_min_margin").get<double>();
    const auto greedy_logprobs =
        j.at("greedy_logprobs").get<std::vector<std::vector<double>>>();
    const nlohmann::json& greedy = j.at("greedy");
    if (greedy_logprobs.size() != greedy.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": greedy and greedy_logprobs differ in length"));
    }
    for (size_t i = 0; i < greedy.size(); ++i) {
      HfGreedyPath p;
      p.prompt = greedy[i].at("prompt").get<std::vector<int32_t>>();
      p.tokens = greedy[i].at("tokens").get<std::vector<int32_t>>();
      p.logprobs = greedy_logprobs[i];
      if (p.prompt.empty() || p.logprobs.size() != p.tokens.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": greedy path ", i, " has an empty prompt or ",
            p.logprobs.size(), " logprobs for ", p.tokens.size(), " tokens"));
      }
      f.greedy.push_back(std::move(p));
    }
    if (j.at("name").get<std::string>() != name) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": \"name\" is ", j.at("name").dump(), ", not \"", name, "\""));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  if (f.logprobs.size() != f.sequences.size() ||
      f.logprobs_f64.size() != f.sequences.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": one logprob list per sequence expected"));
  }
  for (size_t s = 0; s < f.sequences.size(); ++s) {
    if (f.sequences[s].size() < 2 ||
        f.logprobs[s].size() + 1 != f.sequences[s].size() ||
        f.logprobs_f64[s].size() + 1 != f.sequences[s].size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": sequence ", s, " needs len - 1 logprobs in both lists"));
    }
  }
  return f;
}

}  // namespace lockstep::testing

#endif  // LOCKSTEP_TESTS_TESTING_HF_FIXTURE_H_
