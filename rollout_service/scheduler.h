// Continuous-batching scheduler of the rollout engine: which tokens of which
// sequences the next forward step computes, and where their K/V go in the
// paged cache. Pure bookkeeping — no model, no sampling, no gRPC — so it is
// unit-tested on its own.
//
// A sequence is prompt + generated tokens; `num_computed` of them have their
// K/V in the cache. Every step computes, for each scheduled sequence, the next
// chunk of its uncomputed tokens; when the chunk reaches the last token the
// step also produces that token's logits and the engine samples the next
// token. Decode (1 uncomputed token), prefill, chunked prefill and recompute
// after preemption are therefore the same operation.
//
// Policy, per step, under a token budget (max_batch_tokens):
//   1. running sequences with one uncomputed token (decodes), oldest first;
//   2. running sequences in the middle of a (chunked) prefill, oldest first;
//   3. admission of waiting sequences in FIFO order (preempted ones are put
//      back at the front) while pages for their whole current length are free
//      and fewer than max_running sequences run. Pages for the prompt are
//      taken at admission; decodes take one more page when they cross a page
//      boundary.
// When a running sequence needs a page and none is free, the most recently
// admitted running sequence that was admitted after it and is not yet
// scheduled in this step is preempted
// (preemption by recompute: its pages are freed and it goes back to the
// waiting queue with prompt + generated tokens as its new prompt); if there is
// none, shared prefixes held for waiting samples are dropped; failing that,
// the sequence preempts itself.
//
// Prefix sharing (n samples of one prompt of length L): the complete pages of
// prompt[0, L-1), i.e. S = floor((L-1)/page_size) pages, are prefilled once by
// a prefix pseudo-sequence (no logits); then every sample is admitted with
// those S pages in its block table (reference counted) and computes the rest
// of the prompt, L - S*page_size in [1, page_size] tokens, in pages of its
// own. Only complete pages are shared, so no page is ever written by two
// sequences and no copy-on-write is needed; the last prompt token is always
// computed per sample, which yields the logits of its first sampled token.
// A preempted sample re-adopts the shared pages while they are still held
// (some sample of its prompt is still waiting), otherwise recomputes alone.
#ifndef LOCKSTEP_ROLLOUT_SERVICE_SCHEDULER_H_
#define LOCKSTEP_ROLLOUT_SERVICE_SCHEDULER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/model/model.h"
#include "rollout_service/block_manager.h"

namespace lockstep::rollout {

struct SchedulerOptions {
  int64_t num_pages = 0;           // pages in the KV cache (>= 1)
  int64_t page_size = 16;          // tokens per page (>= 1)
  int64_t max_batch_tokens = 512;  // tokens computed per step (>= 1)
  int64_t max_running = 256;       // sequences holding KV at once (>= 1)
  bool prefix_sharing = true;      // share the prompt pages of n > 1 samples
};

// One piece of work of a step: tokens [start, start + count) of a sequence.
struct StepPiece {
  int64_t seq_id = 0;
  int64_t start = 0;
  int64_t count = 0;
};

// The plan of one step.
struct StepPlan {
  // The forward batch: tokens grouped by sequence in `pieces` order; one
  // block-table row per piece.
  common::ForwardBatch batch;
  std::vector<StepPiece> pieces;
  // Samples whose next token is sampled from this step's logits, parallel to
  // batch.logit_rows.
  std::vector<int64_t> sample_seqs;
  // Samples preempted while planning (they hold no pages now).
  std::vector<int64_t> preempted;
  int64_t prefill_tokens = 0;  // tokens of pieces longer than one token
  int64_t decode_tokens = 0;   // one-token pieces
  bool empty() const { return pieces.empty(); }
};

// Not thread-safe: owned by the engine thread.
class Scheduler {
 public:
  explicit Scheduler(const SchedulerOptions& options);

  const SchedulerOptions& options() const { return options_; }
  const BlockManager& blocks() const { return blocks_; }

  // Queues the n (>= 1) samples of `prompt` (non-empty) and returns their
  // sequence ids (in sample order).
  std::vector<int64_t> AddGroup(const std::vector<int32_t>& prompt, int n);

