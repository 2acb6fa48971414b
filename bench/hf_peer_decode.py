#!/usr/bin/env python3
"""PyTorch peer for the decode benchmarks (issue 15 item 7).

Measures decode throughput of Hugging Face transformers on the same checkpoint
the rollout service serves (HF layout: config.json + bf16 safetensors, no
tokenizer), on the same GPU, so the two numbers share a device and a day.

Workload, per batch size B: B random prompts of exactly --prompt_len token ids
(uniform in [0, vocab) from a seeded torch.Generator, no padding), each
extended by exactly --new_tokens tokens sampled at temperature 1 (top_k=0,
top_p=1). EOS is disabled (eos_token_id=None, min_new_tokens=max_new_tokens),
so every sequence runs to full length, like our bench.

Methods:
  static_graphs   the transformers model's own forward with a StaticCache,
                  the decode step (forward + temperature-1 Gumbel-max sampling
                  + cache-position advance) captured once per batch size in a
                  torch.cuda.CUDAGraph and replayed; no Inductor compile, so it
                  starts in seconds (the CUDA-graph half of "reduce-overhead",
                  without Inductor's fusion of the elementwise ops). Prefill is
                  one eager forward. decode tok/s = B * (new_tokens - 1) /
                  decode_s over the replays, TPOT = decode_s / (new_tokens - 1).
                  transformers 5.x's StaticLayer writes each update at its own
                  device counter (cumulative_length, advanced in place, so it
                  is graph-safe) and takes positions from position_ids; the
                  counters are restored after the warm-up and the capture.
                  --waves W runs W batches of B fresh prompts one after the
                  other through the same cache and graph (an RL batch larger
                  than one static cache); times and tokens are summed.
  static_compile  model.generate with a static KV cache and model.forward
                  wrapped in torch.compile(mode="reduce-overhead", fullgraph=True,
                  dynamic=False) (CUDA graphs; retried with fullgraph=False if
                  it fails); every call marks a new CUDA-graph step and clones
                  its logits, which generate keeps across steps. transformers' own auto-compile is disabled so the
                  wrapper above is the only compilation. Per batch: a warm-up
                  generate (compile_s = its wall time, compilation + one run),
                  a timed generate, and a timed generate with max_new_tokens=1
                  (the prefill, after its own warm-up). decode_s = total - prefill
                  covers the new_tokens - 1 decode steps:
                  decode tok/s = B * (new_tokens - 1) / decode_s,
                  TPOT = decode_s / (new_tokens - 1).
  generate_batch  transformers' continuous batching (paged attention), the
                  API adapted at run time from inspect.signature. One short
                  warm-up call (compile_s), then one timed call. Its wall time
                  includes manager setup, CUDA-graph capture and prefill; the
                  table's tok/s for it is B * new_tokens / wall. Per-token
                  timestamps (record_timestamps) additionally give a steady
                  decode rate (tokens after the last request's first token)
                  and a median per-request TPOT; both are in the JSON/note.

Each (method, batch) is isolated by try/except: errors and OOMs are recorded
and the run moves on. A configuration is skipped once --time_budget_s is spent.
Results are rewritten to --out after every configuration.
"""

import argparse
import copy
import dataclasses
import gc
import inspect
import json
import math
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

COLUMNS = ["method", "batch", "prompt", "new tokens", "compile_s", "prefill_s",
           "decode tokens/s", "TPOT ms", "total wall s", "peak GB", "note"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF checkpoint directory")
    p.add_argument("--batches", default="1,16,64,256")
    p.add_argument("--prompt_len", type=int, default=512)
    p.add_argument("--new_tokens", type=int, default=512)
    p.add_argument("--methods", default="static_graphs,generate_batch")
    p.add_argument("--time_budget_s", type=float, default=240.0)
    p.add_argument("--out", default="results.json")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile_mode", default="reduce-overhead")
    p.add_argument("--cb_max_batch_tokens", type=int, default=8192)
    p.add_argument("--waves", type=int, default=1,
                   help="static_graphs: batches of B prompts run one after the other")
    return p.parse_args()


def now():
    torch.cuda.synchronize()
    return time.perf_counter()


def is_oom(exc):
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def short(exc, limit=300):
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def free_memory(model):
    model.__dict__.pop("forward", None)   # undo any torch.compile wrapper
    if hasattr(model, "_cache"):           # static cache kept by generate
        del model._cache
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def load_model(path, dtype):
    kwargs = dict(attn_implementation="sdpa")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, **kwargs)
    model = model.cuda().eval()
    g = model.generation_config   # full-length temperature-1 sampling, no EOS
    g.do_sample, g.temperature, g.top_k, g.top_p = True, 1.0, 0, 1.0
    g.min_p, g.repetition_penalty = None, 1.0
    g.eos_token_id, g.pad_token_id = None, 0
    return model


