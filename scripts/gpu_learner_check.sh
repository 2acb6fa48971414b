#!/usr/bin/env bash
# Issue 17 §1 on the GPU machine, one device call: the learner on the GPU
# (learner_service --device=cuda --drive: invariant forward, LibTorch
# backward, AdamW, weight pushes) against a CUDA rollout on a
# Qwen3-1.7B-shaped random bf16 checkpoint, comparing every sampled token's
# logprob: invariant mode over >= 10^5 tokens, then the standard twin (same
# model, prompts and seeds). Then HF parity on the GPU (committed fixtures,
# MoE ones included) and, with NCU=1, an ncu per-kernel profile of one
# decode step (issue 15). For the device tool:
#   bash scripts/gpu_learner_check.sh     (logs under $OUT or ./gpu-out)
# Knobs: STEPS=4 PROMPTS=32 SAMPLES=8 MAX_TOKENS=100 STD_STEPS=1 NCU=1.
source scripts/gpu_env.sh
stamp configure
gpu_configure
stamp build
cmake --build build-gpu -j16 --target rollout_service learner_service lockstep_make_model \
  >> "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; grep -m20 -B2 -A8 "error" "$OUT/build.log"; exit 1; }
( cmake --build build-gpu -j8 --target common_hf_parity_test model_step_bench \
    > "$OUT/build_more.log" 2>&1; echo "rc=$?" >> "$OUT/build_more.log" ) &
MORE=$!
stamp "model qwen3-1.7b"
"$(bin lockstep_make_model)" --preset qwen3-1.7b --seed 1 --dtype bf16 \
  --max_shard_bytes=5000000000 --out "$WORK/m" > "$OUT/make_model.log" 2>&1
stamp "model rc=$?"

# One GRPO run: rollout and learner in mode $1 for $2 steps.
run_loop() {
  local mode=$1 steps=$2
  "$(bin rollout_service)" --host=127.0.0.1 --port=0 --metrics_port=0 --model_dir="$WORK/m" \
    --device=cuda --kernels=$mode --kv_cache_bytes=$(( 24 << 30 )) --max_running=512 \
    > "$OUT/rollout_$mode.stdout" 2> "$OUT/rollout_$mode.stderr" &
  local rpid=$! raddr=
  for _ in $(seq 1 400); do
    raddr=$(sed -n 's/^listening grpc=\([^ ]*\) .*/\1/p' "$OUT/rollout_$mode.stdout" | head -1)
    [ -n "$raddr" ] && break
    kill -0 $rpid 2>/dev/null || break
    sleep 0.5
  done
  if [ -z "$raddr" ]; then stamp "rollout $mode did not start"; tail -5 "$OUT/rollout_$mode.stderr"; return; fi
  timeout ${LOOP_TIMEOUT:-200} "$(bin learner_service)" --host=127.0.0.1 --port=0 --metrics_port=0 \
    --model_dir="$WORK/m" --device=cuda --kernels=$mode --rollout="$raddr" --drive \
    --steps=$steps --prompts_per_step=${PROMPTS:-32} --samples_per_prompt=${SAMPLES:-8} \
    --max_tokens=${MAX_TOKENS:-100} --temperature=1.0 --micro_batch_size=16 --lr=1e-5 \
    > "$OUT/learner_$mode.log" 2>&1
  stamp "learner $mode rc=$? $(grep '^summary' "$OUT/learner_$mode.log")"
  kill $rpid; wait $rpid 2>/dev/null
}
stamp "GRPO invariant"
run_loop invariant ${STEPS:-4}
stamp "GRPO standard"
run_loop standard ${STD_STEPS:-1}

wait $MORE
tail -1 "$OUT/build_more.log"
export LOCKSTEP_BUILD_DIR=$PWD/build-gpu LOCKSTEP_SOURCE_DIR=$PWD
stamp "hf parity on the GPU (committed fixtures)"
LOCKSTEP_HF_DEVICE=cuda timeout 120 "$(bin common_hf_parity_test)" > "$OUT/hf_parity_cuda.log" 2>&1
stamp "hf parity cuda rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/hf_parity_cuda.log" | tr '\n' ' ')"
grep "fixture qwen3_moe" "$OUT/hf_parity_cuda.log" | grep "lockstep max" >> "$OUT/summary.txt"
if [ "${NCU:-1}" = 1 ] && command -v ncu > /dev/null; then
  stamp "ncu: one eager decode step, batch 64, qwen3-1.7b"
  timeout ${NCU_TIMEOUT:-200} ncu --csv --metrics gpu__time_duration.sum --launch-skip 1100 \
    --launch-count 470 "$(bin model_step_bench)" --config=qwen3-1.7b --batch=64 --steps=1 \
    --warmup=2 --variants=eager > "$OUT/ncu.csv" 2> "$OUT/ncu.stderr"
  stamp "ncu rc=$?"
  python3 - "$OUT/ncu.csv" >> "$OUT/summary.txt" <<'PY'
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]; rows = rows[1:]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
tot = collections.Counter(); cnt = collections.Counter()
for r in rows:
    v = float(r[vi].replace(",", ""))
    v = v / 1000.0 if r[ui] == "nsecond" else (v if r[ui] == "usecond" else v * 1000.0)
    name = re.sub(r"[<(].*", "", r[ki])[:60]
    tot[name] += v; cnt[name] += 1
s = sum(tot.values())
print(f"ncu: {len(rows)} kernels, {s/1000:.3f} ms total")
for k, v in tot.most_common(20):
    print(f"  {v/1000:8.3f} ms {100*v/s:5.1f}%  x{cnt[k]:4d}  {k}")
PY
fi
stamp done
cat "$OUT/summary.txt"
