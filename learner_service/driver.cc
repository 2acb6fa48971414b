#include "learner_service/driver.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/sampling/sampling_proto.h"
#include "common/status/status_macros.h"

namespace lockstep::learner {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// Sampling seed of a step: distinct per (run seed, step) so that no two
// steps draw the same samples; the rollout derives per-sample seeds from it.
uint64_t StepSeed(uint64_t seed, int64_t step) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  return x;
}

// One Generate call, a single try under `timeout`; its error names the
// rollout.
absl::StatusOr<lockstep::v1::GenerateResponse> Generate(
    client::RolloutClient& rollout,
    const lockstep::v1::GenerateRequest& request, absl::Duration timeout) {
  client::CallOptions call = client::CallOptions::Timeout(timeout);
  call.max_attempts = 1;
  absl::StatusOr<lockstep::v1::GenerateResponse> response =
      rollout.Generate(request, call);
  if (response.ok()) return response;
  return absl::Status(
      response.status().code(),
      absl::StrCat("rollout ", rollout.connection().options().target,
                   ": Generate: ", response.status().message()));
}

// Generate on `rollout`, riding through its restarts: UNAVAILABLE is tried
// again (backoff 100 ms doubling to 5 s) until options.retry_window has
// passed, re-syncing the rollout's weights before every retry.
absl::StatusOr<lockstep::v1::GenerateResponse> GenerateRiding(
    Learner* learner, client::RolloutClient& rollout,
    const lockstep::v1::GenerateRequest& request, const DriverOptions& options,
    const std::atomic<bool>* stop) {
  const absl::Time give_up = absl::Now() + options.retry_window;
  absl::Duration backoff = absl::Milliseconds(100);
  for (;;) {
    absl::StatusOr<lockstep::v1::GenerateResponse> r =
        Generate(rollout, request, options.generate_timeout);
    if (r.ok() || !absl::IsUnavailable(r.status()) || absl::Now() + backoff > give_up ||
        (stop != nullptr && stop->load()) || learner->shutting_down()) {
      return r;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(5));
    if (learner->observer() != nullptr) learner->observer()->OnGenerateRetry();
    // A rollout that came back serves its initial weights: it gets the
    // current ones before it generates again (a failure here is retried by
    // the next Generate attempt).
    (void)learner->SyncRollout(rollout.connection().options().target);
  }
}

}  // namespace

std::string DriveHeaderLine() {
  return absl::StrFormat("%5s %5s %8s %10s %9s %8s %10s %9s", "step", "ver",
                         "reward", "loss", "compared", "exact%", "max|dlp|",
                         "push_ms", "sampled", "s-mism");
}

std::string FormatDriveStep(const DriveStep& s) {
  return absl::StrFormat("%5d %5d %8.4f %10.5f %9d %7.2f%% %10.3g %9.2f %9d %7d",
                         s.step, s.weight_version, s.reward_mean, s.loss,
                         s.tokens_compared, 100.0 * s.exact_fraction,
                         s.max_abs_diff, s.push_ms, s.sampled_compared,
                         s.sampled_mismatched);
}

