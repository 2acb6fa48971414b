// The rollout's way of scoring, for the model tests: sequences fed through
// Model::StepLogits over a paged KV cache, chunk by chunk, several sequences per
// step, then the kernel mode's log-softmax.
#ifndef LOCKSTEP_TESTS_COMMON_MODEL_PAGED_DECODE_H_
#define LOCKSTEP_TESTS_COMMON_MODEL_PAGED_DECODE_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "common/model/model.h"
#include "gtest/gtest.h"

namespace lockstep::common::testing {

// Runs sequences through the paged incremental forward. Each sequence is fed
// in chunks of `chunk` tokens (all sequences advance together in one batch
// per step); pages are assigned by a permutation drawn from `page_seed`.
// Returns per sequence the logprob of token i+1 for every i.
inline std::vector<std::vector<float>> Incremental(const Model& model,
                                            const std::vector<std::vector<int32_t>>& seqs,
                                            int chunk, int page_size, uint64_t page_seed) {
  const int64_t max_len = std::max_element(seqs.begin(), seqs.end(), [](auto& a, auto& b) {
                            return a.size() < b.size();
                          })->size();
  const int64_t blocks = (max_len + page_size - 1) / page_size;
  const int64_t num_pages = blocks * seqs.size() + 3;
  auto cache = model.CreateKvCache(num_pages, page_size);
  EXPECT_TRUE(cache.ok());
  std::vector<int32_t> perm(num_pages);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(page_seed));
  std::vector<int32_t> tables(seqs.size() * blocks);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = perm[i];
  std::vector<std::vector<float>> out(seqs.size());
  const int64_t V = model.config().vocab_size;
  for (int64_t start = 0; start < max_len; start += chunk) {
    ForwardBatch b;
    b.block_tables = tables;
    b.num_seqs = seqs.size();
    b.max_blocks_per_seq = blocks;
    std::vector<int32_t> targets;
    std::vector<std::pair<int, int64_t>> owners;
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int64_t p = start; p < std::min<int64_t>(start + chunk, seqs[s].size()); ++p) {
        b.tokens.push_back(seqs[s][p]);
        b.positions.push_back(p);
        b.seq_ids.push_back(s);
        b.slots.push_back(int64_t{tables[s * blocks + p / page_size]} * page_size + p % page_size);
        if (p + 1 < static_cast<int64_t>(seqs[s].size())) {
          b.logit_rows.push_back(b.tokens.size() - 1);
          targets.push_back(seqs[s][p + 1]);
          owners.emplace_back(s, p);
        }
      }
    }
    if (b.tokens.empty()) continue;
    auto logits = model.StepLogits(b, cache->get());
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (targets.empty()) continue;
    auto lp = ComputeTokenLogprobs(model.options().mode, *logits, V, targets, 0);
    EXPECT_TRUE(lp.ok());
    for (size_t i = 0; i < owners.size(); ++i) out[owners[i].first].push_back(lp->target[i]);
  }
  return out;
}

}  // namespace lockstep::common::testing

#endif  // LOCKSTEP_TESTS_COMMON_MODEL_PAGED_DECODE_H_
