#!/usr/bin/env bash
# Whole-model and service checks on the GPU machine (issue 5 §2-§4, issue 8):
# builds the model/service targets, runs the `cuda`-labelled model and
# service tests, the Hugging Face parity check on the GPU (real widths and
# the committed tiny fixtures), then the end-to-end rollout decode benchmark
# on a Qwen3-1.7B-shaped model, invariant vs standard. For the device tool:
#   bash scripts/gpu_model_check.sh        (logs under $OUT or ./gpu-out)
# Stages and knobs:
#   TESTS="a b"   the cuda tests to build and run (default: the three below;
#                 TESTS="" runs none)
#   SKIP_HF=1     skips the HF parity stage: tests/fixtures/hf/generate.py
#                 --real-width writes 2-layer real-width fixtures (Qwen3-1.7B,
#                 Qwen2.5-3B, Llama-3.2-1B widths; f32 + bf16; ~7.5 GB) to
#                 $WORK/hf-real with transformers on the GPU (in the
#                 background, from the start), then common_hf_parity_test
#                 runs with LOCKSTEP_HF_DEVICE=cuda on them and on the
#                 committed fixtures; one log, $OUT/hf_parity.log
#                 (HF_GEN_TIMEOUT, HF_TIMEOUT: seconds per step)
#   SKIP_BENCH=1  skips the rollout benchmark (and its checkpoint)
#   SKIP_DECODE=1 keeps the checkpoint and the RL stage, skips the decode table
#   BENCH_SERVER_EXTRA=--max_running=512  further rollout_service flags
#   BENCH_CONCURRENCY=64,256  BENCH_MODES=invariant,standard
#   BENCH_VARIANTS=legacy,graphs  one server per Model::Step implementation
#                 (LOCKSTEP_CUDA_STEP, common/model/model.h) in the same run
#   STEP_BENCH=1  also builds and runs bench/model_step_bench (decode step of
#                 Model::Step per implementation: wall, device and host time;
#                 STEP_BENCH_ARGS passes flags; STEP_BENCH_MODES=invariant,standard
#                 runs it once per kernel mode), before the rollout benchmark
#   BENCH_CONFIGS=qwen3-1.7b,qwen3-8b  presets benchmarked (checkpoints written
#                 in the background, seed 1); BENCH_PROMPT=64 BENCH_NEW=128
#                 BENCH_REQUESTS=2 (per client) BENCH_KV_BYTES BENCH_BATCH_TOKENS
#   RL_BENCH=1    after the decode benchmark, the RL-shaped run: 128 clients x 1
#                 prompt x n = 8 samples (RL_PROMPT=512, RL_NEW=1024), temperature 1
#   HF_PEER=1     after each config's benchmark, bench/hf_peer_decode.py
#                 (transformers on the same checkpoint; HF_PEER_METHODS,
#                 HF_PEER_BATCHES, HF_PEER_BUDGET seconds); with RL_BENCH=1
#                 also the RL shape through it: the 1,024 samples as waves of
#                 HF_RL_BATCH (256) prompts sharing one static cache and graph
#   KERNEL_BENCH="gemm attention"  also builds and runs gemm_cuda_bench /
#                 attention_cuda_bench (KERNEL_BENCH_ARGS, e.g. --quick)
source scripts/gpu_env.sh

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/summary.txt" 2>&1
# The real-width HF fixtures are written by transformers on the GPU while
# the CPU builds (the GPU is idle then); waited for before the HF test.
HF_GEN_PID=
if [ "${SKIP_HF:-0}" != 1 ]; then
  stamp "hf: generate.py --real-width (background)"
  ( g0=$(date +%s); PYTHONUNBUFFERED=1 timeout "${HF_GEN_TIMEOUT:-900}" \
      python3 tests/fixtures/hf/generate.py --real-width --device cuda --out "$WORK/hf-real" \
      > "$OUT/hf_generate.log" 2>&1
    echo "generate.py --real-width: rc=$? $(( $(date +%s) - g0 )) s" >> "$OUT/hf_generate.log" ) &
  HF_GEN_PID=$!