absl::StatusOr<DriveSummary> RunDriver(Learner* learner,
                                       const DriverOptions& options,
                                       const std::atomic<bool>* stop) {
  if (options.prompts_per_step < 1 || options.samples_per_prompt < 1) {
    return absl::InvalidArgumentError(
        "prompts_per_step and samples_per_prompt must be >= 1");
  }
  if (options.steps < 0) return absl::InvalidArgumentError("steps must be >= 0");
  LOCKSTEP_ASSIGN_OR_RETURN(std::unique_ptr<Task> task, MakeTask(options.task));
  if (learner->config().vocab_size < CharVocab::size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the built-in tasks need a vocabulary of >= ", CharVocab::size(),
        " ids; the model has ", learner->config().vocab_size));
  }
  const int max_tokens =
      options.max_tokens > 0 ? options.max_tokens : task->max_completion_tokens();

  // The generator lives as long as the loop; the hooks are removed on exit.
  auto generator = std::make_shared<PromptGenerator>(task.get(), options.seed);
  learner->SetCheckpointHooks(CheckpointHooks{
      [generator] {
        return std::map<std::string, std::string>{
            {"driver.prompt_rng", generator->SaveState()}};
      },
      [generator](const std::map<std::string, std::string>& extra) {
        auto it = extra.find("driver.prompt_rng");
        if (it == extra.end()) return absl::OkStatus();
        return generator->LoadState(it->second);
      }});
  struct HookReset {
    Learner* l;
    ~HookReset() { l->SetCheckpointHooks({}); }
  } reset{learner};
  if (auto it = options.resume_state.find("driver.prompt_rng");
      it != options.resume_state.end()) {
    LOCKSTEP_RETURN_IF_ERROR(generator->LoadState(it->second));
  }

  if (options.out != nullptr) *options.out << DriveHeaderLine() << std::endl;
  DriveSummary summary;
  const auto run_start = Clock::now();
  for (;;) {
    if (options.steps > 0 && learner->trainer().step() >= options.steps) break;
    if (stop != nullptr && stop->load()) break;
    std::vector<std::shared_ptr<client::RolloutClient>> rollouts =
        learner->rollout_clients();
    if (rollouts.empty()) {
      return absl::FailedPreconditionError(
          "the driver needs a registered rollout (--rollout=HOST:PORT)");
    }
    // Prompts of this step, split round-robin over the rollouts.
    std::vector<TaskExample> examples;
    for (int p = 0; p < options.prompts_per_step; ++p) {
      examples.push_back(generator->Next());
    }
    const int64_t step_index = learner->trainer().step();
    const size_t nr = std::min(rollouts.size(), examples.size());
    std::vector<lockstep::v1::GenerateRequest> requests(nr);
    std::vector<std::vector<size_t>> owned(nr);
    // Spread by load: each prompt goes to the member with the fewest
    // sequences (its waiting + running, GetLoad, plus what this step already
    // gave it); equal loads give round-robin. The samples do not depend on
    // the split (per-prompt seeds), only the time does.
    std::vector<int64_t> load(nr, 0);
    for (size_t r = 0; r < nr; ++r) {
      absl::StatusOr<lockstep::v1::RolloutLoad> l =
          rollouts[r]->GetLoad(client::CallOptions::Timeout(absl::Seconds(2)));
      if (l.ok()) {
        load[r] = static_cast<int64_t>(l->waiting_sequences() + l->running_sequences());
        // A member that restarted since the last push serves its initial
        // weights: it gets the current ones before this step's Generate.
        if (static_cast<int64_t>(l->weight_version()) != learner->version()) {
          (void)learner->SyncRollout(rollouts[r]->connection().options().target);
        }
      }
    }
    for (size_t p = 0; p < examples.size(); ++p) {
      const size_t r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
      load[r] += options.samples_per_prompt;
      lockstep::v1::Prompt* prompt = requests[r].add_prompts();
      prompt->mutable_token_ids()->Add(examples[p].prompt.begin(),
                                       examples[p].prompt.end());
      // Per-prompt seed: independent of how prompts are split over rollouts.
      prompt->set_seed(StepSeed(options.seed, step_index) +
                       p * static_cast<uint64_t>(options.samples_per_prompt));
      owned[r].push_back(p);
    }
    std::vector<absl::StatusOr<lockstep::v1::GenerateResponse>> responses(
        nr, absl::UnknownError("not run"));
    const auto gen_start = Clock::now();
    {
      std::vector<std::thread> threads;
      for (size_t r = 0; r < nr; ++r) {
        if (owned[r].empty()) {  // a busy member got nothing this step
          responses[r] = lockstep::v1::GenerateResponse();
          continue;
        }
        lockstep::v1::GenerateRequest& req = requests[r];
        req.set_n(static_cast<uint32_t>(options.samples_per_prompt));
        req.set_request_id(absl::StrCat("learner-drive-", step_index, "-", r));
        lockstep::v1::SamplingParams* sp = req.mutable_sampling();
        sp->set_temperature(options.temperature);
        sp->set_top_p(options.top_p);
        sp->set_top_k(options.top_k);
        sp->set_min_p(options.min_p);
        sp->set_max_tokens(static_cast<uint32_t>(max_tokens));
        sp->add_stop_token_ids(CharVocab::kEos);
        threads.emplace_back([&, r] {
          responses[r] = GenerateRiding(learner, *rollouts[r], requests[r], options, stop);
        });
      }
      for (std::thread& t : threads) t.join();
    }
    const double generate_ms = MsSince(gen_start);
    std::vector<Trajectory> trajectories;
    bool abandoned = false;  // shutdown cut a Generate short: no step
    for (size_t r = 0; r < nr && !abandoned; ++r) {
      if (!responses[r].ok()) {
        if ((stop != nullptr && stop->load()) || learner->shutting_down()) {
          abandoned = true;
          break;
        }
        return responses[r].status();
      }
      for (const lockstep::v1::Completion& c : responses[r]->completions()) {
        if (c.prompt_index() >= owned[r].size()) {
          return absl::InternalError("rollout returned an unknown prompt index");
        }
        const size_t p = owned[r][c.prompt_index()];
        Trajectory t;
        t.prompt_tokens = examples[p].prompt;
        t.completion_tokens.assign(c.token_ids().begin(), c.token_ids().end());
        t.rollout_logprobs.assign(c.logprobs().begin(), c.logprobs().end());
        t.weight_version = static_cast<int64_t>(c.weight_version());
        if (c.token_weight_versions_size() == c.token_ids_size()) {
          t.token_weight_versions.assign(c.token_weight_versions().begin(),
                                         c.token_weight_versions().end());
        }
        if (c.has_sampling()) {
          // The distribution the rollout sampled from: the learner scores
          // the tokens under it too.
          LOCKSTEP_ASSIGN_OR_RETURN(
              t.sampling, common::SamplingSpecFromProto(c.sampling(), learner->config().vocab_size));
          t.rollout_sampled_logprobs.assign(c.sampled_logprobs().begin(),
                                            c.sampled_logprobs().end());
        }
        t.reward = task->Reward(examples[p], t.completion_tokens);
        t.group_id = absl::StrCat("drive-", step_index, "-", p);
        if (t.completion_tokens.empty()) continue;  // nothing to train on
        trajectories.push_back(std::move(t));
      }
    }
    if (abandoned) break;
    std::vector<std::string> groups;
    for (const Trajectory& t : trajectories) {
      if (groups.empty() || groups.back() != t.group_id) {
        groups.push_back(t.group_id);
      }
    }
    double sleep_ms = 0.0;
    uint64_t freed = 0;
    if (options.colocate) {
      // The rollouts give their memory back while the learner trains; the
      // push below installs the new weights into the sleeping rollouts.
      const auto sleep_start = Clock::now();
      for (const auto& r : rollouts) {
        absl::StatusOr<lockstep::v1::SleepResponse> slept =
            r->Sleep(lockstep::v1::SLEEP_LEVEL_KV_CACHE_AND_WEIGHTS,
                     client::CallOptions::Timeout(absl::Seconds(120)));
        if (!slept.ok()) return slept.status();
        freed += slept->device_bytes_freed();
      }
      sleep_ms = MsSince(sleep_start);
    }
    const auto train_start = Clock::now();
    LOCKSTEP_RETURN_IF_ERROR(learner->Submit(std::move(trajectories)).status());
    TrainStepOptions step_options;
    // Only this step's groups: a client may have buffered others.
    step_options.group_ids = groups;
    LOCKSTEP_ASSIGN_OR_RETURN(StepReport report,
                              learner->TrainStep(step_options));
    const double train_ms = MsSince(train_start) - report.push_seconds * 1e3;
    double wake_ms = 0.0;
    if (options.colocate) {
      const auto wake_start = Clock::now();
      for (const auto& r : rollouts) {
        absl::StatusOr<lockstep::v1::WakeUpResponse> woke =
            r->WakeUp(client::CallOptions::Timeout(absl::Seconds(120)));
        if (!woke.ok()) return woke.status();
      }
      wake_ms = MsSince(wake_start);
    }

    DriveStep line;
    line.step = report.step.step;
    line.weight_version = report.step.weight_version;
    line.reward_mean = report.step.reward.mean;
    line.loss = report.step.loss;
    line.tokens_compared = report.step.mismatch.tokens_compared;
    line.tokens_mismatched = report.step.mismatch.tokens_mismatched;
    line.exact_fraction = report.step.mismatch.exact_fraction();
    line.max_abs_diff = report.step.mismatch.max_abs_diff;
    line.sampled_compared = report.step.sampled_mismatch.tokens_compared;
    line.sampled_mismatched = report.step.sampled_mismatch.tokens_mismatched;
    line.push_ms = report.push_seconds * 1e3;
    line.generate_ms = generate_ms;
    line.train_ms = train_ms;
    line.sleep_ms = sleep_ms;
    line.wake_ms = wake_ms;
    line.device_bytes_freed = freed;
    if (options.out != nullptr) {
      *options.out << FormatDriveStep(line) << std::endl;
      if (options.colocate) {
        *options.out << absl::StrFormat(
                            "colocate step %d: generate %.1f ms, sleep %.1f ms (%.3f GB of "
                            "device memory freed), train %.1f ms, push %.1f ms, wake %.1f ms",
                            line.step, line.generate_ms, line.sleep_ms,
                            static_cast<double>(freed) / 1e9, line.train_ms, line.push_ms,
                            line.wake_ms)
                     << std::endl;
      }
    }
    summary.steps.push_back(line);
    summary.tokens_compared += line.tokens_compared;
    summary.tokens_mismatched += line.tokens_mismatched;
    summary.sampled_compared += line.sampled_compared;
    summary.sampled_mismatched += line.sampled_mismatched;
    summary.max_abs_diff = std::max(summary.max_abs_diff, line.max_abs_diff);
    const bool stopping = (stop != nullptr && stop->load()) || learner->shutting_down();
    for (const PushResult& p : report.pushes) {
      // A push cut short by shutdown is not a failure of the run.
      if (!p.status.ok() && options.fail_on_push_error && !stopping) return p.status;
    }
    if (options.checkpoint_every > 0 && line.step % options.checkpoint_every == 0) {
      absl::StatusOr<CheckpointInfo> saved = learner->SaveCheckpoint("drive");
      if (!saved.ok()) return saved.status();
    }
    if (options.fail_on_mismatch && line.tokens_mismatched > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step ", line.step, ": ", line.tokens_mismatched, " of ",
          line.tokens_compared,
          " tokens have a learner logprob that differs from the rollout's "
          "(max |diff| ",
          line.max_abs_diff, ")"));
    }
    if (options.fail_on_mismatch && line.sampled_mismatched > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "step ", line.step, ": ", line.sampled_mismatched, " of ", line.sampled_compared,
          " tokens have a learner sampled-distribution logprob that differs from the "
          "rollout's"));
    }
  }
  summary.seconds =
      std::chrono::duration<double>(Clock::now() - run_start).count();
  if (!summary.steps.empty()) {
    summary.reward_first = summary.steps.front().reward_mean;
    summary.reward_last = summary.steps.back().reward_mean;
    double push = 0.0;
    for (const DriveStep& s : summary.steps) push += s.push_ms;
    summary.mean_push_ms = push / static_cast<double>(summary.steps.size());
  }
  return summary;
}

}  // namespace lockstep::learner
