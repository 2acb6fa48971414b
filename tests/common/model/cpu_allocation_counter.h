// Counts the bytes held by LibTorch's CPU tensors, for tests that bound the
// memory a computation keeps or peaks at.
#ifndef LOCKSTEP_TESTS_COMMON_MODEL_CPU_ALLOCATION_COUNTER_H_
#define LOCKSTEP_TESTS_COMMON_MODEL_CPU_ALLOCATION_COUNTER_H_

#include <atomic>
#include <cstdint>
#include <utility>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

namespace lockstep::common::testing {

// Counts the bytes LibTorch's CPU tensors hold (current and peak) while
// installed as the CPU allocator.
class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) const override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    const c10::Device device = inner.device();
    const int64_t now = current_.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    return c10::DataPtr(data, new Block{std::move(inner), n, this}, &Delete, device);
  }

  int64_t current() const { return current_.load(); }
  int64_t peak() const { return peak_.load(); }
  void ResetPeak() { peak_.store(current_.load()); }

 private:
  struct Block {
    c10::DataPtr inner;
    size_t n;
    const CountingCpuAllocator* owner;
  };
  static void Delete(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    b->owner->current_.fetch_sub(static_cast<int64_t>(b->n));
    delete b;
  }

  c10::Allocator* base_;
  mutable std::atomic<int64_t> current_{0};
  mutable std::atomic<int64_t> peak_{0};
};

// Installs a CountingCpuAllocator for its scope. The allocator itself is
// never freed: tensors it allocated may outlive the scope.
class CountCpuAllocations {
 public:
  CountCpuAllocations() : base_(c10::GetCPUAllocator()) {
    counter_ = new CountingCpuAllocator(base_);
    c10::SetCPUAllocator(counter_, /*priority=*/100);
  }
  ~CountCpuAllocations() { c10::SetCPUAllocator(base_, /*priority=*/100); }
  CountingCpuAllocator& counter() { return *counter_; }

 private:
  c10::Allocator* base_;
  CountingCpuAllocator* counter_;
};

}  // namespace lockstep::common::testing

#endif  // LOCKSTEP_TESTS_COMMON_MODEL_CPU_ALLOCATION_COUNTER_H_