fi
stamp configure
gpu_configure
# TESTS="" (set but empty) runs no cuda test; unset: the default three.
TESTS=${TESTS-"common_model_cuda_test common_model_graph_cuda_test common_nccl_tp_cuda_test integration_rollout_greedy_cuda_test"}
stamp build
BENCH_TARGET=rollout_bench; [ "${SKIP_BENCH:-0}" = 1 ] && BENCH_TARGET=
# The service binaries serve the integration tests and the benchmark only.
SERVICE_TARGETS=; [ -n "$TESTS$BENCH_TARGET" ] && SERVICE_TARGETS="rollout_service lockstep_make_model"
HF_TARGET=common_hf_parity_test; [ "${SKIP_HF:-0}" = 1 ] && HF_TARGET=
STEP_TARGET=; [ "${STEP_BENCH:-0}" = 1 ] && STEP_TARGET=model_step_bench
KERNEL_TARGETS=; for k in ${KERNEL_BENCH:-}; do KERNEL_TARGETS="$KERNEL_TARGETS ${k}_cuda_bench"; done
TARGETS="$TESTS $SERVICE_TARGETS $BENCH_TARGET $HF_TARGET $STEP_TARGET $KERNEL_TARGETS"
BENCH_CONFIGS=${BENCH_CONFIGS:-qwen3-1.7b}
# The checkpoints (3.4 GB of seeded bf16 for 1.7B, 16 GB for 8B; the
# benchmark's seed 1) are written one after the other while the rest builds
# and the GPU tests run: their generator (formats only) is built first.
GEN_PID=
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  cmake --build build-gpu -j16 --target lockstep_make_model >> "$OUT/build.log" 2>&1
  stamp "generate $BENCH_CONFIGS (background)"
  ( for cfg in ${BENCH_CONFIGS//,/ }; do
      [ -f "$WORK/$cfg/config.json" ] && continue
      g0=$(date +%s); build-gpu/common/lockstep_make_model --preset "$cfg" --seed 1 \
        --out "$WORK/$cfg" >> "$OUT/generate.log" 2>&1
      echo "generate $cfg: rc=$? $(( $(date +%s) - g0 )) s" >> "$OUT/generate.log"
    done ) &
  GEN_PID=$!
fi
if [ -n "${TARGETS// /}" ]; then
  cmake --build build-gpu -j16 --target $TARGETS \
    -- -k 0 >> "$OUT/build.log" 2>&1 || stamp "some targets failed (build.log)"
  grep -E "error:|FAILED" "$OUT/build.log" | head -20
fi
stamp "built"
for t in $TESTS; do
  bin=$(find build-gpu/tests -name "$t" -type f | head -1)
  [ -z "$bin" ] && { stamp "$t NOT BUILT"; continue; }
  stamp "run $t"
  timeout "${TEST_TIMEOUT:-420}" "$bin" > "$OUT/$t.log" 2>&1
  echo "$t rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "distinct outputs|PASSED|FAILED|SKIPPED|Failure|OK \]" "$OUT/$t.log" | head -8 | tee -a "$OUT/summary.txt"
