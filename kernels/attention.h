// Causal attention with one fixed key-block order, so that full-sequence
// prefill, chunked prefill and decode of the same token reduce identically,
// whatever the KV page layout or the batch.
//
// Contract, for a query row q at absolute position p, query head h, KV head
// g = h / (num_q_heads / num_kv_heads), keys/values k_j, v_j (j <= p):
//   m = -inf, l = 0, acc[0..D) = 0
//   for each key block b = 0, 1, ... with b*kAttnKeyBlock <= p:
//     J = [b*kAttnKeyBlock, min((b+1)*kAttnKeyBlock, p+1))
//     s_j = dot(q, k_j) * scale   (dot: fp32 fma over d in index order)
//     m' = max(m, max_{j in J} s_j);  alpha = expf(m - m')  (0 when m = -inf)
//     l = l * alpha;  acc[d] = acc[d] * alpha
//     for j in J in order: e = expf(s_j - m'); l = l + e;
//                          acc[d] = fma(e, v_j[d], acc[d])
//     m = m'
//   out[d] = acc[d] / l
// K/V are read from storage of dtype kv_dtype (bf16 widened exactly). Keys
// beyond p are never visited (no masking arithmetic).
//
// On CUDA, bf16 K/V with head_dim 64 or 128 (the shapes of real models) run
// on tensor cores under a second contract, spelled out in
// kernels/cuda/attention_tc.h: q rounded to bf16, mma dot products, 64-key
// blocks grouped into fixed 128-key splits folded in order. The path is
// chosen from (device, KV dtype, head_dim, heads per KV head) only, so every
// guarantee above (prefill = chunked prefill = decode, any page layout or
// batch) holds on it too; CPU and CUDA results are not bitwise equal to each
// other (exp differs anyway).
#ifndef LOCKSTEP_KERNELS_ATTENTION_H_
#define LOCKSTEP_KERNELS_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/device.h"
#include "kernels/dtype.h"

namespace lockstep::kernels {

// Keys per online-softmax block; one constant for every path and device.
inline constexpr int kAttnKeyBlock = 16;

// One layer's paged KV cache. Page `pg` holds tokens
// [i*page_size, (i+1)*page_size) of whichever sequence's block table lists it
// at index i. k and v: [num_pages, page_size, num_kv_heads, head_dim],
// contiguous.
struct PagedKvCache {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::kF32;
  int64_t num_pages = 0;
  int64_t page_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
};

// Writes new keys/values into the cache (rounded to cache.dtype).
struct KvWriteArgs {
  PagedKvCache cache;
  const float* k = nullptr;      // [tokens, num_kv_heads, head_dim], row stride ldk
  int64_t ldk = 0;
  const float* v = nullptr;      // [tokens, num_kv_heads, head_dim], row stride ldv
  int64_t ldv = 0;
  const int64_t* slots = nullptr;  // [tokens]: page * page_size + offset; must
                                   // be in [0, num_pages * page_size)
  int64_t tokens = 0;
};

absl::Status WriteKv(const KvWriteArgs& args, const ExecContext& ctx = {});

// Attention of a flat batch of query tokens from several sequences against
// the paged cache (decode and chunked prefill; K/V of the queries themselves
// must already be written).
struct PagedAttentionArgs {
  PagedKvCache cache;
  const float* q = nullptr;          // [tokens, num_q_heads, head_dim], row stride ldq
  int64_t ldq = 0;
  float* out = nullptr;              // [tokens, num_q_heads, head_dim], row stride ldo
  int64_t ldo = 0;
  int64_t tokens = 0;
  int64_t num_q_heads = 0;           // multiple of cache.num_kv_heads
  float scale = 1.0f;
  const int32_t* positions = nullptr;   // [tokens] absolute position p of each query
  const int32_t* seq_ids = nullptr;     // [tokens] row of block_tables to use
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] page ids
  int64_t num_seqs = 0;
  int64_t max_blocks_per_seq = 0;    // p / page_size must be < this
  // CUDA tensor-core path: choose the keys per split from the batch and the
  // context bound (StandardSplitKeys in cuda/attention_tc.h, FlashDecoding's
  // policy) instead of the fixed kTcSplitKeys. A row's bits then depend on
  // the batch: the standard mode's choice, never the invariant one's. The
  // CPU and SIMT paths ignore it.
  bool batch_dependent_splits = false;
};

absl::Status PagedAttention(const PagedAttentionArgs& args,
                            const ExecContext& ctx = {});

// Causal self-attention over one contiguous sequence: query i has position
// i and attends keys 0..i (full-sequence prefill). Same bits as
// PagedAttention for every query.
struct PrefillAttentionArgs {
  const float* q = nullptr;   // [tokens, num_q_heads, head_dim], row stride ldq
  int64_t ldq = 0;
  const void* k = nullptr;    // [tokens, num_kv_heads, head_dim], row stride ldk
  const void* v = nullptr;    // [tokens, num_kv_heads, head_dim], row stride ldk
  int64_t ldk = 0;
  DType kv_dtype = DType::kF32;
  float* out = nullptr;       // [tokens, num_q_heads, head_dim], row stride ldo
  int64_t ldo = 0;
  int64_t tokens = 0;
  int64_t num_q_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;
};

absl::Status PrefillAttention(const PrefillAttentionArgs& args,
                              const ExecContext& ctx = {});

}  // namespace lockstep::kernels

#endif  // LOCKSTEP_KERNELS_ATTENTION_H_
