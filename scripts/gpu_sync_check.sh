#!/usr/bin/env bash
# Issue 18 §5 on the GPU machine: weight-update paths (gRPC stream, shared
# memory) and Sleep/WakeUp of a CUDA rollout on Qwen3-1.7B- and
# Qwen3-8B-shaped random bf16 checkpoints (bench/weight_sync_bench: timings,
# memory released as the rollout and nvidia-smi see it, logprob bits
# compared after every update and wake-up), then a colocated GRPO loop on
# one GPU (learner_service --device=cuda --drive --colocate: generate ->
# sleep -> train -> push -> wake; its per-step time breakdown). For the
# device tool:
#   bash scripts/gpu_sync_check.sh      (logs under $OUT or ./gpu-out)
# Knobs: PRESETS="qwen3-1.7b qwen3-8b", KV_GB=40, SKIP_COLOCATE=1,
#        COLOCATE_PRESET=qwen3-1.7b, COLOCATE_STEPS=2.
source scripts/gpu_env.sh

nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv >> "$OUT/summary.txt" 2>&1
df -h /dev/shm >> "$OUT/summary.txt" 2>&1
nproc >> "$OUT/summary.txt"

stamp configure
gpu_configure
stamp build
cmake --build build-gpu -j16 --target rollout_service lockstep_make_model weight_sync_bench \
  >> "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; grep -m20 -B2 -A8 "error" "$OUT/build.log"; exit 1; }
# The learner only for the colocated loop (built while the models are made).
( cmake --build build-gpu -j8 --target learner_service > "$OUT/build_learner.log" 2>&1
  echo "learner build rc=$?" >> "$OUT/build_learner.log" ) &
LEARNER_BUILD=$!
BIN=build-gpu
ROLLOUT=$(find $BIN -name rollout_service -type f | head -1)
MAKE_MODEL=$(find $BIN -name lockstep_make_model -type f | head -1)
BENCH=$(find $BIN -name weight_sync_bench -type f | head -1)

# Starts a CUDA rollout on $1 (extra flags after it); sets RPID and RADDR.
start_rollout() {
  local dir=$1; shift
  "$ROLLOUT" --host=127.0.0.1 --port=0 --metrics_port=0 --model_dir="$dir" --device=cuda \
    "$@" > "$OUT/rollout.stdout" 2>> "$OUT/rollout.stderr" &
  RPID=$!
  RADDR=
  for _ in $(seq 1 600); do
    RADDR=$(sed -n 's/^listening grpc=\([^ ]*\) .*/\1/p' "$OUT/rollout.stdout" | head -1)
    [ -n "$RADDR" ] && break
    kill -0 $RPID 2>/dev/null || break
    sleep 0.5
  done
  [ -n "$RADDR" ]
}

for p in ${PRESETS:-qwen3-1.7b qwen3-8b}; do
  stamp "model $p"
  "$MAKE_MODEL" --preset "$p" --seed 1 --dtype bf16 --max_shard_bytes=5000000000 \
    --out "$WORK/$p" > "$OUT/make_$p.log" 2>&1 || { stamp "make_model $p failed"; continue; }
  stamp "rollout $p"
  if ! start_rollout "$WORK/$p" --kv_cache_bytes=$(( ${KV_GB:-40} << 30 )); then
    stamp "rollout $p did not start"; tail -5 "$OUT/rollout.stderr"; continue
  fi
  stamp "weight_sync_bench $p ($RADDR)"
  timeout 400 "$BENCH" --rollout="$RADDR" --model_dir="$WORK/$p" --repeats=1 --chunk_mib=1,4 \
    > "$OUT/sync_$p.md" 2>&1
  stamp "weight_sync_bench $p rc=$?"
  kill $RPID; wait $RPID 2>/dev/null
  [ "$p" = "${COLOCATE_PRESET:-qwen3-1.7b}" ] || rm -rf "$WORK/$p"
done

wait $LEARNER_BUILD
tail -3 "$OUT/build_learner.log"
LEARNER=$(find $BIN -name learner_service -type f | head -1)
if [ "${SKIP_COLOCATE:-0}" != 1 ] && [ -n "$LEARNER" ]; then
  p=${COLOCATE_PRESET:-qwen3-1.7b}
  stamp "colocate $p"
  if start_rollout "$WORK/$p" --kv_cache_bytes=$(( 16 << 30 )); then
    timeout 240 "$LEARNER" --host=127.0.0.1 --port=0 --metrics_port=0 --model_dir="$WORK/$p" \
      --device=cuda --rollout="$RADDR" --drive --colocate --steps=${COLOCATE_STEPS:-2} \
      --prompts_per_step=8 --samples_per_prompt=4 --temperature=0.8 --top_p=0.95 \
      --micro_batch_size=8 > "$OUT/colocate.log" 2>&1
    stamp "colocate rc=$?"
    kill $RPID; wait $RPID 2>/dev/null
  else
    stamp "colocate rollout did not start"
  fi
fi
grep -h "asleep\|awake\|via shared" "$OUT/rollout.stderr" | tail -20 >> "$OUT/summary.txt"
stamp done
cat "$OUT/summary.txt"
