#include "rollout_service/scheduler.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"

namespace lockstep::rollout {

Scheduler::Scheduler(const SchedulerOptions& options)
    : options_(options), blocks_(options.num_pages, options.page_size) {
  options_.num_pages = blocks_.num_pages();
  options_.page_size = blocks_.page_size();
  options_.max_batch_tokens = std::max<int64_t>(options_.max_batch_tokens, 1);
  options_.max_running = std::max<int64_t>(options_.max_running, 1);
}

std::vector<int64_t> Scheduler::AddGroup(const std::vector<int32_t>& prompt,
                                         int n) {
  const int64_t ps = options_.page_size;
  const int64_t len = static_cast<int64_t>(prompt.size());
  const int64_t shared_pages =
      (options_.prefix_sharing && n > 1 && len > 0) ? (len - 1) / ps : 0;
  int64_t group_id = -1;
  if (shared_pages > 0) {
    group_id = next_group_++;
    Group& g = groups_[group_id];
    g.prefix_tokens.assign(prompt.begin(), prompt.begin() + shared_pages * ps);
    g.live_samples = n;
    g.waiting = n;
    g.share = Share::kPending;
    g.prefix_id = NewPrefix(group_id);
    waiting_.push_back(g.prefix_id);
  }
  std::vector<int64_t> ids;
  ids.reserve(n);
  for (int i = 0; i < n; ++i) {
    auto s = std::make_unique<Seq>();
    s->id = next_id_++;
    s->group = group_id;
    s->tokens = prompt;
    ids.push_back(s->id);
    waiting_.push_back(s->id);
    seqs_.emplace(s->id, std::move(s));
    ++waiting_samples_;
  }
  return ids;
}

int64_t Scheduler::NewPrefix(int64_t group_id) {
  auto p = std::make_unique<Seq>();
  p->id = next_id_++;
  p->group = group_id;
  p->is_prefix = true;
  p->tokens = groups_.at(group_id).prefix_tokens;
  const int64_t id = p->id;
  seqs_.emplace(id, std::move(p));
  return id;
}

bool Scheduler::Blocked(const Seq& s) const {
  if (s.is_prefix || s.group < 0) return false;
  return groups_.at(s.group).share == Share::kPending;
}

void Scheduler::ReleaseShared(Group& g) {
  blocks_.Release(g.shared_pages);
  g.shared_pages.clear();
  g.share = Share::kNone;
}

bool Scheduler::DropOneSharedPrefix() {
  for (auto& [id, g] : groups_) {
    if (g.share == Share::kShared) {
      ReleaseShared(g);
      return true;
    }
  }
  return false;
}

void Scheduler::RemoveFromWaiting(int64_t id) {
  auto it = std::find(waiting_.begin(), waiting_.end(), id);
  if (it != waiting_.end()) waiting_.erase(it);
}

void Scheduler::RemoveFromRunning(int64_t id) {
  auto it = std::find(running_.begin(), running_.end(), id);
  if (it != running_.end()) running_.erase(it);
}

void Scheduler::Preempt(Seq& s, StepPlan* plan) {
  blocks_.Release(s.pages);
  s.pages.clear();
  s.num_computed = 0;
  s.state = State::kWaiting;
  RemoveFromRunning(s.id);
  waiting_.push_front(s.id);
  if (!s.is_prefix) {
    ++s.preemptions;
    ++waiting_samples_;
    if (s.group >= 0) ++groups_.at(s.group).waiting;
    if (plan != nullptr) plan->preempted.push_back(s.id);
  }
}

bool Scheduler::EnsurePages(Seq& s, int64_t tokens, StepPlan& plan) {
  const int64_t need =
      blocks_.PagesFor(tokens) - static_cast<int64_t>(s.pages.size());
  if (need <= 0) return true;
  while (!blocks_.CanAllocate(need)) {
    // Victim: the most recently admitted running sequence that has no piece
    // in this step yet (its piece would reference freed pages).
    // Only sequences admitted after `s` are victims: an older sequence is
    // never preempted in favour of a younger one.
    Seq* victim = nullptr;
    for (int64_t id : running_) {
      Seq& r = seq(id);
      if (r.id == s.id || r.scheduled_step == step_ ||
          r.admit_order < s.admit_order) {
        continue;
      }
      if (victim == nullptr || r.admit_order > victim->admit_order) victim = &r;
    }
    if (victim != nullptr) {
      Preempt(*victim, &plan);
      continue;
    }
    if (DropOneSharedPrefix()) continue;
    Preempt(s, &plan);
    return false;
  }
  auto pages = blocks_.Allocate(need);
  s.pages.insert(s.pages.end(), pages->begin(), pages->end());
  return true;
}

bool Scheduler::Admit(Seq& s) {
  int64_t adopted = 0;
  Group* g = s.group >= 0 ? &groups_.at(s.group) : nullptr;
  const bool adopt = !s.is_prefix && g != nullptr && g->share == Share::kShared;
  if (adopt) adopted = static_cast<int64_t>(g->shared_pages.size());
  const int64_t need =
      blocks_.PagesFor(static_cast<int64_t>(s.tokens.size())) - adopted;
  if (!blocks_.CanAllocate(need)) return false;
  s.pages.clear();
  if (adopt) {
    for (int32_t p : g->shared_pages) blocks_.AddRef(p);
    s.pages = g->shared_pages;
    s.num_computed = adopted * options_.page_size;
  } else {
    s.num_computed = 0;
  }
  auto pages = blocks_.Allocate(need);
  s.pages.insert(s.pages.end(), pages->begin(), pages->end());
  s.state = State::kRunning;
  s.admit_order = ++admit_counter_;
  RemoveFromWaiting(s.id);
  running_.push_back(s.id);
  if (!s.is_prefix) {
    --waiting_samples_;
    if (g != nullptr) {
      --g->waiting;
      // Nobody left to adopt the prefix: the samples' own references keep
      // the pages alive as long as they are needed.
      if (g->share == Share::kShared && g->waiting == 0) ReleaseShared(*g);
    }
  }
  return true;
}

void Scheduler::AddPiece(Seq& s, int64_t count, StepPlan& plan) {
  plan.pieces.push_back({s.id, s.num_computed, count});
  s.scheduled_step = step_;
  if (count == 1) {
    plan.decode_tokens += 1;
  } else {
    plan.prefill_tokens += count;
  }
}

StepPlan Scheduler::Schedule() {
  ++step_;
  StepPlan plan;
  int64_t budget = options_.max_batch_tokens;

  // 1 + 2: running sequences, decodes before prefill continuations.
  for (int pass = 0; pass < 2 && budget > 0; ++pass) {
    const std::vector<int64_t> order = running_;
    for (int64_t id : order) {
      if (budget == 0) break;
      auto it = seqs_.find(id);
      if (it == seqs_.end()) continue;
      Seq& s = *it->second;
      if (s.state != State::kRunning || s.scheduled_step == step_) continue;
      const int64_t remaining =
          static_cast<int64_t>(s.tokens.size()) - s.num_computed;
      if (remaining <= 0) continue;
      if ((pass == 0) != (remaining == 1)) continue;
      const int64_t count = std::min(remaining, budget);
      if (!EnsurePages(s, s.num_computed + count, plan)) continue;
      AddPiece(s, count, plan);
      budget -= count;
    }
  }

  // 3: admission.
  while (budget > 0 &&
         static_cast<int64_t>(running_.size()) < options_.max_running) {
    Seq* next = nullptr;
    for (int64_t id : waiting_) {
      Seq& w = seq(id);
      if (!Blocked(w)) {
        next = &w;
        break;
      }
    }
    if (next == nullptr) break;
    if (!Admit(*next)) {
      // Nothing runs, yet the oldest sequence does not fit: only prefixes
      // held for other waiting samples can be in the way.
      if (running_.empty() && DropOneSharedPrefix()) continue;
      break;
    }
    const int64_t remaining =
        static_cast<int64_t>(next->tokens.size()) - next->num_computed;
    const int64_t count = std::min(remaining, budget);
    AddPiece(*next, count, plan);
    budget -= count;
  }

  BuildBatch(plan);
  return plan;
}

void Scheduler::BuildBatch(StepPlan& plan) {
  common::ForwardBatch& b = plan.batch;
  const int64_t ps = options_.page_size;
  int64_t max_blocks = 0;
  int64_t total = 0;
  for (const StepPiece& p : plan.pieces) {
    max_blocks = std::max<int64_t>(max_blocks, seq(p.seq_id).pages.size());
    total += p.count;
  }
  b.num_seqs = static_cast<int64_t>(plan.pieces.size());
  b.max_blocks_per_seq = max_blocks;
  b.tokens.reserve(total);
  b.positions.reserve(total);
  b.seq_ids.reserve(total);
  b.slots.reserve(total);
  b.block_tables.assign(b.num_seqs * max_blocks, 0);
  for (int64_t row = 0; row < b.num_seqs; ++row) {
    const StepPiece& p = plan.pieces[row];
    Seq& s = seq(p.seq_id);
    std::copy(s.pages.begin(), s.pages.end(),
              b.block_tables.begin() + row * max_blocks);
    for (int64_t pos = p.start; pos < p.start + p.count; ++pos) {
      b.tokens.push_back(s.tokens[pos]);
      b.positions.push_back(static_cast<int32_t>(pos));
      b.seq_ids.push_back(static_cast<int32_t>(row));
      b.slots.push_back(static_cast<int64_t>(s.pages[pos / ps]) * ps +
                        pos % ps);
    }
    if (!s.is_prefix &&
        p.start + p.count == static_cast<int64_t>(s.tokens.size())) {
      b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
      plan.sample_seqs.push_back(s.id);
    }
  }
}

void Scheduler::Commit(const StepPlan& plan) {
  for (const StepPiece& p : plan.pieces) {
    auto it = seqs_.find(p.seq_id);
    if (it == seqs_.end()) continue;
    Seq& s = *it->second;
    s.num_computed = p.start + p.count;
    if (s.is_prefix &&
        s.num_computed == static_cast<int64_t>(s.tokens.size())) {
      // The prefix is in the cache: its pages (and their references) pass to
      // the group, and its samples become admissible.
      Group& g = groups_.at(s.group);
      g.shared_pages = std::move(s.pages);
      g.share = Share::kShared;
      g.prefix_id = -1;
      RemoveFromRunning(s.id);
      seqs_.erase(it);
      if (g.waiting == 0) ReleaseShared(g);
    }
  }
}

void Scheduler::AppendToken(int64_t seq_id, int32_t token) {
  seq(seq_id).tokens.push_back(token);
}

void Scheduler::Remove(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || it->second->is_prefix) return;
  Seq& s = *it->second;
  blocks_.Release(s.pages);
  if (s.state == State::kWaiting) {
    RemoveFromWaiting(s.id);
    --waiting_samples_;
  } else {
    RemoveFromRunning(s.id);
  }
  const int64_t group_id = s.group;
  const bool was_waiting = s.state == State::kWaiting;
  seqs_.erase(it);
  if (group_id < 0) return;
  Group& g = groups_.at(group_id);
  --g.live_samples;
  if (was_waiting) --g.waiting;
  if (g.share == Share::kShared && g.waiting == 0) ReleaseShared(g);
  if (g.live_samples == 0) {
    if (g.prefix_id >= 0) {
      Seq& p = seq(g.prefix_id);
      blocks_.Release(p.pages);
      RemoveFromWaiting(p.id);
      RemoveFromRunning(p.id);
      seqs_.erase(p.id);
    }
    if (g.share == Share::kShared) ReleaseShared(g);
    groups_.erase(group_id);
  }
}

