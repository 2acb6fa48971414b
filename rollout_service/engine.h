// The rollout engine: one thread that runs the model step after step over a
// continuously changing batch (see scheduler.h for the batching policy),
// samples every sequence's next token with the batch-invariant sampler, and
// hands the tokens and their logprobs to the requests' handles. It also
// scores sequences, swaps weights at step boundaries and self-checks its own
// outputs. No gRPC here: the server (server.h) converts requests and
// responses and records metrics through EngineObserver.
//
// Numerics: the logits of a sequence's next token come from
// Model::StepLogits over whatever batch the step holds; the token is drawn by
// kernels::Sample with the sample's own seed and, as the Philox counter, the
// absolute position the token will occupy; its logprob is the raw model
// distribution's (temperature 1, before top-k/top-p), computed by
// common::ComputeTokenLogprobs in the model's kernel mode — exactly what the
// learner computes for the same tokens. In invariant mode none of this
// depends on the batch, so outputs are bit-identical alone, in any batch,
// after preemption and recompute, and equal to Score().
//
// Weight swaps: a new Model (same config) is installed between two steps.
// At the swap every running sequence is preempted and later recomputed from
// scratch with the new weights (prompt + tokens generated so far), and
// shared prompt prefixes are recomputed too, so no token is ever computed
// from a mix of two versions. Tokens keep the version they were sampled with.
#ifndef LOCKSTEP_ROLLOUT_SERVICE_ENGINE_H_
#define LOCKSTEP_ROLLOUT_SERVICE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/model/model.h"
#include "common/sampling/sampling_spec.h"
#include "kernels/sampling.h"
#include "rollout_service/scheduler.h"

namespace lockstep::rollout {

// Most alternatives a request may ask for per position.
inline constexpr int kMaxTopLogprobs = common::kMaxTopLogprobs;

// Why a sample stopped (values match lockstep.v1.FinishReason).
enum class FinishReason : int { kNone = 0, kStop = 1, kLength = 2 };

// (token id, logprob) alternatives at one position, best first.
using TopList = std::vector<std::pair<int32_t, float>>;

// One prompt and the stream keys of its samples (n = seeds.size() >= 1;
// kernels::SampleStreamKey), with its own sampling spec or the job's.
struct PromptJob {
  std::vector<int32_t> prompt;
  std::vector<uint64_t> seeds;
  std::optional<common::SamplingSpec> sampling;
  // A partial rollout: tokens an earlier, unfinished sample of this prompt
  // generated (then seeds.size() == 1). The sample continues after them as
  // if never interrupted: they count as output for max_tokens, min_tokens,
  // stop sequences and penalties, and the Philox counters continue at their
  // positions. Updates carry the new tokens only.
  std::vector<int32_t> resumed;
};

// A generation request: every prompt's samples; `sampling` serves the
// prompts that have none of their own.
struct GenerateJob {
  std::vector<PromptJob> prompts;
  common::SamplingSpec sampling;
  // Past it the request fails with DEADLINE_EXCEEDED (checked every step).
  absl::Time deadline = absl::InfiniteFuture();
};

// New output of one sample since its previous update.
struct SampleUpdate {
  // Flat sample index: the samples of prompt 0 in seed order, then prompt 1's.
  int32_t sample = 0;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;     // one per token: raw (temperature 1)
  std::vector<float> sampled_logprobs;  // one per token: sampling distribution
  std::vector<uint64_t> versions;  // weight version that sampled each token
  std::vector<TopList> top;        // one per token when top_logprobs > 0
  FinishReason finish = FinishReason::kNone;  // set on the sample's last update
  int preemptions = 0;                        // so far
  absl::Time time;  // when the step that sampled them ended
};

// The consumer's side of a submitted job. Thread-safe.
class RequestHandle {
 public:
  explicit RequestHandle(int num_samples)
      : num_samples_(num_samples), submit_time_(absl::Now()) {}

  // Moves the pending updates into *out, first waiting up to `timeout` for
  // one to arrive. Returns true once the request is complete and every update
  // has been handed out (then status() is final).
  bool Wait(absl::Duration timeout, std::vector<SampleUpdate>* out);

  // Final status: OK when every sample finished; else why the engine
  // stopped the request (CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, ...).
  absl::Status status() const;

  // Asks the engine to stop the request at the next step boundary; it then
  // completes with `reason` (must not be OK).
  void Cancel(absl::Status reason);

