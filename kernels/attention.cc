#include "kernels/attention.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/dispatch.h"
#if LOCKSTEP_WITH_CUDA
#include "kernels/cuda/attention.h"
#endif

namespace lockstep::kernels {
namespace {

bool ValidDType(DType d) { return d == DType::kF32 || d == DType::kBF16; }

absl::Status CheckCache(const char* op, const PagedKvCache& c) {
  if (c.k == nullptr || c.v == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": cache.k and cache.v must be non-null"));
  }
  if (!ValidDType(c.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": unknown cache dtype"));
  }
  if (c.num_pages <= 0 || c.page_size <= 0 || c.num_kv_heads <= 0 ||
      c.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op,
        ": cache needs num_pages, page_size, num_kv_heads and head_dim > 0,"
        " got num_pages=",
        c.num_pages, " page_size=", c.page_size,
        " num_kv_heads=", c.num_kv_heads, " head_dim=", c.head_dim));
  }
  return absl::OkStatus();
}

absl::Status CheckHeads(const char* op, int64_t num_q_heads,
                        int64_t num_kv_heads) {
  if (num_q_heads <= 0 || num_kv_heads <= 0 ||
      num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": num_q_heads (", num_q_heads,
        ") must be a positive multiple of num_kv_heads (", num_kv_heads, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckStride(const char* op, const char* name, int64_t ld,
                         int64_t row) {
  if (ld < row) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", name, "=", ld, " < row length ", row));
  }
  return absl::OkStatus();
}

absl::Status CheckScale(const char* op, float scale) {
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": scale must be finite, got ", scale));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteKv(const KvWriteArgs& args, const ExecContext& ctx) {
  constexpr char kOp[] = "WriteKv";
  if (args.tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": tokens must be >= 0, got ", args.tokens));
  }
  absl::Status s = CheckCache(kOp, args.cache);
  if (!s.ok()) return s;
  if (args.tokens == 0) return absl::OkStatus();
  if (args.k == nullptr || args.v == nullptr || args.slots == nullptr) {
    return absl::InvalidArgumentError(
        "WriteKv: k, v and slots must be non-null");
  }
  const int64_t row = args.cache.num_kv_heads * args.cache.head_dim;
  if (s = CheckStride(kOp, "ldk", args.ldk, row); !s.ok()) return s;
  if (s = CheckStride(kOp, "ldv", args.ldv, row); !s.ok()) return s;
  return LOCKSTEP_DISPATCH(ctx, cpu::WriteKv(args),
                           cuda::WriteKv(args, ctx.cuda_stream));
}

absl::Status PagedAttention(const PagedAttentionArgs& args,
                            const ExecContext& ctx) {
  constexpr char kOp[] = "PagedAttention";
  if (args.tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": tokens must be >= 0, got ", args.tokens));
  }
  absl::Status s = CheckCache(kOp, args.cache);
  if (!s.ok()) return s;
  if (s = CheckHeads(kOp, args.num_q_heads, args.cache.num_kv_heads); !s.ok()) {
    return s;
  }
  if (s = CheckScale(kOp, args.scale); !s.ok()) return s;
  if (args.num_seqs <= 0 || args.max_blocks_per_seq <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": need num_seqs > 0 and max_blocks_per_seq > 0, got num_seqs=",
        args.num_seqs, " max_blocks_per_seq=", args.max_blocks_per_seq));
  }
  if (args.tokens == 0) return absl::OkStatus();
  if (args.q == nullptr || args.out == nullptr || args.positions == nullptr ||
      args.seq_ids == nullptr || args.block_tables == nullptr) {
    return absl::InvalidArgumentError(
        "PagedAttention: q, out, positions, seq_ids and block_tables must be "
        "non-null");
  }
  const int64_t row = args.num_q_heads * args.cache.head_dim;
  if (s = CheckStride(kOp, "ldq", args.ldq, row); !s.ok()) return s;
  if (s = CheckStride(kOp, "ldo", args.ldo, row); !s.ok()) return s;
  return LOCKSTEP_DISPATCH(ctx, cpu::PagedAttention(args),
                           cuda::PagedAttention(args, ctx.cuda_stream));
}

absl::Status PrefillAttention(const PrefillAttentionArgs& args,
                              const ExecContext& ctx) {
  constexpr char kOp[] = "PrefillAttention";
  if (args.tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": tokens must be >= 0, got ", args.tokens));
  }
  absl::Status s = CheckHeads(kOp, args.num_q_heads, args.num_kv_heads);
  if (!s.ok()) return s;
  if (args.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": head_dim must be > 0, got ", args.head_dim));
  }
  if (!ValidDType(args.kv_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": unknown kv_dtype"));
  }
  if (s = CheckScale(kOp, args.scale); !s.ok()) return s;
  if (args.tokens == 0) return absl::OkStatus();
  if (args.q == nullptr || args.k == nullptr || args.v == nullptr ||
      args.out == nullptr) {
    return absl::InvalidArgumentError(
        "PrefillAttention: q, k, v and out must be non-null");
  }
  if (s = CheckStride(kOp, "ldq", args.ldq, args.num_q_heads * args.head_dim);
      !s.ok()) {
    return s;
  }
  if (s = CheckStride(kOp, "ldk", args.ldk, args.num_kv_heads * args.head_dim);
      !s.ok()) {
    return s;
  }
  if (s = CheckStride(kOp, "ldo", args.ldo, args.num_q_heads * args.head_dim);
      !s.ok()) {
    return s;
  }
  return LOCKSTEP_DISPATCH(ctx, cpu::PrefillAttention(args),
                           cuda::PrefillAttention(args, ctx.cuda_stream));
}

}  // namespace lockstep::kernels
