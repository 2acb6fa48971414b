#include "tests/rollout_service/fake_model.h"

#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"

namespace lockstep::rollout::testing {
namespace {

class FakeKvCache : public common::KvCache {
 public:
  FakeKvCache(int64_t num_pages, int64_t page_size)
      : num_pages_(num_pages),
        page_size_(page_size),
        token_(num_pages * page_size, -1),
        position_(num_pages * page_size, -1),
        weights_(num_pages * page_size, 0) {}
  int64_t num_pages() const override { return num_pages_; }
  int64_t page_size() const override { return page_size_; }

  int64_t num_pages_;
  int64_t page_size_;
  std::vector<int32_t> token_;
  std::vector<int64_t> position_;
  std::vector<uint64_t> weights_;
};

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

FakeModel::FakeModel(const FakeModelOptions& options) : fake_(options) {
  config_.model_type = "llama";
  config_.vocab_size = options.vocab;
  config_.hidden_size = 8;
  config_.intermediate_size = 8;
  config_.num_hidden_layers = 1;
  config_.num_attention_heads = 1;
  config_.num_key_value_heads = 1;
  config_.head_dim = 8;
  config_.max_position_embeddings = options.max_position;
  config_.dtype = kernels::DType::kF32;
}

uint64_t FakeModel::Mix(uint64_t h, int32_t token, int64_t position) {
  return SplitMix(h ^ SplitMix(static_cast<uint64_t>(token) * 1000003ull +
                               static_cast<uint64_t>(position)));
}

void FakeModel::LogitsFor(uint64_t h, float* out) const {
  for (int64_t v = 0; v < config_.vocab_size; ++v) {
    const uint64_t r = SplitMix(h ^ SplitMix(fake_.weights * 7919ull + v));
    out[v] = static_cast<float>(r >> 40) * (4.0f / 16777216.0f) - 2.0f;
  }
}

absl::StatusOr<std::unique_ptr<common::KvCache>> FakeModel::CreateKvCache(
    int64_t num_pages, int64_t page_size) const {
  return std::unique_ptr<common::KvCache>(
      new FakeKvCache(num_pages, page_size));
}

absl::StatusOr<std::vector<float>> FakeModel::StepLogits(
    const common::ForwardBatch& b, common::KvCache* cache_base) const {
  forward_calls_.fetch_add(1);
  if (fake_.forward_sleep_us > 0) {
    std::this_thread::sleep_for(
        std::chrono::microseconds(fake_.forward_sleep_us));
  }
  auto* cache = static_cast<FakeKvCache*>(cache_base);
  const int64_t t = static_cast<int64_t>(b.tokens.size());
  int64_t prev = max_tokens_.load();
  while (t > prev && !max_tokens_.compare_exchange_weak(prev, t)) {
  }
  if (b.positions.size() != b.tokens.size() ||
      b.seq_ids.size() != b.tokens.size() ||
      b.slots.size() != b.tokens.size() ||
      static_cast<int64_t>(b.block_tables.size()) !=
          b.num_seqs * b.max_blocks_per_seq) {
    return absl::InvalidArgumentError("inconsistent batch sizes");
  }
  // Like the real Model, a batch that wants no logits computes nothing (K/V
  // writes included): the engine must always ask for a row.
  if (b.logit_rows.empty()) return std::vector<float>();
  const int64_t ps = cache->page_size_;
  const int64_t cap = cache->num_pages_ * ps;
  for (int64_t i = 0; i < t; ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError("token out of range");
    }
    if (b.slots[i] < 0 || b.slots[i] >= cap) {
      return absl::InvalidArgumentError("slot out of range");
    }
    const int64_t row = b.seq_ids[i];
    if (row < 0 || row >= b.num_seqs)
      return absl::InvalidArgumentError("bad seq id");
    const int64_t blk = b.positions[i] / ps;
    if (blk >= b.max_blocks_per_seq) {
      return absl::InvalidArgumentError("position beyond the block table");
    }
    const int64_t expect =
        static_cast<int64_t>(b.block_tables[row * b.max_blocks_per_seq + blk]) *
            ps +
        b.positions[i] % ps;
    if (expect != b.slots[i]) {
      return absl::InvalidArgumentError(
          absl::StrCat("slot ", b.slots[i], " of token ", i,
                       " differs from its block table (", expect, ")"));
    }
    cache->token_[b.slots[i]] = b.tokens[i];
    cache->position_[b.slots[i]] = b.positions[i];
    cache->weights_[b.slots[i]] = fake_.weights;
  }
  const int64_t vocab = config_.vocab_size;
  std::vector<float> logits(b.logit_rows.size() * vocab);
  for (size_t r = 0; r < b.logit_rows.size(); ++r) {
    const int64_t i = b.logit_rows[r];
    const int64_t row = b.seq_ids[i];
    uint64_t h = 0;
    for (int64_t p = 0; p <= b.positions[i]; ++p) {
      const int64_t slot =
          static_cast<int64_t>(
              b.block_tables[row * b.max_blocks_per_seq + p / ps]) *
              ps +
          p % ps;
      if (cache->position_[slot] != p) {
        return absl::InternalError(
            absl::StrCat("KV corruption: slot ", slot, " holds position ",
                         cache->position_[slot], ", expected ", p));
      }
      if (cache->weights_[slot] != fake_.weights) {
        return absl::InternalError(absl::StrCat(
            "mixed versions: K/V at position ", p, " written by weights ",
            cache->weights_[slot], ", read by ", fake_.weights));
      }
      h = Mix(h, cache->token_[slot], p);
    }
    LogitsFor(h, &logits[r * vocab]);
  }
  return logits;
}

absl::StatusOr<std::vector<std::vector<float>>> FakeModel::SequenceLogits(
    const std::vector<std::vector<int32_t>>& sequences) const {
  std::vector<std::vector<float>> out;
  const int64_t vocab = config_.vocab_size;
  for (const auto& s : sequences) {
    std::vector<float> logits(s.size() * vocab);
    uint64_t h = 0;
    for (size_t p = 0; p < s.size(); ++p) {
      h = Mix(h, s[p], static_cast<int64_t>(p));
      LogitsFor(h, &logits[p * vocab]);
    }
    out.push_back(std::move(logits));
  }
  return out;
}

absl::StatusOr<std::vector<std::vector<float>>> FakeModel::Score(
    const std::vector<std::vector<int32_t>>& sequences,
    const std::vector<int64_t>& prefix_lens) const {
  if (fake_.score_sleep_us > 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(fake_.score_sleep_us));
  }
  auto full = SequenceLogits(sequences);
  if (!full.ok()) return full.status();
  const int64_t vocab = config_.vocab_size;
  std::vector<std::vector<float>> out;
  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto& s = sequences[i];
    const int64_t pl = prefix_lens[i];
    std::vector<float> rows((*full)[i].begin() + (pl - 1) * vocab,
                            (*full)[i].begin() + (s.size() - 1) * vocab);
    std::vector<int32_t> targets(s.begin() + pl, s.end());
    auto lp =
        common::ComputeTokenLogprobs(options_.mode, rows, vocab, targets, 0);
    if (!lp.ok()) return lp.status();
    out.push_back(std::move(lp->target));
  }
  return out;
}

}  // namespace lockstep::rollout::testing
