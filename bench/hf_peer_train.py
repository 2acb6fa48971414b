#!/usr/bin/env python3
"""PyTorch peer for the learner's training table (issue 17 §6).

One GRPO-shaped training step of Hugging Face transformers on the same
checkpoint directory the learner trains (HF layout), on the same GPU, as a
user would write it: the model in fp32 (master weights) under
torch.autocast(bfloat16), SDPA attention, gradient checkpointing
(model.gradient_checkpointing_enable()), torch.optim.AdamW(fused=True),
clip_grad_norm_(1.0). The batch matches bench/train_step_bench.cc: --seqs
sequences of --seq_len tokens (a --prompt_len random prompt per group of
--group, random completions); the loss is the PPO-clipped surrogate with
group-normalised advantages over every completion token (token-mean), behaviour
logprobs -log(vocab), as our trainer computes it. Micro-batches of
--micro_batch sequences, gradients accumulated, one optimizer step.

Prints one markdown row: step time (median of --steps after --warmup),
tokens/s, MFU by the same formula as train_step_bench (6 × linear-layer
parameters × tokens + 12 × layers × heads × head_dim × Σ len² / 2, no
recompute counted, over --peak_tflops), and PyTorch's peak allocated and
reserved GPU memory.
"""

import argparse
import json
import math
import time

import torch
from transformers import AutoModelForCausalLM


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--seqs", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=4096)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--micro_batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--peak_tflops", type=float, default=780.0)
    p.add_argument("--no_checkpointing", action="store_true")
    p.add_argument("--out", default="")
    return p.parse_args()


def batch(args, vocab):
    gen = torch.Generator().manual_seed(11)
    rows = []
    for s in range(args.seqs):
        if s % args.group == 0:
            prompt = torch.randint(0, vocab, (args.prompt_len,), generator=gen)
        rows.append(torch.cat([prompt, torch.randint(0, vocab, (args.seq_len - args.prompt_len,),
                                                     generator=gen)]))
    rewards = torch.rand(args.seqs, generator=gen)
    adv = torch.empty(args.seqs)
    for g in range(0, args.seqs, args.group):   # GRPO: (r - mean) / (std + eps) per group
        r = rewards[g:g + args.group]
        adv[g:g + args.group] = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    return torch.stack(rows), adv


def main():
    args = parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 attn_implementation="sdpa").cuda()
    model.config.use_cache = False
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    ids, adv = batch(args, cfg.vocab_size)
    ids, adv = ids.cuda(), adv.cuda()
    old_lp = -math.log(cfg.vocab_size)
    n_tokens = args.seqs * (args.seq_len - args.prompt_len)   # token-mean denominator

    def step():
        for m0 in range(0, args.seqs, args.micro_batch):
            x = ids[m0:m0 + args.micro_batch]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=x).logits[:, args.prompt_len - 1:-1]
            lp = torch.log_softmax(logits.float(), dim=-1).gather(
                -1, x[:, args.prompt_len:].unsqueeze(-1)).squeeze(-1)
            ratio = torch.exp(lp - old_lp)
            a = adv[m0:m0 + args.micro_batch].unsqueeze(1)
            surrogate = torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
            loss = -surrogate.sum() / n_tokens
            loss.backward()
            del logits, lp, ratio, surrogate
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    times = []
    torch.cuda.reset_peak_memory_stats()
    for s in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        norm = step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"step {s}: {dt:.3f} s grad_norm {norm:.4f}", flush=True)
        if s >= args.warmup:
            times.append(dt)
    step_s = sorted(times)[len(times) // 2]
    tokens = args.seqs * args.seq_len
    embed = cfg.vocab_size * cfg.hidden_size
    params = sum(p.numel() for p in model.parameters())
    linear = params - embed + (embed if cfg.tie_word_embeddings else 0)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 12.0 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * \
        args.seqs * args.seq_len ** 2 / 2
    flops = 6.0 * linear * tokens + attn
    res = dict(step_s=step_s, tokens_per_s=tokens / step_s, tflop=flops / 1e12,
               mfu=flops / step_s / (args.peak_tflops * 1e12),
               peak_alloc_gb=torch.cuda.max_memory_allocated() / 2**30,
               peak_reserved_gb=torch.cuda.max_memory_reserved() / 2**30,
               params=params, args=vars(args), torch=torch.__version__)
    print("| peer | seqs x len | checkpointing | step s | tokens/s | model TFLOP/step | MFU | "
          "peak alloc / reserved GiB |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    print(f"| transformers fp32+autocast bf16, SDPA, AdamW fused, micro-batch {args.micro_batch} | "
          f"{args.seqs} x {args.seq_len} | {not args.no_checkpointing} | {step_s:.3f} | "
          f"{tokens / step_s:.0f} | {flops / 1e12:.1f} | {res['mfu']:.3f} | "
          f"{res['peak_alloc_gb']:.1f} / {res['peak_reserved_gb']:.1f} |", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
