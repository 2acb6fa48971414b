#!/usr/bin/env bash
# Whole-model and service checks on the GPU machine (issue 5 §2-§4, issue 8):
# builds the model/service targets, runs the `cuda`-labelled model and
# service tests, then the end-to-end rollout decode benchmark on a
# Qwen3-1.7B-shaped model, invariant vs standard. For the device tool:
#   bash scripts/gpu_model_check.sh        (logs under $OUT or ./gpu-out)
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }

source .device/device-env.sh
for d in .device/extra/*.deb; do [ -e "$d" ] && dpkg -x "$d" /opt/deps; done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/summary.txt" 2>&1
stamp configure
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DLOCKSTEP_BUILD_BENCH=ON -DLOCKSTEP_CUDA=ON > "$OUT/build.log" 2>&1 \
  || { echo "CONFIGURE FAILED"; tail -40 "$OUT/build.log"; exit 1; }
TESTS=${TESTS:-"common_transformer_cuda_test common_nccl_tp_cuda_test integration_rollout_greedy_cuda_test"}
stamp build
BENCH_TARGET=rollout_bench; [ "${SKIP_BENCH:-0}" = 1 ] && BENCH_TARGET=
cmake --build build-gpu -j16 --target $TESTS rollout_service lockstep_make_model $BENCH_TARGET \
  -- -k 0 >> "$OUT/build.log" 2>&1 || stamp "some targets failed (build.log)"
grep -E "error:|FAILED" "$OUT/build.log" | head -20
# The 1.7B checkpoint (3.4 GB of seeded bf16, the benchmark's seed 1) is
# written on the CPU while the GPU tests run.
WORK=${WORK:-$PWD/gpu-work}
mkdir -p "$WORK"
GEN_PID=
if [ "${SKIP_BENCH:-0}" != 1 ] && [ ! -f "$WORK/qwen3-1.7b/config.json" ]; then
  stamp "generate qwen3-1.7b (background)"
  ( g0=$(date +%s); build-gpu/common/lockstep_make_model --preset qwen3-1.7b --seed 1 \
      --out "$WORK/qwen3-1.7b" > "$OUT/generate.log" 2>&1
    echo "generate: rc=$? $(( $(date +%s) - g0 )) s" >> "$OUT/generate.log" ) &
  GEN_PID=$!
fi
for t in $TESTS; do
  bin=$(find build-gpu/tests -name "$t" -type f | head -1)
  [ -z "$bin" ] && { stamp "$t NOT BUILT"; continue; }
  stamp "run $t"
  timeout "${TEST_TIMEOUT:-420}" "$bin" > "$OUT/$t.log" 2>&1
  echo "$t rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "distinct outputs|PASSED|FAILED|SKIPPED|Failure|OK \]" "$OUT/$t.log" | head -8 | tee -a "$OUT/summary.txt"
done
if [ -x build-gpu/bench/rollout_bench ] && [ "${SKIP_BENCH:-0}" != 1 ]; then
  [ -n "$GEN_PID" ] && { stamp "wait for the checkpoint"; wait "$GEN_PID"; cat "$OUT/generate.log"; }
  stamp "rollout_bench qwen3-1.7b concurrency ${BENCH_CONCURRENCY:-64}"
  timeout "${BENCH_TIMEOUT:-400}" build-gpu/bench/rollout_bench --configs=qwen3-1.7b \
    --modes=invariant,standard --concurrency="${BENCH_CONCURRENCY:-64}" --device=cuda \
    --max_tokens=128 --prompt_len=64 --requests_per_client=2 --work_dir="$WORK" \
    --server_args=--kv_cache_bytes=17179869184,--max_batch_tokens=4096 \
    --rollout_binary=build-gpu/rollout_service/rollout_service \
    > "$OUT/rollout_bench.log" 2>&1
  echo "rollout_bench rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "^\|" "$OUT/rollout_bench.log" | tee -a "$OUT/summary.txt"
fi
stamp done
