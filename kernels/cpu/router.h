// CPU implementation of kernels/router.h.
#ifndef LOCKSTEP_KERNELS_CPU_ROUTER_H_
#define LOCKSTEP_KERNELS_CPU_ROUTER_H_

#include "absl/status/status.h"
#include "kernels/router.h"

namespace lockstep::kernels::cpu {

// router_math::RouteRow per row, rows split over the worker pool. Arguments
// must already be validated. Returns OK.
absl::Status RouteTopK(const RouteTopKArgs& args);

}  // namespace lockstep::kernels::cpu

#endif  // LOCKSTEP_KERNELS_CPU_ROUTER_H_
