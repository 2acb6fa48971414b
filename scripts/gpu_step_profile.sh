#!/usr/bin/env bash
# Where one decode step's GPU time goes (issue 15): ncu's kernel durations
# (gpu__time_duration.sum; ncu serialises kernels and flushes caches, so the
# sum exceeds the graph-replay step time; the shares are what matters) for
# the last decode step of `model_step_bench --variants=eager` (the graph
# step's kernels, launched op by op), per (mode, batch). Kernels are grouped
# by name and grid size, which tells the GEMM shapes and tile configurations
# apart. For the device tool, after a build of model_step_bench:
#   PROFILES="invariant:1 standard:1 invariant:64 standard:64" CONFIG=qwen3-1.7b \
#     CONTEXT=768 bash scripts/gpu_step_profile.sh
source scripts/gpu_env.sh
BENCH=$(bin model_step_bench)
[ -x "$BENCH" ] || { stamp "model_step_bench NOT BUILT"; exit 1; }
command -v ncu > /dev/null || { stamp "no ncu"; exit 1; }
for prof in ${PROFILES:-invariant:1 invariant:64}; do
  mode=${prof%%:*}; batch=${prof##*:}
  csv="$OUT/ncu_${mode}_b${batch}.csv"
  stamp "ncu $mode batch $batch"
  timeout "${NCU_TIMEOUT:-150}" ncu --csv --metrics gpu__time_duration.sum \
    --print-units base --launch-count "${NCU_LAUNCHES:-4000}" "$BENCH" \
    --config="${CONFIG:-qwen3-1.7b}" --mode="$mode" --batch="$batch" \
    --context="${CONTEXT:-768}" --steps=1 --warmup=1 --variants=eager \
    > "$csv" 2> "$OUT/ncu.stderr"
  stamp "ncu rc=$?"
  python3 - "$csv" "$mode" "$batch" <<'PY' | tee -a "$OUT/summary.txt"
import csv, collections, re, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows:
    print("no ncu rows"); sys.exit(0)
head, rows = rows[0], rows[1:]
ki, vi = head.index("Kernel Name"), head.index("Metric Value")
gi = head.index("Grid Size") if "Grid Size" in head else None
names = [r[ki] for r in rows]
# The last decode step: after the second-to-last sampler launch.
samp = [i for i, n in enumerate(names) if "Sample" in n]
start = samp[-2] + 1 if len(samp) >= 2 else 0
step = rows[start:samp[-1] + 1] if samp else rows
tot = collections.Counter(); cnt = collections.Counter()
for r in step:
    name = re.sub(r"\(.*", "", r[ki].replace("(anonymous namespace)::", ""))[:60]
    grid = r[gi] if gi is not None else ""
    key = f"{name} grid={grid}"
    tot[key] += float(r[vi].replace(",", "")) / 1000.0  # ns -> us
    cnt[key] += 1
s = sum(tot.values())
print(f"ncu {sys.argv[2]} batch {sys.argv[3]}: {len(step)} kernels in the last step, {s/1000:.3f} ms")
for k, v in tot.most_common(25):
    print(f"  {v:9.1f} us {100*v/s:5.1f}%  x{cnt[k]:4d}  {k}")
PY
done
stamp done
