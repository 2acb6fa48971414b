// absl::Status propagation macros (Abseil 20220623 has none of its own).
#ifndef LOCKSTEP_COMMON_STATUS_STATUS_MACROS_H_
#define LOCKSTEP_COMMON_STATUS_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define LOCKSTEP_RETURN_IF_ERROR(expr)                 \
  do {                                                 \
    ::absl::Status _lockstep_status = (expr);          \
    if (!_lockstep_status.ok()) return _lockstep_status; \
  } while (0)

#define LOCKSTEP_STATUS_CONCAT_INNER_(a, b) a##b
#define LOCKSTEP_STATUS_CONCAT_(a, b) LOCKSTEP_STATUS_CONCAT_INNER_(a, b)

// LOCKSTEP_ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr),
// returns its status on error, else moves its value into `lhs` (which may be
// a declaration such as `auto x`).
#define LOCKSTEP_ASSIGN_OR_RETURN(lhs, expr)                                  \
  LOCKSTEP_ASSIGN_OR_RETURN_IMPL_(                                            \
      LOCKSTEP_STATUS_CONCAT_(_lockstep_statusor_, __LINE__), lhs, expr)

#define LOCKSTEP_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                     \
  if (!statusor.ok()) return std::move(statusor).status();    \
  lhs = std::move(statusor).value()

#endif  // LOCKSTEP_COMMON_STATUS_STATUS_MACROS_H_
