#include "common/wire/parallel_tensors.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace lockstep::common {

absl::Status ForEachTensorInParallel(size_t n, const std::function<absl::Status(size_t)>& fn) {
  if (n == 0) return absl::OkStatus();
  std::vector<absl::Status> errors(n);
  std::atomic<size_t> next{0};
  auto run = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) errors[i] = fn(i);
  };
  const size_t threads =
      std::min<size_t>(n, std::max(1u, std::min(8u, std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(run);
  run();
  for (std::thread& t : pool) t.join();
  for (absl::Status& st : errors) {
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace lockstep::common
