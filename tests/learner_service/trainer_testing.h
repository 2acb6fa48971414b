// What the trainer tests share: a temporary directory, the tiny model,
// random trajectories scored by the inference model, and comparisons.
#ifndef LOCKSTEP_TESTS_LEARNER_SERVICE_TRAINER_TESTING_H_
#define LOCKSTEP_TESTS_LEARNER_SERVICE_TRAINER_TESTING_H_

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/formats/model_generator.h"
#include "common/model/model.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "learner_service/trainer.h"

namespace lockstep::learner::testing {

namespace fs = std::filesystem;
using common::KernelMode;

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("lockstep_trainer_test_" + std::to_string(::getpid()) + "_" +
             std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string Sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

inline std::string MakeTinyModel(const TempDir& dir, kernels::DType dtype) {
  common::ModelConfig config = common::TinyConfig();
  config.dtype = dtype;
  const std::string out = dir.Sub(dtype == kernels::DType::kF32 ? "tiny" : "tiny_bf16");
  absl::Status s = common::GenerateModel(config, /*seed=*/1, out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

inline bool SameTensors(const common::TensorMap& a, const common::TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || it->second.dtype != t.dtype ||
        it->second.shape != t.shape || it->second.data != t.data) {
      return false;
    }
  }
  return true;
}

// Random trajectories scored by the inference model (what a rollout
// reports), `groups` groups of `group_size`.
inline std::vector<Trajectory> MakeBatch(const common::Model& model, uint64_t seed,
                                  int groups, int group_size, int64_t version) {
  std::mt19937_64 rng(seed);
  const int vocab = static_cast<int>(model.config().vocab_size);
  std::vector<Trajectory> batch;
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> prefix;
  for (int g = 0; g < groups; ++g) {
    std::vector<int32_t> prompt(3 + rng() % 5);
    for (int32_t& id : prompt) id = static_cast<int32_t>(rng() % vocab);
    for (int i = 0; i < group_size; ++i) {
      Trajectory t;
      t.prompt_tokens = prompt;
      t.completion_tokens.resize(1 + rng() % 9);
      for (int32_t& id : t.completion_tokens) {
        id = static_cast<int32_t>(rng() % vocab);
      }
      t.reward = static_cast<float>(rng() % 1000) / 1000.0f;
      t.group_id = "g" + std::to_string(g);
      t.weight_version = version;
      std::vector<int32_t> s = prompt;
      s.insert(s.end(), t.completion_tokens.begin(), t.completion_tokens.end());
      seqs.push_back(s);
      prefix.push_back(static_cast<int64_t>(prompt.size()));
      batch.push_back(std::move(t));
    }
  }
  auto lps = model.Score(seqs, prefix);
  EXPECT_TRUE(lps.ok()) << lps.status();
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i].rollout_logprobs = (*lps)[i];
  }
  return batch;
}

inline std::shared_ptr<const common::Model> ModelOf(const Trainer& trainer,
                                             KernelMode mode) {
  common::ModelOptions o;
  o.mode = mode;
  auto m = common::Model::Create(trainer.config(), *trainer.compute_weights(), o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

}  // namespace lockstep::learner::testing

#endif  // LOCKSTEP_TESTS_LEARNER_SERVICE_TRAINER_TESTING_H_