  // Plans the next step; an empty plan when there is nothing to compute.
  StepPlan Schedule();

  // Marks the pieces of `plan` computed. Call once after the step's forward
  // succeeded and before AppendToken.
  void Commit(const StepPlan& plan);

  // Appends the token sampled for sample `seq_id` (one of plan.sample_seqs).
  void AppendToken(int64_t seq_id, int32_t token);

  // Removes sample `seq_id` (finished or cancelled) in any state and
  // releases its pages. Unknown ids are ignored.
  void Remove(int64_t seq_id);

  // Preempts every running sequence and drops every shared prefix, so that no
  // page holds K/V any more (used at a weight swap: everything is recomputed
  // with the new weights). Returns the preempted sample ids.
  std::vector<int64_t> PreemptAll();

  // The tokens (prompt + generated) of sample `seq_id`.
  const std::vector<int32_t>& tokens(int64_t seq_id) const;
  // Times `seq_id` was preempted.
  int preemptions(int64_t seq_id) const;
  bool contains(int64_t seq_id) const { return seqs_.count(seq_id) > 0; }

  // Samples waiting for admission (new, preempted, or waiting for their
  // shared prefix).
  int64_t num_waiting_samples() const { return waiting_samples_; }
  // Sequences (samples and prefixes) holding KV.
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  // True while any sequence is queued or running.
  bool has_work() const { return !seqs_.empty(); }

  // Self-consistency check for tests: page reference counts equal the
  // references held by sequences and groups. Returns a description of the
  // first inconsistency, or "" when consistent.
  std::string CheckInvariants() const;

 private:
  enum class State { kWaiting, kRunning };
  enum class Share { kNone, kPending, kShared };

  struct Seq {
    int64_t id = 0;
    int64_t group = -1;      // owning group (-1: none)
    bool is_prefix = false;  // prefix pseudo-sequence of a group
    std::vector<int32_t> tokens;
    int64_t num_computed = 0;
    std::vector<int32_t> pages;  // block table
    State state = State::kWaiting;
    int64_t admit_order = 0;      // larger = admitted later (victim order)
    int64_t scheduled_step = -1;  // step in which it was last scheduled
    int preemptions = 0;
  };

  struct Group {
    Share share = Share::kNone;
    int64_t prefix_id = -1;              // while share == kPending
    std::vector<int32_t> prefix_tokens;  // the shared S * page_size tokens
    std::vector<int32_t> shared_pages;   // held while share == kShared
    int64_t live_samples = 0;            // samples not removed
    int64_t waiting = 0;                 // live samples in kWaiting
  };

  Seq& seq(int64_t id) { return *seqs_.at(id); }
  int64_t NewPrefix(int64_t group_id);
  bool Blocked(const Seq& s) const;
  // Takes pages so that `s` can hold `tokens` tokens, preempting others (or
  // itself: false) when the cache is full.
  bool EnsurePages(Seq& s, int64_t tokens, StepPlan& plan);
  // Drops one shared prefix held for waiting samples; false if none.
  bool DropOneSharedPrefix();
  void ReleaseShared(Group& g);
  void Preempt(Seq& s, StepPlan* plan);
  bool Admit(Seq& s);
  void RemoveFromWaiting(int64_t id);
  void RemoveFromRunning(int64_t id);
  void AddPiece(Seq& s, int64_t count, StepPlan& plan);
  void BuildBatch(StepPlan& plan);

  SchedulerOptions options_;
  BlockManager blocks_;
  std::map<int64_t, std::unique_ptr<Seq>> seqs_;
  std::map<int64_t, Group> groups_;
  std::deque<int64_t> waiting_;   // FIFO; preempted sequences go to the front
  std::vector<int64_t> running_;  // admission order
  int64_t waiting_samples_ = 0;
  int64_t next_id_ = 1;
  int64_t next_group_ = 1;
  int64_t admit_counter_ = 0;
  int64_t step_ = 0;
};

}  // namespace lockstep::rollout

#endif  // LOCKSTEP_ROLLOUT_SERVICE_SCHEDULER_H_