done
# HF parity on the GPU: the real-width fixtures (once written) and the
# committed tiny ones; the tiny run goes first while the fixtures are still
# being written. Nothing of this overlaps the benchmark below.
HF_GDB_DONE=0
hf_run() {  # $1: log, $2: fixture dir (empty: the committed set), then gtest flags
  local log=$1 dir=$2; shift 2
  env LOCKSTEP_HF_DEVICE=cuda ${dir:+LOCKSTEP_HF_FIXTURE_DIR="$dir"} \
    timeout "${HF_TIMEOUT:-600}" build-gpu/tests/common/common_hf_parity_test "$@" > "$log" 2>&1
}
hf_test() {  # $1: label, $2: fixture dir (empty: the committed set)
  local log="$OUT/hf_parity_$1.log" rc
  stamp "hf: common_hf_parity_test $1 (cuda)"
  hf_run "$log" "$2"; rc=$?
  echo "common_hf_parity_test $1 rc=$rc" | tee -a "$OUT/summary.txt"
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests from .* ran|Failure$" "$log" | head -12 | tee -a "$OUT/summary.txt"
  # Killed by a signal (not the timeout's 124): the same run again under
  # cuda-gdb for a backtrace (once per script run; the crash may need the
  # tests before it), then the tests still run without the check that died
  # (its name's part before '/').
  if [ "$rc" -gt 128 ] && [ "$rc" != 137 ]; then
    local crashed check
    crashed=$(grep '^\[ RUN      \]' "$log" | tail -1 | awk '{print $4}')
    check=${crashed#*.}; check=${check%%/*}
    stamp "hf: $1 died (signal $((rc - 128))) in $crashed"
    if [ "$HF_GDB_DONE" = 0 ] && command -v cuda-gdb > /dev/null && [ -n "$crashed" ]; then
      HF_GDB_DONE=1
      stamp "hf: cuda-gdb backtrace ($1)"
      env LOCKSTEP_HF_DEVICE=cuda ${2:+LOCKSTEP_HF_FIXTURE_DIR="$2"} timeout "${HF_GDB_TIMEOUT:-240}" \
        cuda-gdb -q -batch -ex run -ex bt -ex "info threads" \
        --args build-gpu/tests/common/common_hf_parity_test > "$OUT/hf_parity_$1_gdb.log" 2>&1
      grep -E "^#[0-9]+ " "$OUT/hf_parity_$1_gdb.log" | head -12 | tee -a "$OUT/summary.txt"
    fi
    if [ -n "$check" ]; then
      stamp "hf: common_hf_parity_test $1 (cuda) without *.$check/*"
      hf_run "$OUT/hf_parity_$1_rest.log" "$2" --gtest_filter="-*.$check/*"; rc=$?
      echo "common_hf_parity_test $1 without $check rc=$rc" | tee -a "$OUT/summary.txt"
      grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests from .* ran|Failure$" "$OUT/hf_parity_$1_rest.log" \
        | head -12 | tee -a "$OUT/summary.txt"
    fi
  fi
}
if [ "${SKIP_HF:-0}" != 1 ]; then
  HF_BUILT=1; [ -x build-gpu/tests/common/common_hf_parity_test ] || HF_BUILT=0
  [ "$HF_BUILT" = 1 ] || stamp "common_hf_parity_test NOT BUILT"
  tiny_done=0
  if [ "$HF_BUILT" = 1 ] && [ -n "$HF_GEN_PID" ] && kill -0 "$HF_GEN_PID" 2>/dev/null; then
    hf_test tiny ""; tiny_done=1
  fi
  [ -n "$HF_GEN_PID" ] && { stamp "hf: wait for generate.py"; wait "$HF_GEN_PID"; }
  if grep -q '^SUMMARY:' "$OUT/hf_generate.log"; then
    sed -n '/^SUMMARY:/,$p' "$OUT/hf_generate.log" | tee -a "$OUT/summary.txt"
  else
    tail -5 "$OUT/hf_generate.log" | tee -a "$OUT/summary.txt"
  fi
  if [ "$HF_BUILT" = 1 ]; then
    if ls "$WORK"/hf-real/*/expected.json > /dev/null 2>&1; then
      hf_test real "$WORK/hf-real"
    else
      stamp "hf: no real-width fixture written (hf_generate.log)"
    fi
    [ "$tiny_done" = 1 ] || hf_test tiny ""
  fi
  # One file back instead of three (the device returns at most 8).
  HF_PARTS="hf_generate hf_parity_real hf_parity_real_gdb hf_parity_real_rest hf_parity_tiny"
  HF_PARTS="$HF_PARTS hf_parity_tiny_gdb hf_parity_tiny_rest"
  for part in $HF_PARTS; do
    [ -f "$OUT/$part.log" ] && { echo "===== $part.log"; cat "$OUT/$part.log"; }
  done > "$OUT/hf_parity.log.tmp" && mv "$OUT/hf_parity.log.tmp" "$OUT/hf_parity.log" \
    && for part in $HF_PARTS; do rm -f "$OUT/$part.log"; done
fi
if [ "${STEP_BENCH:-0}" = 1 ]; then
  if [ -x build-gpu/bench/model_step_bench ]; then
    for mode in $(echo "${STEP_BENCH_MODES:-invariant}" | tr , " "); do
      stamp "model_step_bench --mode=$mode ${STEP_BENCH_ARGS:-}"
      timeout "${STEP_BENCH_TIMEOUT:-240}" build-gpu/bench/model_step_bench --mode="$mode" \
        ${STEP_BENCH_ARGS:-} >> "$OUT/model_step_bench.log" 2>&1
      echo "model_step_bench $mode rc=$?" | tee -a "$OUT/summary.txt"
    done
    grep -E "^\||^roofline" "$OUT/model_step_bench.log" | tee -a "$OUT/summary.txt"
  else
    stamp "model_step_bench NOT BUILT"
  fi
fi
for k in ${KERNEL_BENCH:-}; do
  if [ -x "build-gpu/bench/${k}_cuda_bench" ]; then
    stamp "${k}_cuda_bench ${KERNEL_BENCH_ARGS:-}"
    timeout "${KERNEL_BENCH_TIMEOUT:-200}" "build-gpu/bench/${k}_cuda_bench" ${KERNEL_BENCH_ARGS:-} \
      > "$OUT/${k}_cuda_bench.log" 2>&1
    echo "${k}_cuda_bench rc=$?" | tee -a "$OUT/summary.txt"
    grep -E "^\||^#|ceiling|bandwidth|peak" "$OUT/${k}_cuda_bench.log" | tee -a "$OUT/summary.txt"
  else
    stamp "${k}_cuda_bench NOT BUILT"
  fi
done
# One rollout_bench run of `config` with the given flags, into $OUT/$2.log.
rollout_run() {  # $1: config, $2: log name, then rollout_bench flags
  local cfg=$1 log=$2; shift 2
  timeout "${BENCH_TIMEOUT:-400}" build-gpu/bench/rollout_bench --configs="$cfg" \
    --modes="${BENCH_MODES:-invariant,standard}" \
    ${BENCH_VARIANTS:+--step_variants=$BENCH_VARIANTS} --device=cuda --work_dir="$WORK" \
    --server_args=--kv_cache_bytes=${BENCH_KV_BYTES:-17179869184},--max_batch_tokens=${BENCH_BATCH_TOKENS:-4096}${BENCH_SERVER_EXTRA:+,$BENCH_SERVER_EXTRA} \
    --rollout_binary=build-gpu/rollout_service/rollout_service "$@" >> "$OUT/$log.log" 2>&1
  echo "rollout_bench $cfg $log rc=$?" | tee -a "$OUT/summary.txt"
}
if [ -x build-gpu/bench/rollout_bench ] && [ "${SKIP_BENCH:-0}" != 1 ]; then
  [ -n "$GEN_PID" ] && { stamp "wait for the checkpoints"; wait "$GEN_PID"; cat "$OUT/generate.log"; }
  for cfg in ${BENCH_CONFIGS//,/ }; do
    stamp "rollout_bench $cfg concurrency ${BENCH_CONCURRENCY:-64} prompt ${BENCH_PROMPT:-64} new ${BENCH_NEW:-128}"
    if [ "${SKIP_DECODE:-0}" != 1 ]; then
      rollout_run "$cfg" rollout_bench --concurrency="${BENCH_CONCURRENCY:-64}" \
        --max_tokens="${BENCH_NEW:-128}" --prompt_len="${BENCH_PROMPT:-64}" \
        --requests_per_client="${BENCH_REQUESTS:-2}"
      grep -E "^\|" "$OUT/rollout_bench.log" | tail -n +1 | tee -a "$OUT/summary.txt"
    fi
    if [ "${RL_BENCH:-0}" = 1 ]; then
      stamp "rollout_bench $cfg RL shape: 128 prompts x n=8, prompt ${RL_PROMPT:-512}, new ${RL_NEW:-1024}"
      rollout_run "$cfg" rollout_bench_rl --concurrency=128 --samples_per_prompt=8 \
        --max_tokens="${RL_NEW:-1024}" --prompt_len="${RL_PROMPT:-512}" --requests_per_client=1
      grep -E "^\|" "$OUT/rollout_bench_rl.log" | tee -a "$OUT/summary.txt"
    fi
    if [ "${HF_PEER:-0}" = 1 ] && [ "${SKIP_DECODE:-0}" != 1 ]; then
      stamp "hf_peer_decode $cfg"
      timeout "${HF_PEER_TIMEOUT:-400}" python3 bench/hf_peer_decode.py --model "$WORK/$cfg" \
        --batches "${HF_PEER_BATCHES:-1,16,64,256}" --prompt_len "${BENCH_PROMPT:-64}" \
        --new_tokens "${BENCH_NEW:-128}" --methods "${HF_PEER_METHODS:-static_graphs}" \
        --time_budget_s "${HF_PEER_BUDGET:-240}" --out "$OUT/hf_peer_$cfg.json" \
        >> "$OUT/hf_peer.log" 2>&1
      echo "hf_peer_decode $cfg rc=$?" | tee -a "$OUT/summary.txt"
      grep -E "^\|" "$OUT/hf_peer.log" | tail -12 | tee -a "$OUT/summary.txt"
    fi
    if [ "${HF_PEER:-0}" = 1 ] && [ "${RL_BENCH:-0}" = 1 ]; then
        hb=${HF_RL_BATCH:-256} hw=${HF_RL_WAVES:-$((1024 / ${HF_RL_BATCH:-256}))}
        stamp "hf_peer_decode $cfg RL shape: $hw waves of $hb"
        timeout "${HF_PEER_TIMEOUT:-400}" python3 bench/hf_peer_decode.py --model "$WORK/$cfg" \
          --batches "$hb" --waves "$hw" --prompt_len "${RL_PROMPT:-512}" \
          --new_tokens "${RL_NEW:-1024}" --methods static_graphs --time_budget_s 600 \
          --out "$OUT/hf_peer_rl_$cfg.json" >> "$OUT/hf_peer.log" 2>&1
        echo "hf_peer_decode $cfg RL rc=$?" | tee -a "$OUT/summary.txt"
        grep -E "^\|" "$OUT/hf_peer.log" | tail -3 | tee -a "$OUT/summary.txt"
    fi
  done
fi
stamp done