  int num_samples() const { return num_samples_; }
  absl::Time submit_time() const { return submit_time_; }

 private:
  friend class Engine;
  void Push(std::vector<SampleUpdate> updates);
  void Complete(absl::Status status);
  bool cancel_requested() const {
    return cancel_requested_.load(std::memory_order_acquire);
  }
  absl::Status cancel_reason() const;

  const int num_samples_;
  const absl::Time submit_time_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::vector<SampleUpdate> pending_;
  bool done_ = false;
  absl::Status status_;
  std::atomic<bool> cancel_requested_{false};
  absl::Status cancel_reason_;
};

// Scoring of given sequences (ComputeLogprobs).
struct ScoreRequest {
  std::vector<std::vector<int32_t>> sequences;
  std::vector<int64_t> prompt_lens;  // per sequence, in [1, len)
  int top_n = 0;                     // 0..20 alternatives per position
  // Empty, or one per sequence: also score under that sampling distribution
  // (nullopt: not this sequence).
  std::vector<std::optional<common::SamplingSpec>> sampling;
  // FAILED_PRECONDITION unless this version is being served.
  std::optional<uint64_t> expected_version;
  // DEADLINE_EXCEEDED once this passes; CANCELLED once `cancelled` (polled
  // while waiting, may be empty) returns true. Either way the engine drops
  // the rest of the work.
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> cancelled;
};

struct ScoreResult {
  // [sequence][len - prompt_len] log p(token | prefix).
  std::vector<std::vector<float>> logprobs;
  // [sequence][len - prompt_len] when top_n > 0.
  std::vector<std::vector<TopList>> top;
  // [sequence][len - prompt_len] for the sequences with sampling (else
  // empty; the whole vector is empty when no sequence has any).
  std::vector<std::vector<float>> sampled;
  uint64_t version = 0;
};

struct SwapResult {
  uint64_t previous_version = 0;
  uint64_t version = 0;
  absl::Duration pause;   // step boundary wait + swap
  int64_t preempted = 0;  // running samples moved to the new weights
};

// Per-step statistics handed to the observer (metrics).
struct StepStats {
  int64_t sequences = 0;  // sequences in the step's batch
  int64_t tokens = 0;     // tokens computed
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  int64_t sampled = 0;      // tokens sampled (generated)
  int64_t preempted = 0;    // samples preempted while planning
  int64_t waiting = 0;      // samples waiting for admission after the step
  int64_t running = 0;      // sequences holding KV after the step
  double kv_usage = 0.0;    // fraction of KV pages in use after the step
  absl::Duration duration;  // forward + sampling
};

// Receives engine events on the engine thread; must not block.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  virtual void OnStep(const StepStats& stats) {}
  // A self-check of one finished sample: `mismatched` tokens of `tokens`
  // differed bitwise from the re-scored logprobs.
  virtual void OnSelfCheck(int64_t tokens, int64_t mismatched) {}
  virtual void OnWeightSwap(const SwapResult& result) {}
  // The queue and KV occupancy changed outside a step (requests cancelled,
  // finished or failed while nothing else runs): the gauges must not keep
  // the last step's values.
  virtual void OnOccupancy(int64_t waiting, int64_t running, double kv_usage) {}
};

struct EngineOptions {
  // KV cache: `num_pages` pages when > 0, else as many as fit in
  // kv_cache_bytes (Model::KvBytesPerPage).
  int64_t num_pages = 0;
  int64_t kv_cache_bytes = int64_t{512} << 20;
  int64_t page_size = 16;          // tokens per page
  int64_t max_batch_tokens = 512;  // tokens per step
  int64_t max_running = 256;       // sequences holding KV at once
  // Samples that may wait for their first admission (RESOURCE_EXHAUSTED
  // past it).
  int64_t max_queue = 4096;
  bool prefix_sharing = true;
  // Fraction of finished samples re-scored alone (Model::Score) and
  // compared bitwise with the logprobs returned; in [0, 1].
  double selfcheck_rate = 0.0;
  uint64_t initial_version = 0;  // version of the initial weights
};

// What Pause does with the running samples.
enum class PauseMode : int {
  kKeep = 0,     // they keep their KV and continue on Resume
  kRetract = 1,  // their KV is freed; recomputed on Resume
};