std::vector<int64_t> Scheduler::PreemptAll() {
  std::vector<int64_t> preempted;
  // Youngest first, so that the oldest ends up at the front of the queue.
  std::vector<int64_t> order = running_;
  std::sort(order.begin(), order.end(), [this](int64_t a, int64_t b) {
    return seq(a).admit_order > seq(b).admit_order;
  });
  for (int64_t id : order) {
    Seq& s = seq(id);
    if (!s.is_prefix) preempted.push_back(id);
    Preempt(s, nullptr);
  }
  for (auto& [id, g] : groups_) {
    if (g.share != Share::kShared) continue;
    ReleaseShared(g);
    // Still worth sharing: prefill the prefix again with the new weights.
    if (g.waiting >= 2) {
      g.share = Share::kPending;
      g.prefix_id = NewPrefix(id);
      waiting_.push_front(g.prefix_id);
    }
  }
  return preempted;
}

const std::vector<int32_t>& Scheduler::tokens(int64_t seq_id) const {
  return seqs_.at(seq_id)->tokens;
}

int Scheduler::preemptions(int64_t seq_id) const {
  return seqs_.at(seq_id)->preemptions;
}

std::string Scheduler::CheckInvariants() const {
  std::vector<int32_t> refs(blocks_.num_pages(), 0);
  for (const auto& [id, s] : seqs_) {
    if (s->state == State::kWaiting && !s->pages.empty()) {
      return absl::StrCat("waiting sequence ", id, " holds pages");
    }
    if (s->state == State::kRunning && static_cast<int64_t>(s->pages.size()) <
                                           blocks_.PagesFor(s->num_computed)) {
      return absl::StrCat("sequence ", id, " has fewer pages than tokens");
    }
    for (int32_t p : s->pages) ++refs[p];
  }
  for (const auto& [id, g] : groups_) {
    for (int32_t p : g.shared_pages) ++refs[p];
    if (g.share == Share::kShared && g.shared_pages.empty()) {
      return absl::StrCat("group ", id, " shares no pages");
    }
  }
  for (int64_t p = 0; p < blocks_.num_pages(); ++p) {
    if (refs[p] != blocks_.ref_count(static_cast<int32_t>(p))) {
      return absl::StrCat("page ", p, " has ", blocks_.ref_count(p),
                          " references, holders count ", refs[p]);
    }
  }
  int64_t waiting_samples = 0;
  for (int64_t id : waiting_) {
    if (!seqs_.at(id)->is_prefix) ++waiting_samples;
  }
  if (waiting_samples != waiting_samples_) {
    return absl::StrCat("waiting sample count ", waiting_samples_, " but ",
                        waiting_samples, " queued");
  }
  return "";
}

}  // namespace lockstep::rollout
