#!/usr/bin/env python3
"""Sums a Chrome trace of LibTorch's Kineto profiler (train_step_bench
--profile) by CUDA kernel: the GPU time of the step per kernel name, per
class of kernel, per autograd node (the outermost
`autograd::engine::evaluate_function: X` around the op that launched the
kernel; "forward / outside the backward" otherwise), the GPU busy span, and
the host's CUDA runtime calls and CPU ops.

  python3 bench/trace_summary.py TRACE.json [--top 30]
"""
import argparse
import collections
import json


def kernel_class(name):
    n = name.lower()
    if "gemm" in n or "xmma" in n or "cutlass" in n or "cublas" in n or "matmul" in n:
        return "GEMM (cuBLAS / tensor cores)"
    if "lockstep" in n or "invariant" in n:
        return "lockstep kernels"
    if "softmax" in n:
        return "softmax"
    if "reduce" in n:
        return "reductions"
    if "elementwise" in n or "vectorized" in n or "unrolled" in n:
        return "elementwise"
    if "index" in n or "gather" in n or "scatter" in n or "embedding" in n or "sort" in n:
        return "index / gather / sort"
    if "copy" in n or "cat" in n:
        return "copies"
    return "other"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    with open(a.trace) as f:
        events = json.load(f)["traceEvents"]
    by_name = collections.defaultdict(lambda: [0.0, 0])
    by_class = collections.defaultdict(float)
    by_cat = collections.defaultdict(float)
    runtime = collections.defaultdict(lambda: [0.0, 0])
    cpu_ops = collections.defaultdict(lambda: [0.0, 0])
    first, last = None, None
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, dur = e.get("cat", ""), float(e.get("dur", 0.0))
        by_cat[cat] += dur
        if cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            name = e.get("name", "?")
            key = name if cat == "kernel" else cat + ": " + name
            by_name[key][0] += dur
            by_name[key][1] += 1
            by_class[kernel_class(name) if cat == "kernel" else cat] += dur
            ts = float(e["ts"])
            first = ts if first is None else min(first, ts)
            last = ts + dur if last is None else max(last, ts + dur)
        elif cat == "cpu_op":
            cpu_ops[e.get("name", "?")][0] += dur
            cpu_ops[e.get("name", "?")][1] += 1
        elif cat == "cuda_runtime":
            runtime[e.get("name", "?")][0] += dur
            runtime[e.get("name", "?")][1] += 1
    # Kernel -> launching CPU op (External id) -> outermost autograd node.
    node_of_ext = {}
    per_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "cpu_op":
            per_thread[(e.get("pid"), e.get("tid"))].append(e)
    prefix = "autograd::engine::evaluate_function: "
    for ops in per_thread.values():
        ops.sort(key=lambda e: (float(e["ts"]), -float(e.get("dur", 0.0))))
        stack = []  # (end, node label or None)
        for e in ops:
            ts, end = float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))
            while stack and stack[-1][0] <= ts:
                stack.pop()
            outer = next((lab for _, lab in stack if lab is not None), None)
            name = e.get("name", "")
            label = outer or (name[len(prefix):] if name.startswith(prefix) else None)
            stack.append((end, label))
            ext = (e.get("args") or {}).get("External id")
            if ext is not None:
                node_of_ext[ext] = label
    by_node = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            ext = (e.get("args") or {}).get("External id")
            label = node_of_ext.get(ext) or "forward / outside the backward"
            by_node[label][0] += float(e.get("dur", 0.0))
            by_node[label][1] += 1
    gpu = sum(v[0] for v in by_name.values())
    span = (last - first) if first is not None else 0.0
    print(f"GPU span {span / 1e6:.3f} s, GPU busy (sum of kernels, copies, memsets) "
          f"{gpu / 1e6:.3f} s ({100 * gpu / span if span else 0:.1f}% of the span)")
    print("\n| class | GPU s | share |\n|---|---:|---:|")
    for k, v in sorted(by_class.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v / 1e6:.3f} | {100 * v / gpu:.1f}% |")
    print("\n| autograd node (top 20) | GPU s | kernels | share |\n|---|---:|---:|---:|")
    for k, (d, n) in sorted(by_node.items(), key=lambda kv: -kv[1][0])[:20]:
        print(f"| {k[:90]} | {d / 1e6:.3f} | {n} | {100 * d / gpu:.1f}% |")
    print(f"\n| kernel (top {a.top}) | GPU s | calls | share |\n|---|---:|---:|---:|")
    for k, (d, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"| {k[:110]} | {d / 1e6:.3f} | {n} | {100 * d / gpu:.1f}% |")
    print("\n| CUDA runtime call (top 8) | host s | calls |\n|---|---:|---:|")
    for k, (d, n) in sorted(runtime.items(), key=lambda kv: -kv[1][0])[:8]:
        print(f"| {k} | {d / 1e6:.3f} | {n} |")
    print("\n| CPU op (top 25 by calls; nested ops counted in each) | calls | host s |"
          "\n|---|---:|---:|")
    for k, (d, n) in sorted(cpu_ops.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"| {k[:90]} | {n} | {d / 1e6:.3f} |")


if __name__ == "__main__":
    main()
