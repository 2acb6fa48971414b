// Page allocator of the rollout's paged KV cache. Pages are reference
// counted so that several sequences can share the pages of a common prompt
// prefix (the n samples of one prompt).
#ifndef LOCKSTEP_ROLLOUT_SERVICE_BLOCK_MANAGER_H_
#define LOCKSTEP_ROLLOUT_SERVICE_BLOCK_MANAGER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace lockstep::rollout {

// Hands out page ids in [0, num_pages). Not thread-safe (the engine thread
// owns it).
class BlockManager {
 public:
  // `num_pages` pages of `page_size` tokens each (both >= 1).
  BlockManager(int64_t num_pages, int64_t page_size);

  int64_t num_pages() const { return num_pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t num_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t num_used() const { return num_pages_ - num_free(); }
  // Fraction of pages in use, in [0, 1].
  double usage() const {
    return static_cast<double>(num_used()) / static_cast<double>(num_pages_);
  }

  // Pages needed to hold `tokens` tokens.
  int64_t PagesFor(int64_t tokens) const {
    return (tokens + page_size_ - 1) / page_size_;
  }

  // True when `n` pages are free.
  bool CanAllocate(int64_t n) const { return n <= num_free(); }

  // Takes `n` free pages (each with reference count 1); the most recently
  // freed pages are reused first.
  // RESOURCE_EXHAUSTED (nothing taken) when fewer than `n` are free.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);

  // Adds one reference to an allocated page (a sharer).
  void AddRef(int32_t page);

  // Drops one reference; the page is free again at zero.
  void Release(int32_t page);
  void Release(const std::vector<int32_t>& pages);

  // Current reference count of `page` (0 = free).
  int32_t ref_count(int32_t page) const { return refs_[page]; }

 private:
  int64_t num_pages_;
  int64_t page_size_;
  std::vector<int32_t> refs_;  // [num_pages]
  std::vector<int32_t> free_;  // stack of free page ids
};

}  // namespace lockstep::rollout

#endif  // LOCKSTEP_ROLLOUT_SERVICE_BLOCK_MANAGER_H_
