// Issue 17 §3–§4 in the trainer (tiny model, CPU): per-token loss masks and
// client advantages, the loss aggregation modes, dual-clip PPO, KL
// estimators against a frozen reference model (in the loss or in the
// reward), learning-rate schedules with warmup, weight-decay exclusions, and
// INVALID_ARGUMENT for every bad option or field.
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "learner_service/grpo.h"
#include "learner_service/trainer.h"
#include "tests/learner_service/trainer_testing.h"

namespace lockstep::learner {
namespace {

using testing::MakeBatch;
using testing::MakeTinyModel;
using testing::ModelOf;
using testing::SameTensors;
using testing::TempDir;

class TrainerLossTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    model_dir_ = new std::string(MakeTinyModel(*dir_, kernels::DType::kF32));
    common::ModelConfig other = common::TinyConfig();
    other.dtype = kernels::DType::kF32;
    other_dir_ = new std::string(dir_->Sub("other"));
    ASSERT_TRUE(common::GenerateModel(other, /*seed=*/2, *other_dir_).ok());
    common::ModelConfig shallow = other;
    shallow.num_hidden_layers = 1;
    shallow_dir_ = new std::string(dir_->Sub("shallow"));
    ASSERT_TRUE(common::GenerateModel(shallow, 3, *shallow_dir_).ok());
  }
  static void TearDownTestSuite() {
    delete model_dir_;
    delete other_dir_;
    delete shallow_dir_;
    delete dir_;
  }

  static std::unique_ptr<Trainer> Make(TrainerOptions o = {}) {
    if (o.model_dir.empty()) o.model_dir = *model_dir_;
    o.max_grad_norm = 0;  // compare raw updates
    auto t = Trainer::Create(o);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? std::move(*t) : nullptr;
  }

  // One step of a fresh trainer on `batch`; its master weights after.
  static common::TensorMap After(const TrainerOptions& o, const std::vector<Trajectory>& batch,
                                 StepResult* result = nullptr) {
    auto t = Make(o);
    auto r = t->Step(batch);
    EXPECT_TRUE(r.ok()) << r.status();
    if (result != nullptr && r.ok()) *result = *r;
    return t->MasterWeights();
  }

  static std::vector<Trajectory> Batch(uint64_t seed) {
    auto t = Make();
    return MakeBatch(*ModelOf(*t, common::KernelMode::kInvariant), seed, 3, 4, 0);
  }

  static TempDir* dir_;
  static std::string* model_dir_;
  static std::string* other_dir_;
  static std::string* shallow_dir_;
};
TempDir* TrainerLossTest::dir_ = nullptr;
std::string* TrainerLossTest::model_dir_ = nullptr;
std::string* TrainerLossTest::other_dir_ = nullptr;
std::string* TrainerLossTest::shallow_dir_ = nullptr;

// The first trajectory with at least two completion tokens.
size_t Long(const std::vector<Trajectory>& batch) {
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i].completion_tokens.size() >= 2) return i;
  }
  ADD_FAILURE() << "no trajectory with two tokens";
  return 0;
}

// The group-relative advantage of every trajectory (what the trainer
// computes from the rewards).
std::vector<float> GroupAdvantages(const std::vector<Trajectory>& batch) {
  std::vector<float> rewards;
  std::vector<std::string> ids;
  for (const Trajectory& t : batch) {
    rewards.push_back(t.reward);
    ids.push_back(t.group_id);
  }
  return GroupRelativeAdvantages(rewards, GroupIndices(ids), {});
}

TEST_F(TrainerLossTest, MaskedTokensDoNotTrain) {
  std::vector<Trajectory> batch = Batch(31);
  const size_t i = Long(batch);
  batch[i].loss_mask.assign(batch[i].completion_tokens.size(), 1);
  batch[i].loss_mask.back() = 0;
  StepResult r;
  const common::TensorMap base = After({}, batch, &r);
  int64_t all = 0;
  for (const Trajectory& t : batch) all += t.completion_tokens.size();
  EXPECT_EQ(r.num_tokens, all - 1);
  // A masked token's behaviour logprob (the PPO ratio) changes nothing...
  std::vector<Trajectory> masked = batch;
  masked[i].rollout_logprobs.back() -= 1.0f;
  EXPECT_TRUE(SameTensors(After({}, masked), base));
  // ...an unmasked one's does.
  std::vector<Trajectory> unmasked = batch;
  unmasked[i].rollout_logprobs.front() -= 1.0f;
  EXPECT_FALSE(SameTensors(After({}, unmasked), base));
}