def make_prompts(batch, prompt_len, vocab, seed):
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch)
    return torch.randint(0, vocab, (batch, prompt_len), generator=gen, dtype=torch.long)


def timed_generate(model, input_ids, new_tokens, seed):
    torch.manual_seed(seed)
    t0 = now()
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    t1 = now()
    generated = out.shape[1] - input_ids.shape[1]
    if generated != new_tokens:
        raise RuntimeError(f"generated {generated} tokens, expected {new_tokens}")
    return t1 - t0


def compile_forward(model, fullgraph, mode):
    """model.forward compiled; each call starts a new CUDA-graph step (so the
    graph may reuse its output buffers) and returns its logits cloned (so
    generate may keep them while the next step runs)."""
    model.__dict__.pop("forward", None)
    torch._dynamo.reset()
    compiled = torch.compile(model.forward, mode=mode, fullgraph=fullgraph, dynamic=False)

    def forward(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*args, **kwargs)
        if getattr(out, "logits", None) is not None:
            out.logits = out.logits.clone()
        return out

    model.forward = forward


def run_static_compile(model, prompts, args, state):
    """One batch size with a static cache and a compiled forward."""
    if getattr(model.config, "_attn_implementation", "sdpa") != "sdpa":
        model.set_attn_implementation("sdpa")   # generate_batch may have switched it
    g = model.generation_config
    g.cache_implementation = "static"
    if hasattr(g, "disable_compile"):
        g.disable_compile = True   # our torch.compile wrapper is the only one
    ids, n, notes = prompts.cuda(), args.new_tokens, []
    compile_forward(model, state["fullgraph"], args.compile_mode)
    try:
        compile_s = timed_generate(model, ids, n, args.seed)
    except Exception as exc:
        if not state["fullgraph"] or is_oom(exc):
            raise
        notes.append(f"fullgraph failed ({short(exc, 120)}); fullgraph=False")
        print(f"  fullgraph=True failed: {short(exc)}; retrying fullgraph=False", flush=True)
        state["fullgraph"] = False
        compile_forward(model, False, args.compile_mode)
        compile_s = timed_generate(model, ids, n, args.seed)
    total_s = timed_generate(model, ids, n, args.seed)
    prefill_warm_s = timed_generate(model, ids, 1, args.seed)
    prefill_s = timed_generate(model, ids, 1, args.seed)
    decode_s = total_s - prefill_s
    steps = max(n - 1, 1)
    notes.append(f"fullgraph={state['fullgraph']}")
    return dict(compile_s=compile_s, prefill_warm_s=prefill_warm_s, prefill_s=prefill_s,
                total_s=total_s, decode_s=decode_s,
                decode_tok_s=prompts.shape[0] * steps / decode_s,
                tpot_ms=1e3 * decode_s / steps,
                output_tok_s_wall=prompts.shape[0] * n / total_s, note="; ".join(notes))


def cb_config_class():
    for where in ("transformers", "transformers.generation"):
        try:
            return getattr(__import__(where, fromlist=["ContinuousBatchingConfig"]),
                           "ContinuousBatchingConfig")
        except (ImportError, AttributeError):
            pass
    return None


def field_defaults(cls):
    if dataclasses.is_dataclass(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}
    return {k: v.default for k, v in inspect.signature(cls).parameters.items()}


