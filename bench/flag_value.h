// The value of a "--name=value" command-line argument, for the benches that
// parse their own flags (model_step_bench, train_step_bench).
#ifndef LOCKSTEP_BENCH_FLAG_VALUE_H_
#define LOCKSTEP_BENCH_FLAG_VALUE_H_

#include <cstring>

namespace lockstep::bench {

// `arg` (one argv entry) past "--<name>=", or nullptr when `arg` is not that
// flag. The result points into `arg`.
inline const char* FlagValue(const char* arg, const char* name) {
  if (std::strncmp(arg, "--", 2) != 0) return nullptr;
  const size_t n = std::strlen(name);
  if (std::strncmp(arg + 2, name, n) != 0 || arg[2 + n] != '=') return nullptr;
  return arg + 3 + n;
}

}  // namespace lockstep::bench

#endif  // LOCKSTEP_BENCH_FLAG_VALUE_H_