TEST_F(TrainerLossTest, ClientAdvantagesReplaceTheGroupAdvantages) {
  std::vector<Trajectory> batch = Batch(32);
  const common::TensorMap base = After({}, batch);
  const std::vector<float> adv = GroupAdvantages(batch);
  std::vector<Trajectory> given = batch;
  for (size_t i = 0; i < given.size(); ++i) {
    given[i].advantages.assign(given[i].completion_tokens.size(), adv[i]);
  }
  EXPECT_TRUE(SameTensors(After({}, given), base));
  for (Trajectory& t : given) t.advantages.front() *= 2.0f;
  EXPECT_FALSE(SameTensors(After({}, given), base));
}

TEST_F(TrainerLossTest, AggregationModes) {
  // Equal lengths: token-mean == seq-mean-token-mean (same weights, bit for
  // bit); seq-mean-token-sum scales the loss by the length.
  auto trainer = Make();
  auto model = ModelOf(*trainer, common::KernelMode::kInvariant);
  std::vector<Trajectory> batch = MakeBatch(*model, 33, 2, 4, 0);
  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> prefix;
  for (Trajectory& t : batch) {
    t.completion_tokens.resize(1);
    t.completion_tokens.push_back(5);
    t.completion_tokens.push_back(9);
    std::vector<int32_t> s = t.prompt_tokens;
    s.insert(s.end(), t.completion_tokens.begin(), t.completion_tokens.end());
    seqs.push_back(s);
    prefix.push_back(static_cast<int64_t>(t.prompt_tokens.size()));
  }
  auto lps = model->Score(seqs, prefix);
  ASSERT_TRUE(lps.ok());
  for (size_t i = 0; i < batch.size(); ++i) batch[i].rollout_logprobs = (*lps)[i];
  TrainerOptions tm, smtm, smts;
  smtm.loss_aggregation = LossAggregation::kSequenceMeanTokenMean;
  smts.loss_aggregation = LossAggregation::kSequenceMeanTokenSum;
  StepResult a, b, c;
  const auto wa = After(tm, batch, &a);
  EXPECT_TRUE(SameTensors(After(smtm, batch, &b), wa));
  EXPECT_FALSE(SameTensors(After(smts, batch, &c), wa));
  EXPECT_DOUBLE_EQ(a.policy_loss, b.policy_loss);
  EXPECT_NEAR(c.policy_loss, 3.0 * a.policy_loss, 1e-6);
  // Unequal lengths: the sequence mean weighs short sequences more.
  const std::vector<Trajectory> ragged = Batch(34);
  StepResult d, e;
  After(tm, ragged, &d);
  After(smtm, ragged, &e);
  EXPECT_NE(d.policy_loss, e.policy_loss);
}

TEST_F(TrainerLossTest, DualClipBoundsTheLossOfNegativeAdvantages) {
  auto trainer = Make();
  std::vector<Trajectory> batch = Batch(35);
  // Stale behaviour logprobs: every ratio is 5.
  for (Trajectory& t : batch) {
    for (float& lp : t.rollout_logprobs) lp -= std::log(5.0f);
  }
  const std::vector<float> adv = GroupAdvantages(batch);
  auto expected = [&](double c) {
    double sum = 0;
    int64_t n = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      for (size_t k = 0; k < batch[i].completion_tokens.size(); ++k, ++n) {
        const double a = adv[i];
        double pg = std::max(-a * 5.0, -a * 1.2);
        if (c > 0 && a < 0) pg = std::min(pg, -a * c);
        sum += pg;
      }
    }
    return sum / static_cast<double>(n);
  };
  TrainerOptions plain, dual;
  dual.clip_ratio_c = 3.0;
  StepResult p, d;
  After(plain, batch, &p);
  After(dual, batch, &d);
  EXPECT_NEAR(p.policy_loss, expected(0), 1e-4 * std::abs(expected(0)) + 1e-6);
  EXPECT_NEAR(d.policy_loss, expected(3.0), 1e-4 * std::abs(expected(3.0)) + 1e-6);
  EXPECT_LT(d.policy_loss, p.policy_loss);
  EXPECT_GT(d.clip_fraction, 0.0);
}