def build_cb_kwargs(model, prompts, new_tokens, args, no_flash_switch=False):
    """generate_batch kwargs for the installed transformers version."""
    params = inspect.signature(model.generate_batch).parameters
    gen_cfg = copy.deepcopy(model.generation_config)
    gen_cfg.cache_implementation = None
    if hasattr(gen_cfg, "disable_compile"):
        gen_cfg.disable_compile = False
    gen_cfg.max_new_tokens, gen_cfg.min_new_tokens = new_tokens, None   # no EOS: runs full length
    batch = len(prompts)
    cbc_cls = cb_config_class() if "continuous_batching_config" in params else None
    fields = field_defaults(cbc_cls) if cbc_cls is not None else {}
    block = fields.get("block_size") if isinstance(fields.get("block_size"), int) else 256
    blocks_per_seq = math.ceil((args.prompt_len + new_tokens) / block) + 1
    settings = dict(block_size=block, num_blocks=batch * blocks_per_seq + 8,
                    max_batch_tokens=max(batch, args.cb_max_batch_tokens),
                    max_requests_per_batch=batch)
    if no_flash_switch:
        settings["auto_switch_to_flash"] = False
    kwargs = dict(generation_config=gen_cfg)
    if cbc_cls is not None:
        used = {k: v for k, v in settings.items() if k in fields}
        kwargs["continuous_batching_config"] = cbc_cls(**used)
    else:                                   # older API: settings live on GenerationConfig
        used = settings
        for k, v in settings.items():
            setattr(gen_cfg, k, v)
    for name, value in (("progress_bar", False), ("record_timestamps", True)):
        if name in params:
            kwargs[name] = value
    kwargs["inputs"] = [p.tolist() for p in prompts]
    return kwargs, used, "auto_switch_to_flash" in fields


def call_generate_batch(model, prompts, new_tokens, args, seed, retry_flag):
    kwargs, used, has_switch = build_cb_kwargs(model, prompts, new_tokens, args, retry_flag["on"])
    torch.manual_seed(seed)
    t0 = now()
    try:
        results = model.generate_batch(**kwargs)
    except Exception as exc:
        if is_oom(exc) or not has_switch or retry_flag["on"]:
            raise
        print(f"  generate_batch failed ({short(exc)}); retrying auto_switch_to_flash=False", flush=True)
        retry_flag["on"] = True
        return call_generate_batch(model, prompts, new_tokens, args, seed, retry_flag)
    t1 = now()
    outputs = list(results.values()) if isinstance(results, dict) else list(results)
    return t0, t1, outputs, used


def run_generate_batch(model, prompts, args, state):
    """One batch size through continuous batching (paged attention)."""
    if not hasattr(model, "generate_batch"):
        raise RuntimeError(f"transformers {transformers.__version__} has no generate_batch")
    free_memory(model)
    n, batch = args.new_tokens, prompts.shape[0]
    w0, w1, _, _ = call_generate_batch(model, prompts, min(n, 16), args, args.seed, state)
    t0, t1, outputs, used = call_generate_batch(model, prompts, n, args, args.seed, state)
    errors = [o.error for o in outputs if getattr(o, "error", None)]
    lens = [len(o.generated_tokens) for o in outputs]
    if errors or len(outputs) != batch or min(lens) != n or max(lens) != n:
        raise RuntimeError(f"{len(outputs)} outputs, lengths {min(lens, default=0)}.."
                           f"{max(lens, default=0)}, errors: {errors[:2]}")
    total_s = t1 - t0
    res = dict(compile_s=w1 - w0, total_s=total_s, output_tok_s_wall=batch * n / total_s,
               decode_tok_s=batch * n / total_s, cb_settings=used,
               attn_implementation=getattr(model.config, "_attn_implementation", None))
    notes = ["tok/s = B*new/wall incl. setup+prefill"]
    stamps = [o.timestamps for o in outputs if getattr(o, "timestamps", None)]
    if len(stamps) == batch and n > 1:
        start = max(s[0] for s in stamps)            # every request has its first token
        end = max(s[-1] for s in stamps)
        after = sum(sum(1 for t in s if t > start) for s in stamps)
        res["prefill_s"] = start - t0
        res["tpot_ms"] = 1e3 * statistics.median((s[-1] - s[0]) / (len(s) - 1) for s in stamps)
        if end > start and after:
            res["steady_decode_tok_s"] = after / (end - start)
            notes.append(f"steady decode {res['steady_decode_tok_s']:.0f} tok/s")
        notes.append("prefill_s = to last first token; TPOT = median per request")
    notes.append(f"attn={res['attn_implementation']}")
    res["note"] = "; ".join(notes)
    return res