struct PauseResult {
  bool was_paused = false;
  int64_t held_requests = 0;  // requests in flight, waiting for Resume
  int64_t running = 0;        // sequences holding KV
  double kv_usage = 0.0;
  uint64_t version = 0;
};

// Sleep levels (values match lockstep.v1.SleepLevel).
enum class SleepLevel : int { kAwake = 0, kKvCache = 1, kKvCacheAndWeights = 2 };

struct SleepResult {
  SleepLevel level = SleepLevel::kAwake;  // now
  int64_t kv_cache_bytes = 0;  // released by this call
  int64_t weight_bytes = 0;
  int64_t graph_bytes = 0;
  int64_t device_bytes_freed = 0;  // free device memory after - before
  int64_t device_free_bytes = 0;   // free device memory now (0 on CPU)
  absl::Duration duration;
  uint64_t version = 0;
};

struct WakeResult {
  bool was_asleep = false;
  int64_t kv_cache_bytes = 0;  // allocated
  int64_t device_free_bytes = 0;
  absl::Duration duration;
  uint64_t version = 0;
};

class Engine;

// The engine's single weight-update slot, held while a caller receives new
// weights over time (a stream). Released when destroyed.
class WeightUpdate {
 public:
  ~WeightUpdate();
  WeightUpdate(const WeightUpdate&) = delete;
  WeightUpdate& operator=(const WeightUpdate&) = delete;

  // FAILED_PRECONDITION unless `version` is above the version served: checked
  // as soon as the version is known, before the weights arrive.
  absl::Status CheckVersion(uint64_t version) const;

  // Builds a model of the served config and options from `tensors` (HF
  // names; on the caller's thread, so generation continues meanwhile) and
  // installs it as `version` (Engine::SwapWeights). ABORTED when the model
  // rejects the weights (missing, unknown or mis-shaped tensors); the old
  // weights keep serving on every error.
  absl::StatusOr<SwapResult> Commit(common::TensorMap tensors, uint64_t version);

 private:
  friend class Engine;
  explicit WeightUpdate(Engine* engine) : engine_(engine) {}
  Engine* const engine_;
};

