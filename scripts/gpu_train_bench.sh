#!/usr/bin/env bash
# The learner's training table on the GPU machine (issue 17 §6), one device
# call: builds train_step_bench, writes the seeded random bf16 checkpoints,
# then per shape one GRPO step of ours (bench/train_step_bench.cc: invariant
# forward, LibTorch backward, AdamW, activation checkpointing) and of the
# transformers peer (bench/hf_peer_train.py: fp32 + autocast bf16, SDPA,
# gradient checkpointing, fused AdamW) on the same checkpoint and batch
# shape. Peak GPU memory of both: nvidia-smi's memory.used sampled every
# 100 ms (the same measure for both: the process's whole footprint); the
# peer also reports PyTorch's allocated / reserved peaks. For the device tool:
#   SHAPES="qwen3-1.7b:8x4096 qwen3-4b:8x4096 qwen3-1.7b:8x16384:0" bash scripts/gpu_train_bench.sh
# (preset:SEQSxLEN[:WARMUP[:FLAGS]], WARMUP untimed steps before the timed
# ones, default $WARMUP or 1; FLAGS: extra train_step_bench flags joined by
# commas, e.g. qwen3-1.7b:8x4096:1:--allow_tf32=0 — such an entry runs ours
# only, as a variant of the same shape's peer row)
# Knobs: OURS_TIMEOUT=120 PEER_TIMEOUT=90 (seconds per run), WARMUP=1 STEPS=1,
# OURS_ARGS / PEER_ARGS (extra flags), SKIP_PEER=1, TESTS="common_model_cuda_test ..."
# (built with the bench, run after it; TEST_TIMEOUT=120).
source scripts/gpu_env.sh
SHAPES=${SHAPES:-qwen3-1.7b:8x4096}
stamp configure
gpu_configure
stamp build
cmake --build build-gpu -j16 --target lockstep_make_model >> "$OUT/build.log" 2>&1
presets=$(for s in $SHAPES; do echo "${s%%:*}"; done | awk '!seen[$0]++')  # in first-use order
( for p in $presets; do
    g0=$(date +%s); "$(bin lockstep_make_model)" --preset "$p" --seed 1 --out "$WORK/$p" \
      >> "$OUT/generate.log" 2>&1
    echo "generate $p: rc=$? $(( $(date +%s) - g0 )) s" >> "$OUT/generate.log"
    touch "$WORK/$p.done"
  done ) &
cmake --build build-gpu -j16 --target train_step_bench ${TESTS:-} >> "$OUT/build.log" 2>&1 \
  || { stamp "BUILD FAILED"; grep -m20 -B2 -A8 "error" "$OUT/build.log"; exit 1; }
stamp built
# Runs "$@" with nvidia-smi sampling; prints the peak memory.used (MiB).
with_peak() {
  local log=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$WORK/mem.txt" &
  local smi=$!
  "$@" >> "$log" 2>&1
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  echo "rc=$rc peak memory.used $(sort -n "$WORK/mem.txt" | tail -1) MiB" | tee -a "$log" "$OUT/summary.txt"
}
for s in $SHAPES; do
  IFS=: read -r p shape warm flags <<< "$s"; seqs=${shape%%x*} len=${shape##*x} warm=${warm:-${WARMUP:-1}}
  flags=${flags//,/ }
  # Each checkpoint is used as soon as it is written (the next one is
  # written meanwhile).
  while [ ! -f "$WORK/$p.done" ]; do sleep 1; done
  grep "generate $p:" "$OUT/generate.log" | tee -a "$OUT/summary.txt"
  stamp "ours $p $seqs x $len $flags"
  echo "== ours $p $seqs x $len $flags" >> "$OUT/train.log"
  with_peak "$OUT/train.log" timeout "${OURS_TIMEOUT:-120}" "$(bin train_step_bench)" \
    --model_dir="$WORK/$p" --seqs="$seqs" --seq_len="$len" --warmup="$warm" \
    --steps="${STEPS:-1}" ${OURS_ARGS:-} $flags
  grep "^step " "$OUT/train.log" | tail -2 | tee -a "$OUT/summary.txt"
  grep -A2 "^| mode" "$OUT/train.log" | tail -1 | tee -a "$OUT/summary.txt"
  if [ "${SKIP_PEER:-0}" != 1 ] && [ -z "$flags" ]; then
    stamp "peer $p $seqs x $len"
    echo "== peer $p $seqs x $len" >> "$OUT/train.log"
    with_peak "$OUT/train.log" timeout "${PEER_TIMEOUT:-90}" python3 bench/hf_peer_train.py \
      --model "$WORK/$p" --seqs "$seqs" --seq_len "$len" --warmup "$warm" \
      --steps "${STEPS:-1}" ${PEER_ARGS:-}
    grep -A2 "^| peer" "$OUT/train.log" | tail -1 | tee -a "$OUT/summary.txt"
  fi
done
# Then the cuda tests named in TESTS (e.g. the learner-vs-rollout bitwise ones).
for t in ${TESTS:-}; do
  tb=$(find build-gpu/tests -name "$t" -type f | head -1)
  [ -z "$tb" ] && { stamp "$t NOT BUILT"; continue; }
  stamp "run $t"
  timeout "${TEST_TIMEOUT:-120}" "$tb" > "$OUT/$t.log" 2>&1
  echo "$t rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "PASSED|FAILED|SKIPPED|Failure|OK \]" "$OUT/$t.log" | head -12 | tee -a "$OUT/summary.txt"
done
stamp done