def make_static_cache(model, batch, max_len, state):
    """transformers.StaticCache for `batch` rows of up to `max_len` tokens,
    with the constructor arguments this transformers version takes; the first
    call (per run: `state` is the method's state dict) prints what it used."""
    from transformers import StaticCache
    params = inspect.signature(StaticCache.__init__).parameters
    offered = dict(config=model.config, max_batch_size=batch, batch_size=batch,
                   max_cache_len=max_len, device=model.device, dtype=model.dtype)
    used = {k: v for k, v in offered.items() if k in params}
    cache = StaticCache(**used)
    if not state.get("printed"):
        state["printed"] = True
        layers = getattr(cache, "layers", [])[:2]
        print(f"  StaticCache{inspect.signature(StaticCache.__init__)} given {sorted(used)}; "
              f"layers {[type(l).__name__ for l in layers]} "
              f"max_cache_len {[getattr(l, 'max_cache_len', None) for l in layers]}; "
              f"forward params {list(inspect.signature(model.forward).parameters)}", flush=True)
    return cache


def run_static_graphs(model, prompts, args, state):
    """One batch size: eager prefill into a StaticCache, then the decode step
    captured in a CUDA graph and replayed new_tokens - 1 times. With --waves W
    the same cache and graph serve W batches of B fresh prompts one after the
    other (an RL batch larger than one cache); the times are the sums."""
    if getattr(model.config, "_attn_implementation", "sdpa") != "sdpa":
        model.set_attn_implementation("sdpa")
    batch, plen, n = prompts.shape[0], prompts.shape[1], args.new_tokens
    torch.manual_seed(args.seed)
    t0 = now()
    cache = make_static_cache(model, batch, plen + n, state)
    tok = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
    cpos = torch.zeros(1, 1, dtype=torch.long, device="cuda")   # position_ids, one for all rows
    out_tokens = torch.zeros(batch, n, dtype=torch.long, device="cuda")
    use_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    counters = []

    def sample_into(logits):
        u = torch.rand_like(logits, dtype=torch.float32).clamp_(min=1e-20)
        tok.copy_(torch.argmax(logits.float() - torch.log(-torch.log(u)), dim=-1, keepdim=True))
        out_tokens.scatter_(1, (cpos - plen).view(1, 1).expand(batch, 1), tok)

    def prefill(ids):
        for c in counters:   # a new wave writes from slot 0 again
            c.zero_()
        kwargs = dict(input_ids=ids, position_ids=torch.arange(plen, device="cuda")[None],
                      past_key_values=cache, use_cache=True)
        if use_keep:
            kwargs["logits_to_keep"] = 1   # not [B, prompt, vocab] logits
        logits = model(**kwargs).logits[:, -1, :]
        cpos.fill_(plen)
        sample_into(logits)

    def step():
        lg = model(input_ids=tok, position_ids=cpos, past_key_values=cache,
                   use_cache=True).logits[:, -1, :]
        cpos.add_(1)
        sample_into(lg)

    def check():
        last = out_tokens[:, n - 1]
        if int(cpos.item()) != plen + n - 1 or bool((last < 0).any()) or \
                bool((last >= model.config.vocab_size).any()):
            raise RuntimeError(f"decode ended at position {int(cpos.item())}, "
                               f"expected {plen + n - 1}, or sampled an out-of-range id")

    with torch.inference_mode():
        prefill(prompts.cuda())
        # transformers 5.x: each StaticLayer writes at its own device counter,
        # advanced in place by every update (graph-safe); saved and restored
        # around the warm-up and the capture.
        counters = [layer.cumulative_length for layer in getattr(cache, "layers", [])
                    if torch.is_tensor(getattr(layer, "cumulative_length", None))]
        t1 = now()
        prefill_s = t1 - t0
        saved = [tok.clone(), cpos.clone()] + [c.clone() for c in counters]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):   # warm-up outside the graph (lazy inits)
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        for dst, src in zip([tok, cpos] + counters, saved):
            dst.copy_(src)   # the warm-up's K/V slots are rewritten by the timed steps
        capture_s = now() - t1
        decode_s = 0.0
        for wave in range(args.waves):
            if wave > 0:
                w0 = now()
                prefill(make_prompts(batch, plen, model.config.vocab_size,
                                     args.seed + 7919 * wave).cuda())
                prefill_s += now() - w0
            d0 = now()
            for _ in range(n - 1):
                graph.replay()
            decode_s += now() - d0
            check()
    steps = max(n - 1, 1) * args.waves
    del graph, cache
    rows = batch * args.waves
    return dict(compile_s=capture_s, prefill_s=prefill_s, total_s=prefill_s + decode_s,
                decode_s=decode_s, decode_tok_s=batch * steps / decode_s,
                tpot_ms=1e3 * decode_s / steps, waves=args.waves,
                output_tok_s_wall=rows * n / (prefill_s + decode_s),
                note=f"CUDA graph of forward+sampling, no Inductor; compile_s = warm-up+capture"
                     + (f"; {args.waves} waves of {batch}: {rows * n / (prefill_s + decode_s):.0f}"
                        f" output tok/s over prefill+decode" if args.waves > 1 else ""))


