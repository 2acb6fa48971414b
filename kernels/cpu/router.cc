#include "kernels/cpu/router.h"

#include "kernels/cpu/threading.h"
#include "kernels/router_math.h"

namespace lockstep::kernels::cpu {

absl::Status RouteTopK(const RouteTopKArgs& a) {
  ParallelFor(a.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      router_math::RouteRow(a.logits + r * a.ld, a.experts, a.k, a.normalize,
                            a.weights + r * a.k, a.ids + r * a.k,
                            a.probs == nullptr ? nullptr : a.probs + r * a.experts);
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
