#include "rollout_service/block_manager.h"

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace lockstep::rollout {

BlockManager::BlockManager(int64_t num_pages, int64_t page_size)
    : num_pages_(std::max<int64_t>(num_pages, 1)),
      page_size_(std::max<int64_t>(page_size, 1)),
      refs_(num_pages_, 0) {
  free_.reserve(num_pages_);
  for (int64_t p = num_pages_ - 1; p >= 0; --p) {
    free_.push_back(static_cast<int32_t>(p));
  }
}

absl::StatusOr<std::vector<int32_t>> BlockManager::Allocate(int64_t n) {
  if (n < 0 || n > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache: ", n, " pages wanted, ", num_free(), " of ",
                     num_pages_, " free"));
  }
  std::vector<int32_t> pages;
  pages.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    refs_[p] = 1;
    pages.push_back(p);
  }
  return pages;
}

void BlockManager::AddRef(int32_t page) {
  // A reference to a free page is a scheduler bug; failing loudly beats
  // silently corrupting another sequence's KV.
  if (page < 0 || page >= num_pages_ || refs_[page] <= 0) std::abort();
  ++refs_[page];
}

void BlockManager::Release(int32_t page) {
  if (page < 0 || page >= num_pages_ || refs_[page] <= 0) std::abort();
  if (--refs_[page] == 0) free_.push_back(page);
}

void BlockManager::Release(const std::vector<int32_t>& pages) {
  for (int32_t p : pages) Release(p);
}

}  // namespace lockstep::rollout
