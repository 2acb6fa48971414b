// Built-in verifiable tasks for the learner-driven RL loop (`--drive`): a
// character-level vocabulary, seeded prompt generators and dense rewards.
//
// Every task is a string-to-string problem over digits: the prompt is
// <bos> + question + '=', the expected completion is the answer followed by
// <eos>. Rewards are dense (partial credit per character) so that a randomly
// initialised tiny model gets a gradient signal from the first step.
#ifndef LOCKSTEP_LEARNER_SERVICE_TASKS_H_
#define LOCKSTEP_LEARNER_SERVICE_TASKS_H_

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace lockstep::learner {

// Character-level vocabulary of the built-in tasks. Ids 0..2 are the special
// tokens; the printable characters follow (digits are ids 4..13). It needs a
// model vocabulary of at least kVocabUsed ids (the tiny preset has 64).
class CharVocab {
 public:
  static constexpr int32_t kPad = 0;
  static constexpr int32_t kBos = 1;
  static constexpr int32_t kEos = 2;
  // Number of ids the table uses (specials + printable characters).
  static int32_t size();

  // Id of printable character `c`, or -1 when it is not in the table.
  static int32_t Id(char c);
  // Character of `id` ('\0' for the special tokens and out-of-range ids).
  static char Char(int32_t id);

  // Characters of `text` as ids; INVALID_ARGUMENT on a character outside the
  // table.
  static absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text);

  // Human-readable text of `ids`: printable characters as themselves,
  // specials as <pad>/<bos>/<eos>, other ids as <#id>.
  static std::string Decode(const std::vector<int32_t>& ids);
};

// One prompt of a task and what a correct completion is.
struct TaskExample {
  std::vector<int32_t> prompt;  // [P] token ids: <bos> question '='
  std::string question;         // e.g. "4821" or "12+345"
  std::string answer;           // e.g. "1284" or "357" (without <eos>)
};

// A task: a distribution of prompts and a reward of completions.
class Task {
 public:
  virtual ~Task() = default;

  // "reverse" or "add".
  virtual std::string_view name() const = 0;

  // Draws one example; deterministic in the state of `rng`.
  virtual TaskExample Sample(std::mt19937_64& rng) const = 0;

  // Largest completion (answer + <eos>) of any example; a sensible
  // max_tokens for generation.
  virtual int max_completion_tokens() const = 0;

  // Dense reward in [0, 1] of `completion` (generated ids, possibly ending in
  // <eos>, possibly truncated) for `example`:
  //   (sum over answer positions i of credit(i) + stop) / (|answer| + 1)
  // where credit(i) is 1 when completion[i] is answer[i], 0.25 when it is
  // some other digit and 0 otherwise, and stop is 1 when the completion is
  // exactly |answer| characters followed by <eos>, 0.5 when it stops with
  // <eos> at another length, else 0. Every correct completion scores 1;
  // deterministic and independent of the task's parameters beyond `example`.
  float Reward(const TaskExample& example,
               const std::vector<int32_t>& completion) const;
};

// Reverse a string of `min_digits`..`max_digits` digits: "4821=" -> "1284".
class ReverseTask : public Task {
 public:
  ReverseTask(int min_digits, int max_digits);
  std::string_view name() const override { return "reverse"; }
  TaskExample Sample(std::mt19937_64& rng) const override;
  int max_completion_tokens() const override { return max_digits_ + 1; }

 private:
  int min_digits_;
  int max_digits_;
};

// Add two numbers of 1..`max_digits` digits: "12+345=" -> "357".
class AddTask : public Task {
 public:
  explicit AddTask(int max_digits);
  std::string_view name() const override { return "add"; }
  TaskExample Sample(std::mt19937_64& rng) const override;
  int max_completion_tokens() const override { return max_digits_ + 2; }

 private:
  int max_digits_;
};

// The task called `name` with its default parameters (reverse: 3..5 digits;
// add: up to 3 digits), or INVALID_ARGUMENT naming the known tasks.
absl::StatusOr<std::unique_ptr<Task>> MakeTask(std::string_view name);

// Seeded stream of prompts: Next() draws the next example. The state can be
// saved and restored (checkpoints), so a resumed run sees the same prompts.
class PromptGenerator {
 public:
  PromptGenerator(const Task* task, uint64_t seed) : task_(task), rng_(seed) {}

  TaskExample Next() { return task_->Sample(rng_); }

  // The generator's engine state as text / restored from that text
  // (INVALID_ARGUMENT when unparseable).
  std::string SaveState() const;
  absl::Status LoadState(const std::string& state);

 private:
  const Task* task_;
  std::mt19937_64 rng_;
};

}  // namespace lockstep::learner

#endif  // LOCKSTEP_LEARNER_SERVICE_TASKS_H_
