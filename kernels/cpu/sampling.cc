#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/threading.h"
#include "kernels/sampling_math.h"

namespace lockstep::kernels::cpu {
namespace {

namespace sm = sampling_math;

int32_t ArgmaxRow(const float* x, int64_t vocab) {
  int64_t best = -1;
  for (int64_t j = 0; j < vocab; ++j) {
    if (std::isnan(x[j])) continue;
    if (best < 0 || x[j] > x[best]) best = j;
  }
  return static_cast<int32_t>(best < 0 ? 0 : best);
}

float ApplyAdjustment(float v, const LogitAdjustment& e) {
  return sm::AdjustedLogit(v, e.bias, e.repetition, e.subtract, e.banned != 0);
}

struct Scratch {
  explicit Scratch(int64_t vocab) : a(vocab), z(vocab), order(vocab), kept(vocab) {}
  std::vector<float> a, z;
  std::vector<int32_t> order;
  std::vector<char> kept;
};

struct RowOut {
  int32_t token = 0;
  float logprob = 0.0f;
  int32_t last_kept = 0;
};

// Order O on adjusted logits: larger key first.
struct Earlier {
  const float* a;
  bool operator()(int32_t i, int32_t j) const {
    return sm::OrderKey(a[i], i) > sm::OrderKey(a[j], j);
  }
};

RowOut SampleRow(const float* x, int64_t vocab, const SamplingParams& sp,
                 int64_t position, const LogitAdjustment* adj, int64_t n_adj,
                 int32_t target, Scratch& s) {
  float* a = s.a.data();
  std::copy(x, x + vocab, a);
  for (int64_t e = 0; e < n_adj; ++e) a[adj[e].token] = ApplyAdjustment(a[adj[e].token], adj[e]);
  RowOut out;
  if (sp.temperature < kMinSamplingTemperature) {
    const int32_t g = ArgmaxRow(a, vocab);
    out.token = target >= 0 ? target : g;
    out.last_kept = g;
    out.logprob = out.token == g ? 0.0f : -std::numeric_limits<float>::infinity();
    return out;
  }
  constexpr float kMax = std::numeric_limits<float>::max();
  float* z = s.z.data();
  char* kept = s.kept.data();
  bool any = false;
  float zmax = -kMax;
  for (int64_t j = 0; j < vocab; ++j) {
    const bool valid = !std::isnan(a[j]) && a[j] != -std::numeric_limits<float>::infinity();
    kept[j] = valid;
    if (!valid) continue;
    z[j] = std::clamp(a[j] / sp.temperature, -kMax, kMax);
    zmax = any ? std::max(zmax, z[j]) : z[j];
    any = true;
  }
  if (!any) {
    out.token = target >= 0 ? target : ArgmaxRow(a, vocab);
    out.last_kept = out.token;
    out.logprob = -std::numeric_limits<float>::infinity();
    return out;
  }
  const double zmax_d = zmax;
  // Step 4: min_p, a per-entry test that is monotone along O.
  int64_t n = 0;
  if (sp.min_p > 0.0f) {
    const double log_min_p = sm::PortableLog(sp.min_p);
    for (int64_t j = 0; j < vocab; ++j) {
      if (kept[j] && !(static_cast<double>(z[j]) - zmax_d >= log_min_p)) kept[j] = 0;
    }
  }
  int32_t* order = s.order.data();
  for (int64_t j = 0; j < vocab; ++j) {
    if (kept[j]) order[n++] = static_cast<int32_t>(j);
  }
  const Earlier earlier{a};
  // Step 5: top-k. `head` = entries of `order` known to be sorted by O.
  int64_t head = 0;
  if (sp.top_k > 0 && sp.top_k < n) {
    std::nth_element(order, order + (sp.top_k - 1), order + n, earlier);
    for (int64_t i = sp.top_k; i < n; ++i) kept[order[i]] = 0;
    n = sp.top_k;
  }
  // Step 6: top-p over what is left, walking O as far as needed.
  if (sp.top_p < 1.0f) {
    uint64_t total = 0;
    for (int64_t i = 0; i < n; ++i) total += sm::Mass(z[order[i]], zmax_d);
    double want = std::ceil(static_cast<double>(sp.top_p) * static_cast<double>(total));
    const uint64_t target_mass =
        want < 1.0 ? 1 : std::min<uint64_t>(total, static_cast<uint64_t>(want));
    uint64_t cum = 0;
    int64_t len = n;
    int64_t next = std::min<int64_t>(n, 64);
    while (true) {
      std::partial_sort(order + head, order + next, order + n, earlier);
      bool done = false;
      for (int64_t i = head; i < next; ++i) {
        cum += sm::Mass(z[order[i]], zmax_d);
        if (cum >= target_mass) {
          len = i + 1;
          done = true;
          break;
        }
      }
      head = next;
      if (done || next == n) break;
      next = std::min<int64_t>(n, next * 4);
    }
    for (int64_t i = len; i < n; ++i) kept[order[i]] = 0;
    n = len;
  }
  // The kept set is order[0, n): its mass and its last entry in O.
  uint64_t kept_mass = 0;
  int32_t last = order[0];
  for (int64_t i = 0; i < n; ++i) {
    kept_mass += sm::Mass(z[order[i]], zmax_d);
    if (earlier(last, order[i])) last = order[i];
  }
  out.last_kept = last;
  if (target >= 0) {
    out.token = target;
  } else {
    // Step 7: Gumbel-max over the kept set in index order (ties: lower j).
    int64_t best = -1;
    double best_key = 0.0;
    for (int64_t j = 0; j < vocab; ++j) {
      if (!kept[j]) continue;
      const double key = static_cast<double>(z[j]) + sm::Gumbel(sp.seed, position, j);
      if (best < 0 || key > best_key) {
        best = j;
        best_key = key;
      }
    }
    out.token = static_cast<int32_t>(best);
  }
  out.logprob = kept[out.token] ? sm::KeptLogprob(z[out.token], zmax_d, kept_mass)
                                : -std::numeric_limits<float>::infinity();
  return out;
}

}  // namespace

absl::Status Sample(const SampleArgs& args) {
  for (int64_t r = 0; r < args.rows; ++r) {
    absl::Status st = CheckSamplingParams(args.params[r], r);
    if (!st.ok()) return st;
    if (args.targets != nullptr && (args.targets[r] < 0 || args.targets[r] >= args.vocab)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Sample: targets[", r, "] = ", args.targets[r], " is outside [0, ", args.vocab, ")"));
    }
    if (args.adjust_offsets == nullptr) continue;
    const int64_t begin = args.adjust_offsets[r], end = args.adjust_offsets[r + 1];
    if (begin < 0 || end < begin) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Sample: adjust_offsets[", r, "..", r + 1, "] = ", begin, ", ", end, " decrease"));
    }
    if (end > begin && args.adjustments == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Sample: row ", r, " has ", end - begin, " adjustments but adjustments is null"));
    }
    for (int64_t e = begin; e < end; ++e) {
      st = CheckLogitAdjustment(args.adjustments[e], args.vocab, r);
      if (!st.ok()) return st;
      if (e > begin && args.adjustments[e].token <= args.adjustments[e - 1].token) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Sample: row ", r, " adjustment tokens must be distinct and ascending"));
      }
    }
  }
  if (args.rows == 0) return absl::OkStatus();
  ParallelFor(args.rows, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(args.vocab);
    for (int64_t r = begin; r < end; ++r) {
      const LogitAdjustment* adj = nullptr;
      int64_t n_adj = 0;
      if (args.adjust_offsets != nullptr) {
        adj = args.adjustments + args.adjust_offsets[r];
        n_adj = args.adjust_offsets[r + 1] - args.adjust_offsets[r];
      }
      const RowOut o = SampleRow(args.logits + r * args.ld, args.vocab, args.params[r],
                                 args.positions != nullptr ? args.positions[r] : 0, adj, n_adj,
                                 args.targets != nullptr ? args.targets[r] : -1, scratch);
      if (args.tokens_out != nullptr) args.tokens_out[r] = o.token;
      if (args.logprobs_out != nullptr) args.logprobs_out[r] = o.logprob;
      if (args.last_kept_out != nullptr) args.last_kept_out[r] = o.last_kept;
    }
  });
  return absl::OkStatus();
}

absl::Status Argmax(const float* logits, int64_t ld, int64_t rows,
                    int64_t vocab, int32_t* tokens_out) {
  if (rows == 0) return absl::OkStatus();
  const int64_t grain = vocab >= 16384 ? 1 : 16384 / vocab;
  ParallelFor(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      tokens_out[r] = ArgmaxRow(logits + r * ld, vocab);
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
