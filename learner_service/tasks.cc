#include "learner_service/tasks.h"

#include <algorithm>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lockstep::learner {
namespace {

// Printable characters after the three specials; digits first so that they
// are ids 4..13 whatever gets appended later.
constexpr std::string_view kChars =
    " 0123456789+-=?abcdefghijklmnopqrstuvwxyz.,:;!()*/<>'\"#_|[]{}";

// Uniform integer in [lo, hi] from the raw engine output. Not
// std::uniform_int_distribution: its algorithm is implementation-defined and
// prompts must be the same on every standard library.
int UniformInt(std::mt19937_64& rng, int lo, int hi) {
  const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
  return lo + static_cast<int>(rng() % span);
}

std::string RandomDigits(std::mt19937_64& rng, int n, bool leading_zero) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    const int lo = (i == 0 && !leading_zero && n > 1) ? 1 : 0;
    s.push_back(static_cast<char>('0' + UniformInt(rng, lo, 9)));
  }
  return s;
}

TaskExample MakeExample(std::string question, std::string answer) {
  TaskExample ex;
  ex.prompt.push_back(CharVocab::kBos);
  for (char c : question) ex.prompt.push_back(CharVocab::Id(c));
  ex.prompt.push_back(CharVocab::Id('='));
  ex.question = std::move(question);
  ex.answer = std::move(answer);
  return ex;
}

}  // namespace

int32_t CharVocab::size() { return 3 + static_cast<int32_t>(kChars.size()); }

int32_t CharVocab::Id(char c) {
  const size_t pos = kChars.find(c);
  return pos == std::string_view::npos ? -1 : static_cast<int32_t>(3 + pos);
}

char CharVocab::Char(int32_t id) {
  if (id < 3 || id >= size()) return '\0';
  return kChars[id - 3];
}

absl::StatusOr<std::vector<int32_t>> CharVocab::Encode(std::string_view text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char c : text) {
    const int32_t id = Id(c);
    if (id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("character '", std::string(1, c),
                       "' is not in the task vocabulary"));
    }
    ids.push_back(id);
  }
  return ids;
}

std::string CharVocab::Decode(const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) {
    if (id == kPad) {
      out += "<pad>";
    } else if (id == kBos) {
      out += "<bos>";
    } else if (id == kEos) {
      out += "<eos>";
    } else if (char c = Char(id); c != '\0') {
      out.push_back(c);
    } else {
      absl::StrAppend(&out, "<#", id, ">");
    }
  }
  return out;
}

float Task::Reward(const TaskExample& example,
                   const std::vector<int32_t>& completion) const {
  const size_t n = example.answer.size();
  double credit = 0.0;
  size_t len = 0;  // characters before the first <eos>
  bool stopped = false;
  for (int32_t id : completion) {
    if (id == CharVocab::kEos) {
      stopped = true;
      break;
    }
    if (len < n) {
      const char c = CharVocab::Char(id);
      if (c == example.answer[len]) {
        credit += 1.0;
      } else if (c >= '0' && c <= '9') {
        credit += 0.25;
      }
    }
    ++len;
  }
  if (stopped) credit += (len == n) ? 1.0 : 0.5;
  return static_cast<float>(credit / static_cast<double>(n + 1));
}

ReverseTask::ReverseTask(int min_digits, int max_digits)
    : min_digits_(std::max(1, min_digits)),
      max_digits_(std::max(std::max(1, min_digits), max_digits)) {}

TaskExample ReverseTask::Sample(std::mt19937_64& rng) const {
  const int n = UniformInt(rng, min_digits_, max_digits_);
  std::string q = RandomDigits(rng, n, /*leading_zero=*/true);
  std::string a(q.rbegin(), q.rend());
  return MakeExample(std::move(q), std::move(a));
}

AddTask::AddTask(int max_digits) : max_digits_(std::max(1, max_digits)) {}

TaskExample AddTask::Sample(std::mt19937_64& rng) const {
  const std::string x = RandomDigits(rng, UniformInt(rng, 1, max_digits_),
                                     /*leading_zero=*/false);
  const std::string y = RandomDigits(rng, UniformInt(rng, 1, max_digits_),
                                     /*leading_zero=*/false);
  const int64_t sum = std::stoll(x) + std::stoll(y);
  return MakeExample(absl::StrCat(x, "+", y), absl::StrCat(sum));
}

absl::StatusOr<std::unique_ptr<Task>> MakeTask(std::string_view name) {
  if (name == "reverse") return std::make_unique<ReverseTask>(3, 5);
  if (name == "add") return std::make_unique<AddTask>(3);
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown task '", std::string(name), "' (known tasks: reverse, add)"));
}

std::string PromptGenerator::SaveState() const {
  std::ostringstream os;
  os << rng_;
  return os.str();
}

absl::Status PromptGenerator::LoadState(const std::string& state) {
  std::istringstream is(state);
  std::mt19937_64 rng;
  is >> rng;
  if (is.fail()) {
    return absl::InvalidArgumentError("unparseable prompt generator state");
  }
  rng_ = rng;
  return absl::OkStatus();
}

}  // namespace lockstep::learner