class Engine {
 public:
  // Starts the engine thread over `model`. INVALID_ARGUMENT for bad options,
  // RESOURCE_EXHAUSTED when the KV budget holds no page.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      std::shared_ptr<const common::Model> model, const EngineOptions& options,
      EngineObserver* observer = nullptr);

  // Stops the thread; unfinished requests complete with UNAVAILABLE.
  ~Engine();

  // Validates and queues a job. INVALID_ARGUMENT: no prompt, an empty
  // prompt, a token id outside [0, vocab), no seeds, temperature < 0 or not
  // finite, top_p outside (0, 1], top_k < 0, top_logprobs outside [0, 20],
  // max_tokens < 0, prompt + max_tokens past the context length (or a prompt
  // that leaves no room to generate). RESOURCE_EXHAUSTED: a sample that could
  // not fit in the whole KV cache, or the waiting queue would exceed
  // max_queue. UNAVAILABLE: draining.
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerateJob job);

  // Scores sequences (blocking). Validated on the caller's thread; the
  // engine thread then runs the work in pieces of at most max_batch_tokens
  // tokens, one piece between two generation steps, so a large request never
  // stalls generation by more than one piece. All pieces use one weight
  // version: a swap in between restarts the request at the new version
  // (FAILED_PRECONDITION when expected_version is set). INVALID_ARGUMENT for
  // empty input, prompt_len outside [1, len), token ids outside the
  // vocabulary, sequences past the context length, top_n outside [0, 20];
  // FAILED_PRECONDITION for a version mismatch; DEADLINE_EXCEEDED /
  // CANCELLED (request.deadline, request.cancelled); UNAVAILABLE while
  // draining.
  absl::StatusOr<ScoreResult> Score(const ScoreRequest& request);

  // Installs `model` (same config) as version `version` at the next step
  // boundary and returns once it serves. FAILED_PRECONDITION when the config
  // differs; ABORTED when `version` is not above the version served at the
  // swap (a newer update won the race); UNAVAILABLE while draining.
  absl::StatusOr<SwapResult> SwapWeights(
      std::shared_ptr<const common::Model> model, uint64_t version);

  // Reserves the weight-update slot (one update at a time): ABORTED while
  // another update holds it, UNAVAILABLE while draining.
  absl::StatusOr<std::unique_ptr<WeightUpdate>> BeginWeightUpdate();

  uint64_t weight_version() const {
    return version_.load(std::memory_order_acquire);
  }
  std::shared_ptr<const common::Model> model() const;
  const common::ModelConfig& config() const { return config_; }
  const EngineOptions& options() const { return options_; }
  int64_t num_pages() const { return num_pages_; }
  // Longest sample (prompt + generated tokens) the engine runs.
  int64_t max_sequence_tokens() const { return max_sequence_tokens_; }

  // Generation control (RolloutService Pause/Resume/Sleep/WakeUp); each
  // runs on the engine thread at a step boundary and returns once done.
  // While paused or asleep no generation step runs; submitted requests wait
  // (cancellation and deadlines still apply), Score and SwapWeights keep
  // working (Score: FAILED_PRECONDITION while the weights are released).
  // UNAVAILABLE once the engine stops.
  absl::StatusOr<PauseResult> Pause(PauseMode mode);
  // Returns whether the engine was paused.
  absl::StatusOr<bool> Resume();
  // Retracts the running samples (they stay queued), frees the KV cache and
  // the model's caches (CUDA graphs), and at kKvCacheAndWeights drops the
  // weights; the freed device memory goes back to the driver. Sleeping
  // deeper than now releases the rest; INVALID_ARGUMENT for kAwake.
  absl::StatusOr<SleepResult> Sleep(SleepLevel level);
  // Allocates the KV cache again and lets generation continue.
  // FAILED_PRECONDITION while the weights are released (push weights with
  // SwapWeights/WeightUpdate first: that installs them while asleep);
  // RESOURCE_EXHAUSTED when the cache cannot be allocated (the engine stays
  // asleep).
  absl::StatusOr<WakeResult> WakeUp();
  bool paused() const { return paused_flag_.load(std::memory_order_acquire); }
  SleepLevel sleep_level() const {
    return static_cast<SleepLevel>(sleep_flag_.load(std::memory_order_acquire));
  }
  // The served model's options (also while its weights are released).
  const common::ModelOptions& model_options() const { return model_options_; }

  // Drain: Submit/Score/SwapWeights fail with `reason` (UNAVAILABLE) from now
  // on; requests in flight continue.
  void StopAdmitting(absl::Status reason);
  // Waits until no request is in flight; false on timeout.
  bool WaitIdle(absl::Duration timeout);
  // Completes every request in flight with `reason`.
  void CancelAll(absl::Status reason);
  // Requests submitted and not yet complete.
  int64_t in_flight() const { return in_flight_.load(); }

  // The engine's load as of its last step (or occupancy change), for
  // routers: samples waiting for admission, sequences running, KV-cache
  // pages in use. Thread-safe.
  struct Load {
    int64_t waiting = 0;
    int64_t running = 0;
    double kv_usage = 0.0;
    int64_t in_flight = 0;  // requests
  };
  Load load() const;

 private:
  struct Request;
  struct SampleState {
    std::shared_ptr<Request> request;
    int32_t index = 0;  // flat sample index in the request
    int64_t prompt_len = 0;
    int64_t resumed = 0;  // tokens generated before a resume (PromptJob::resumed)
    int64_t max_len = 0;  // stop (LENGTH) at this many tokens
    const common::SamplingSpec* spec = nullptr;  // in request->specs
    kernels::SamplingParams params;              // spec's, seed = stream key
    std::optional<common::LogitAdjuster> adjuster;  // when spec->adjusts()
    bool admitted = false;           // admitted at least once
    // Every generated token's logprob and version, kept only for the
    // self-check (selfcheck_rate > 0).
    std::vector<float> logprobs;
    std::vector<uint64_t> versions;
  };
  struct Request {
    std::shared_ptr<RequestHandle> handle;
    std::deque<common::SamplingSpec> specs;  // one per prompt (stable addresses)
    absl::Time deadline;
    std::vector<int64_t> seq_ids;
    int remaining = 0;
    bool done = false;
  };
  struct SwapJob {
    std::shared_ptr<const common::Model> model;
    uint64_t version = 0;
    absl::Time queued;
    absl::StatusOr<SwapResult> result = absl::UnknownError("pending");
    bool done = false;
  };
  // A Score call in progress; shared by the caller and the engine thread.
  struct ScoreJob {
    const ScoreRequest* request = nullptr;  // valid until done or abandoned
    ScoreResult partial;                    // engine thread only
    size_t next = 0;                        // next sequence (engine thread)
    bool started = false;                   // partial.version is set
    absl::StatusOr<ScoreResult> result = absl::UnknownError("pending");
    bool done = false;       // guarded by mu_
    bool abandoned = false;  // guarded by mu_: the caller gave up
    bool running = false;    // guarded by mu_: a piece reads *request now
  };
  // Work run on the engine thread at a step boundary (control RPCs).
  struct ControlJob {
    std::function<void()> run;
    bool ran = false;   // guarded by mu_
    bool done = false;  // guarded by mu_ (also set, unrun, when stopping)
  };
  struct SelfCheck {
    std::vector<int32_t> tokens;
    int64_t prompt_len = 0;
    std::vector<float> logprobs;
    uint64_t version = 0;
  };

  Engine(std::shared_ptr<const common::Model> model,
         const EngineOptions& options, EngineObserver* observer);
  absl::Status Validate(const GenerateJob& job) const;
  void Loop();
  bool HasWorkLocked() const;
  void AddRequest(std::shared_ptr<Request> request, GenerateJob job);
  void ApplySwap(SwapJob& job);
  absl::Status ValidateScore(const ScoreRequest& request) const;
  // Runs the next piece of the first active score job; true when the job is
  // finished (result set).
  bool RunScorePiece(ScoreJob& job);
  absl::Status ScorePiece(ScoreJob& job);
  void CheckCancellations();
  void FinishRequest(const std::shared_ptr<Request>& request,
                     absl::Status status);
  void FailEverything(const absl::Status& status);
  void Step();
  void RunSelfCheck();
  // Queues `fn` for the engine thread and waits until it ran; UNAVAILABLE
  // when the engine stops first.
  absl::Status RunOnEngineThread(std::function<void()> fn);
  // Engine thread: generation steps run (neither paused nor asleep).
  bool generating() const { return !paused_ && sleep_ == SleepLevel::kAwake; }
  void SetPaused(bool paused);
  void SetSleep(SleepLevel level);
  // OnOccupancy when waiting/running/kv_usage differ from the last report.
  void ReportOccupancy();
  friend class WeightUpdate;

  const EngineOptions options_;
  const common::ModelConfig config_;
  const common::ModelOptions model_options_;
  EngineObserver* const observer_;
  int64_t num_pages_ = 0;
  int64_t max_sequence_tokens_ = 0;

  // Engine-thread state.
  std::shared_ptr<const common::Model> model_;
  std::unique_ptr<common::KvCache> cache_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unordered_map<int64_t, SampleState> samples_;  // by sequence id
  std::vector<std::shared_ptr<Request>> requests_;    // in flight
  std::deque<SelfCheck> selfchecks_;
  std::deque<std::shared_ptr<ScoreJob>> active_scores_;  // in pieces
  double selfcheck_credit_ = 0.0;
  // Generation control (engine thread; mirrored in the atomics below).
  bool paused_ = false;
  SleepLevel sleep_ = SleepLevel::kAwake;
  std::atomic<bool> paused_flag_{false};
  std::atomic<int> sleep_flag_{0};
  // The occupancy as load() reads it (written by the engine thread).
  std::atomic<int64_t> load_waiting_{0};
  std::atomic<int64_t> load_running_{0};
  std::atomic<double> load_kv_usage_{0.0};
  int64_t reported_waiting_ = 0;  // the occupancy last reported
  int64_t reported_running_ = 0;
  double reported_kv_usage_ = 0.0;

  // Shared state.
  mutable absl::Mutex mu_;
  absl::CondVar work_cv_;  // engine thread: new work
  absl::CondVar done_cv_;  // callers: swap/score done, idle
  std::vector<std::pair<std::shared_ptr<Request>, GenerateJob>> incoming_;
  std::deque<SwapJob*> swaps_;
  std::deque<std::shared_ptr<ScoreJob>> scores_;
  std::deque<ControlJob*> controls_;
  std::shared_ptr<const common::Model> published_model_;
  bool stop_ = false;
  absl::Status draining_;    // OK unless draining
  absl::Status cancel_all_;  // not OK: CancelAll() pending
  std::atomic<uint64_t> version_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> queued_{0};  // samples never admitted yet
  std::atomic<bool> updating_{false};  // the WeightUpdate slot is held
  std::thread thread_;
};

}  // namespace lockstep::rollout

#endif  // LOCKSTEP_ROLLOUT_SERVICE_ENGINE_H_
