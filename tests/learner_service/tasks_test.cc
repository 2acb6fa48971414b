#include "learner_service/tasks.h"

#include <random>
#include <set>

#include "gtest/gtest.h"

namespace lockstep::learner {
namespace {

std::vector<int32_t> Ids(const std::string& text, bool eos) {
  std::vector<int32_t> ids = *CharVocab::Encode(text);
  if (eos) ids.push_back(CharVocab::kEos);
  return ids;
}

TEST(CharVocabTest, RoundTripsAndFitsTinyVocab) {
  EXPECT_LE(CharVocab::size(), 64);
  EXPECT_EQ(CharVocab::Id('0'), 4);
  EXPECT_EQ(CharVocab::Id('9'), 13);
  auto ids = CharVocab::Encode("12+34=?");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(CharVocab::Decode(*ids), "12+34=?");
  EXPECT_EQ(CharVocab::Decode({CharVocab::kBos, 4, CharVocab::kEos, 63 + 10}),
            "<bos>0<eos><#73>");
  EXPECT_FALSE(CharVocab::Encode("A").ok());
  std::set<int32_t> seen;
  for (int32_t id = 3; id < CharVocab::size(); ++id) {
    EXPECT_TRUE(seen.insert(CharVocab::Char(id)).second);
    EXPECT_EQ(CharVocab::Id(CharVocab::Char(id)), id);
  }
}

TEST(ReverseTaskTest, ExamplesAreWellFormedAndSeeded) {
  ReverseTask task(3, 5);
  std::mt19937_64 a(7), b(7);
  for (int i = 0; i < 100; ++i) {
    TaskExample x = task.Sample(a);
    TaskExample y = task.Sample(b);
    EXPECT_EQ(x.prompt, y.prompt);
    ASSERT_GE(x.question.size(), 3u);
    ASSERT_LE(x.question.size(), 5u);
    EXPECT_EQ(std::string(x.question.rbegin(), x.question.rend()), x.answer);
    EXPECT_EQ(x.prompt.front(), CharVocab::kBos);
    EXPECT_EQ(x.prompt.back(), CharVocab::Id('='));
    EXPECT_EQ(CharVocab::Decode(x.prompt), "<bos>" + x.question + "=");
    EXPECT_LE(static_cast<int>(x.answer.size()) + 1,
              task.max_completion_tokens());
  }
}

TEST(AddTaskTest, AnswersAreSums) {
  AddTask task(3);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) {
    TaskExample x = task.Sample(rng);
    const size_t plus = x.question.find('+');
    ASSERT_NE(plus, std::string::npos);
    const long a = std::stol(x.question.substr(0, plus));
    const long b = std::stol(x.question.substr(plus + 1));
    EXPECT_EQ(std::to_string(a + b), x.answer);
    EXPECT_LE(static_cast<int>(x.answer.size()) + 1,
              task.max_completion_tokens());
  }
}

TEST(RewardTest, DenseCredit) {
  ReverseTask task(3, 3);
  TaskExample ex;
  ex.question = "123";
  ex.answer = "321";
  // Perfect: 3 chars + stop = 4/4.
  EXPECT_FLOAT_EQ(task.Reward(ex, Ids("321", true)), 1.0f);
  // Truncated without <eos>: no stop credit.
  EXPECT_FLOAT_EQ(task.Reward(ex, Ids("321", false)), 0.75f);
  // Wrong digits earn 0.25 each; right length with <eos> earns 1.
  EXPECT_FLOAT_EQ(task.Reward(ex, Ids("999", true)), (0.75f + 1.0f) / 4.0f);
  // Non-digits earn nothing; <eos> at the wrong length earns 0.5.
  EXPECT_FLOAT_EQ(task.Reward(ex, Ids("ab", true)), 0.5f / 4.0f);
  // Nothing at all.
  EXPECT_FLOAT_EQ(task.Reward(ex, {}), 0.0f);
  // Extra characters after a correct answer lose the stop credit only.
  EXPECT_FLOAT_EQ(task.Reward(ex, Ids("3211", true)), 3.5f / 4.0f);
  // Tokens after <eos> are ignored.
  std::vector<int32_t> after = Ids("321", true);
  after.push_back(CharVocab::Id('5'));
  EXPECT_FLOAT_EQ(task.Reward(ex, after), 1.0f);
}

TEST(MakeTaskTest, KnownAndUnknown) {
  EXPECT_EQ((*MakeTask("reverse"))->name(), "reverse");
  EXPECT_EQ((*MakeTask("add"))->name(), "add");
  auto bad = MakeTask("sort");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PromptGeneratorTest, StateRoundTrip) {
  ReverseTask task(3, 5);
  PromptGenerator g(&task, 11);
  g.Next();
  g.Next();
  const std::string state = g.SaveState();
  std::vector<std::vector<int32_t>> first;
  for (int i = 0; i < 5; ++i) first.push_back(g.Next().prompt);
  PromptGenerator h(&task, 999);
  ASSERT_TRUE(h.LoadState(state).ok());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(h.Next().prompt, first[i]);
  EXPECT_FALSE(h.LoadState("not a state").ok());
}

}  // namespace
}  // namespace lockstep::learner