METHODS = {"static_compile": run_static_compile, "generate_batch": run_generate_batch,
           "static_graphs": run_static_graphs}


def fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results):
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        note = r.get("note") or ""
        if r["status"] != "ok":
            note = f"{r['status']}: {r.get('error', '')}"[:160]
        cells = [r["method"], str(r["batch"]), str(r["prompt_len"]), str(r["new_tokens"]),
                 fmt(r.get("compile_s"), 1), fmt(r.get("prefill_s"), 3),
                 fmt(r.get("decode_tok_s"), 0), fmt(r.get("tpot_ms"), 2),
                 fmt(r.get("total_s"), 2), fmt(r.get("peak_gb"), 1), note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    args = parse_args()
    start = time.perf_counter()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    for name in ("recompile_limit", "cache_size_limit"):   # one graph set per shape
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
            break
    model = load_model(args.model, dtype)
    cfg = model.config
    meta = dict(torch=torch.__version__, transformers=transformers.__version__,
                cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0), model=args.model,
                architectures=getattr(cfg, "architectures", None), vocab_size=cfg.vocab_size,
                hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=getattr(cfg, "num_key_value_heads", None),
                load_s=time.perf_counter() - start, args=vars(args),
                sampling="temperature 1, top_k 0, top_p 1, no EOS (full length)",
                generate_batch_signature=str(inspect.signature(model.generate_batch))
                if hasattr(model, "generate_batch") else None)
    print(f"# {meta['gpu']} | torch {meta['torch']} | transformers {meta['transformers']} | "
          f"load {meta['load_s']:.1f}s", flush=True)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results, state = [], {"static_compile": {"fullgraph": True}, "generate_batch": {"on": False},
                      "static_graphs": {}}
    for method in methods:
        for batch in batches:
            rec = dict(method=method, batch=batch, prompt_len=args.prompt_len,
                       new_tokens=args.new_tokens)
            elapsed = time.perf_counter() - start
            if method not in METHODS:
                rec.update(status="error", error=f"unknown method {method!r}")
            elif elapsed > args.time_budget_s:
                rec.update(status="skipped: budget", error=f"elapsed {elapsed:.0f}s")
            else:
                print(f"[{elapsed:6.1f}s] {method} batch={batch} ...", flush=True)
                free_memory(model)
                torch.cuda.reset_peak_memory_stats()
                try:
                    prompts = make_prompts(batch, args.prompt_len, cfg.vocab_size, args.seed)
                    rec.update(METHODS[method](model, prompts, args, state[method]), status="ok")
                except Exception as exc:
                    rec.update(status="oom" if is_oom(exc) else "error", error=short(exc, 500))
                rec["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
                free_memory(model)
            line = {k: rec.get(k) for k in ("status", "compile_s", "prefill_s", "decode_tok_s",
                                            "tpot_ms", "total_s", "peak_gb", "error")}
            print(f"  {method} batch={batch}: {json.dumps(line, default=str)}", flush=True)
            results.append(rec)
            with open(args.out, "w") as f:
                json.dump(dict(meta=meta, results=results), f, indent=2, default=str)
    print(markdown_table(results), flush=True)


if __name__ == "__main__":
    main()