TEST_F(TrainerLossTest, KlToAFrozenReferenceInTheLossOrInTheReward) {
  const std::vector<Trajectory> batch = Batch(36);
  TrainerOptions o;
  o.kl_coef = 0.1;
  o.reference_model_dir = *other_dir_;
  std::vector<double> kls;
  for (KlEstimator e : {KlEstimator::kK1, KlEstimator::kK2, KlEstimator::kK3}) {
    o.kl_estimator = e;
    StepResult r;
    After(o, batch, &r);
    EXPECT_NE(r.kl, 0.0);
    EXPECT_NEAR(r.loss, r.policy_loss + 0.1 * r.kl, 1e-9);
    kls.push_back(r.kl);
  }
  EXPECT_GT(kls[1], 0.0);
  EXPECT_GT(kls[2], 0.0);
  EXPECT_NE(kls[0], kls[1]);
  EXPECT_NE(kls[1], kls[2]);
  // In the reward: the loss has no KL term, the update differs.
  TrainerOptions in_reward = o;
  in_reward.kl_in_reward = true;
  StepResult r;
  const auto w_reward = After(in_reward, batch, &r);
  EXPECT_GT(r.kl, 0.0);
  EXPECT_EQ(r.loss, r.policy_loss);
  EXPECT_FALSE(SameTensors(w_reward, After(o, batch)));
  // A reference of another model is refused.
  TrainerOptions bad = o;
  bad.model_dir = *model_dir_;
  bad.reference_model_dir = *shallow_dir_;
  EXPECT_TRUE(absl::IsInvalidArgument(Trainer::Create(bad).status()));
}

TEST_F(TrainerLossTest, EntropyBonus) {
  const std::vector<Trajectory> batch = Batch(39);
  StepResult plain, bonus;
  const auto w0 = After({}, batch, &plain);
  TrainerOptions o;
  o.entropy_coef = 0.01;
  const auto w1 = After(o, batch, &bonus);
  EXPECT_EQ(plain.entropy, 0.0);
  // Near-uniform logits of a random tiny model over 64 ids: entropy near ln 64.
  EXPECT_GT(bonus.entropy, 0.5 * std::log(64.0));
  EXPECT_LE(bonus.entropy, std::log(64.0) + 1e-6);
  EXPECT_NEAR(bonus.loss, bonus.policy_loss - 0.01 * bonus.entropy, 1e-9);
  EXPECT_FALSE(SameTensors(w0, w1));
  TrainerOptions bad;
  bad.model_dir = *model_dir_;
  bad.entropy_coef = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(Trainer::Create(bad).status()));
}

// The load-balancing loss of a mixture-of-experts model: E * sum_e f_e P_e
// is >= 1 (equality for perfectly balanced routing), enters the loss with
// its coefficient and moves the routers; the experts the batch chose train
// either way. Refused on a dense model and with checkpoint_layers.
TEST_F(TrainerLossTest, RouterLoadBalancingLossOnAMixtureOfExperts) {
  common::ModelConfig moe = common::TinyMoeConfig();
  const std::string moe_dir = dir_->Sub("moe");
  ASSERT_TRUE(common::GenerateModel(moe, 4, moe_dir).ok());
  TrainerOptions o;
  o.model_dir = moe_dir;
  auto t = Make(o);
  ASSERT_NE(t, nullptr);
  const std::vector<Trajectory> batch =
      MakeBatch(*ModelOf(*t, common::KernelMode::kInvariant), 41, 3, 4, 0);
  StepResult plain, balanced;
  const auto w0 = After(o, batch, &plain);
  o.router_aux_loss_coef = 0.5;
  const auto w1 = After(o, batch, &balanced);
  EXPECT_EQ(plain.router_aux_loss, 0.0);
  EXPECT_GE(balanced.router_aux_loss, 1.0 - 1e-6);
  EXPECT_LE(balanced.router_aux_loss, static_cast<double>(moe.num_experts));
  EXPECT_NEAR(balanced.loss, balanced.policy_loss + 0.5 * balanced.router_aux_loss, 1e-9);
  // The policy loss is the same forward's: only the routers' update differs
  // in direction, so the router weights change and differ between the runs.
  EXPECT_EQ(plain.policy_loss, balanced.policy_loss);
  const std::string router = "model.layers.0.mlp.gate.weight";
  EXPECT_FALSE(SameTensors({{router, w0.at(router)}}, {{router, w1.at(router)}}));
  TrainerOptions bad = o;
  bad.checkpoint_layers = true;
  EXPECT_TRUE(absl::IsInvalidArgument(Trainer::Create(bad).status()));
  bad = o;
  bad.router_aux_loss_coef = -1;
  EXPECT_TRUE(absl::IsInvalidArgument(Trainer::Create(bad).status()));
  bad.model_dir = *model_dir_;  // dense
  bad.router_aux_loss_coef = 0.1;
  EXPECT_TRUE(absl::IsInvalidArgument(Trainer::Create(bad).status()));
}

