#include "kernels/cpu/embedding.h"

#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/threading.h"
#include "kernels/dtype.h"

namespace lockstep::kernels::cpu {

absl::Status Embedding(const EmbeddingArgs& args) {
  for (int64_t t = 0; t < args.tokens; ++t) {
    const int32_t id = args.ids[t];
    if (id < 0 || id >= args.vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("Embedding: ids[", t, "] = ", id,
                       " is outside [0, vocab=", args.vocab, ")"));
    }
  }
  if (args.tokens == 0 || args.dim == 0) return absl::OkStatus();
  const int64_t grain = args.dim >= 16384 ? 1 : 16384 / args.dim;
  ParallelFor(args.tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = static_cast<int64_t>(args.ids[t]) * args.ld_table;
      float* out = args.out + t * args.ld_out;
      if (args.table_dtype == DType::kF32) {
        std::memcpy(out, static_cast<const float*>(args.table) + row,
                    args.dim * sizeof(float));
      } else {
        const uint16_t* src = static_cast<const uint16_t*>(args.table) + row;
        for (int64_t d = 0; d < args.dim; ++d) out[d] = BF16ToF32(src[d]);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace lockstep::kernels::cpu
