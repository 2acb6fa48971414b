#include "common/model/communicator.h"

#include <condition_variable>
#include <cstring>
#include <mutex>

namespace lockstep::common {
namespace {

// Shared state of one in-process group: every rank publishes a pointer, the
// last to arrive releases the others, each copies what it needs, and a second
// barrier keeps the sources alive until all copies are done.
class InProcessState {
 public:
  explicit InProcessState(int size) : size_(size), ptrs_(size, nullptr) {}

  // Two-phase barrier with generation counting so the group can be reused.
  void Barrier() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != gen; });
    }
  }

  void Publish(int rank, void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    ptrs_[rank] = p;
  }
  void* Get(int rank) {
    std::lock_guard<std::mutex> lock(mu_);
    return ptrs_[rank];
  }
  int size() const { return size_; }

 private:
  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  std::vector<void*> ptrs_;
};

class InProcessCommunicator : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<InProcessState> state, int rank)
      : state_(std::move(state)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return state_->size(); }

  absl::Status AllGather(const void* send, size_t bytes, void* recv) override {
    state_->Publish(rank_, const_cast<void*>(send));
    state_->Barrier();
    for (int r = 0; r < size(); ++r) {
      std::memcpy(static_cast<char*>(recv) + r * bytes, state_->Get(r), bytes);
    }
    state_->Barrier();
    return absl::OkStatus();
  }

  // Standard mode only: a ring-style sum (each rank starts at its own
  // neighbour), like a real all-reduce whose order is not the tree's.
  absl::Status AllReduceSum(float* data, size_t count) override {
    const int n = size();
    std::vector<float> acc(data, data + count);
    state_->Publish(rank_, data);
    state_->Barrier();
    // Chunk c is reduced starting at rank c % n, as in a ring all-reduce.
    const size_t chunk = (count + n - 1) / n;
    for (int c = 0; c < n; ++c) {
      const size_t begin = c * chunk;
      const size_t end = std::min(count, begin + chunk);
      for (size_t i = begin; i < end; ++i) {
        float s = static_cast<const float*>(state_->Get(c % n))[i];
        for (int j = 1; j < n; ++j) {
          s += static_cast<const float*>(state_->Get((c + j) % n))[i];
        }
        acc[i] = s;
      }
    }
    state_->Barrier();
    std::memcpy(data, acc.data(), count * sizeof(float));
    return absl::OkStatus();
  }

 private:
  std::shared_ptr<InProcessState> state_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> CreateInProcessGroup(int size) {
  auto state = std::make_shared<InProcessState>(size);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < size; ++r) {
    out.push_back(std::make_unique<InProcessCommunicator>(state, r));
  }
  return out;
}

}  // namespace lockstep::common