TEST_F(TrainerLossTest, WarmupThenCosineSchedule) {
  TrainerOptions o;
  o.learning_rate = 1e-2;
  o.lr_schedule = LrSchedule::kCosine;
  o.lr_warmup_steps = 2;
  o.lr_total_steps = 6;
  o.min_lr_ratio = 0.1;
  auto trainer = Make(o);
  const double pi = 3.14159265358979323846;
  const std::vector<double> want = {
      0.5e-2, 1e-2, 1e-2, 1e-2 * (0.1 + 0.9 * 0.5 * (1 + std::cos(pi / 4))),
      1e-2 * (0.1 + 0.9 * 0.5 * (1 + std::cos(pi / 2))),
      1e-2 * (0.1 + 0.9 * 0.5 * (1 + std::cos(3 * pi / 4))), 1e-3, 1e-3};
  for (size_t s = 0; s < want.size(); ++s) {
    auto batch = MakeBatch(*ModelOf(*trainer, common::KernelMode::kInvariant), 40 + s, 1, 2,
                           trainer->version());
    auto r = trainer->Step(batch);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NEAR(r->learning_rate, want[s], 1e-12) << "step " << s;
  }
}

TEST_F(TrainerLossTest, WeightDecaySkipsNormsAndBiasesUnlessAsked) {
  // Equal rewards: zero advantages, zero gradients; only the decay moves.
  std::vector<Trajectory> batch = Batch(37);
  for (Trajectory& t : batch) t.reward = 0.5f;
  TrainerOptions o;
  o.learning_rate = 1e-2;
  o.weight_decay = 0.1;
  const common::TensorMap before = Make()->MasterWeights();
  auto changed = [&](const common::TensorMap& after, bool one_d) {
    int n = 0;
    for (const auto& [name, t] : after) {
      if ((t.shape.size() == 1) != one_d) continue;
      n += t.data != before.at(name).data;
    }
    return n;
  };
  const common::TensorMap skipped = After(o, batch);
  EXPECT_EQ(changed(skipped, /*one_d=*/true), 0);
  EXPECT_GT(changed(skipped, /*one_d=*/false), 0);
  o.decay_norms_and_biases = true;
  EXPECT_GT(changed(After(o, batch), /*one_d=*/true), 0);
}

TEST_F(TrainerLossTest, BadOptionsAndFieldsAreInvalidArgument) {
  auto refused = [&](const std::function<void(TrainerOptions*)>& edit) {
    TrainerOptions o;
    o.model_dir = *model_dir_;
    edit(&o);
    return absl::IsInvalidArgument(Trainer::Create(o).status());
  };
  EXPECT_TRUE(refused([](TrainerOptions* o) { o->clip_ratio_c = 0.5; }));
  EXPECT_TRUE(refused([](TrainerOptions* o) { o->clip_ratio_c = NAN; }));
  EXPECT_TRUE(refused([](TrainerOptions* o) { o->weight_decay = -1; }));
  EXPECT_TRUE(refused([](TrainerOptions* o) { o->lr_warmup_steps = -1; }));
  EXPECT_TRUE(refused([](TrainerOptions* o) {
    o->lr_schedule = LrSchedule::kLinear;
    o->lr_warmup_steps = 5;
    o->lr_total_steps = 5;
  }));
  EXPECT_TRUE(refused([](TrainerOptions* o) { o->min_lr_ratio = 1.5; }));
  EXPECT_TRUE(refused([&](TrainerOptions* o) { o->reference_model_dir = *other_dir_; }));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseLossAggregation("mean").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseKlEstimator("k4").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(ParseLrSchedule("step").status()));

  auto trainer = Make();
  const std::vector<Trajectory> good = Batch(38);
  const common::TensorMap before = trainer->MasterWeights();
  auto bad = [&](const std::function<void(Trajectory*)>& edit) {
    std::vector<Trajectory> b = good;
    edit(&b[0]);
    return absl::IsInvalidArgument(trainer->Step(b).status());
  };
  EXPECT_TRUE(bad([](Trajectory* t) { t->loss_mask = {1}; t->loss_mask.resize(t->completion_tokens.size() + 1, 1); }));
  EXPECT_TRUE(bad([](Trajectory* t) { t->loss_mask.assign(t->completion_tokens.size(), 2); }));
  EXPECT_TRUE(bad([](Trajectory* t) { t->loss_mask.assign(t->completion_tokens.size(), 0); }));
  EXPECT_TRUE(bad([](Trajectory* t) { t->advantages.assign(t->completion_tokens.size() + 1, 0.f); }));
  EXPECT_TRUE(bad([](Trajectory* t) { t->advantages.assign(t->completion_tokens.size(), NAN); }));
  EXPECT_TRUE(SameTensors(trainer->MasterWeights(), before));
  EXPECT_EQ(trainer->step(), 0);
}

}  // namespace
}  // namespace lockstep::learner
