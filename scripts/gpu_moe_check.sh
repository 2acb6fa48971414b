#!/usr/bin/env bash
# Issue 20 on the GPU machine, one device call: the Qwen3-MoE parity
# fixtures written by transformers (tests/fixtures/hf/generate.py --only
# qwen3_moe,qwen3_moe_step2, on the CPU while the build runs), the router
# kernel's CUDA cases, the MoE model tests on the GPU (rollout decode ==
# learner over > 10^5 tokens with a standard twin; HF parity on the new
# fixtures, CPU and GPU; 1000 identical greedy requests on an MoE model),
# then the decode step of a Qwen3-30B-A3B-shaped model (random bf16 weights in
# memory, 24 of its 48 layers) in invariant and standard mode. For the device tool:
#   bash scripts/gpu_moe_check.sh     (logs under $OUT or ./gpu-out; the new
#                                      fixtures come back as fixtures.tar.gz)
# Knobs: SKIP_BENCH=1, BENCH_BATCHES="1 64", BENCH_STEPS=8, BENCH_LAYERS=24
#        (of 48: standard mode keeps fp32 weights, 122 GB for all 48),
#        SKIP_GREEDY=1.
source scripts/gpu_env.sh

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/summary.txt" 2>&1
mkdir -p "$WORK/fixtures"

stamp "fixtures (transformers, CPU) in the background"
( PYTHONUNBUFFERED=1 timeout 400 python3 tests/fixtures/hf/generate.py \
    --only qwen3_moe,qwen3_moe_step2 --out "$WORK/fixtures" > "$OUT/generate.log" 2>&1
  echo "generate rc=$?" >> "$OUT/generate.log" ) &
GEN=$!

stamp configure
gpu_configure
stamp build
cmake --build build-gpu -j16 --target kernels_backend_ops_test common_moe_cuda_test \
  common_moe_test common_hf_parity_test integration_rollout_greedy_cuda_test rollout_service \
  lockstep_make_model model_step_bench >> "$OUT/build.log" 2>&1 \
  || { echo "BUILD FAILED"; grep -m20 -B2 -A8 "error" "$OUT/build.log"; exit 1; }
stamp built
export LOCKSTEP_BUILD_DIR=$PWD/build-gpu LOCKSTEP_SOURCE_DIR=$PWD

stamp "router kernel cases (CPU and CUDA backends)"
timeout 120 "$(bin kernels_backend_ops_test)" --gtest_filter='*route_top_k*' \
  > "$OUT/router_cases.log" 2>&1
stamp "router cases rc=$? $(grep -c '\[       OK \]' "$OUT/router_cases.log") ok"
stamp "common_moe_test (CPU tests, GPU machine)"
timeout 200 "$(bin common_moe_test)" > "$OUT/moe_test.log" 2>&1
stamp "common_moe_test rc=$?"
stamp "common_moe_cuda_test"
timeout 300 "$(bin common_moe_cuda_test)" > "$OUT/moe_cuda_test.log" 2>&1
stamp "common_moe_cuda_test rc=$? $(grep '\[moe\]' "$OUT/moe_cuda_test.log" | tr '\n' ' ')"

wait $GEN
stamp "$(tail -1 "$OUT/generate.log")"
tar -C "$WORK/fixtures" -czf "$OUT/fixtures.tar.gz" . 2>/dev/null
for dev in cpu cuda; do
  stamp "hf parity on the MoE fixtures, $dev"
  LOCKSTEP_HF_FIXTURE_DIR="$WORK/fixtures" LOCKSTEP_HF_DEVICE=$dev timeout 200 \
    "$(bin common_hf_parity_test)" > "$OUT/hf_parity_$dev.log" 2>&1
  stamp "hf parity $dev rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/hf_parity_$dev.log" | tr '\n' ' ')"
done

if [ "${SKIP_GREEDY:-0}" != 1 ]; then
  stamp "1000 greedy requests on an MoE model"
  timeout 400 "$(bin integration_rollout_greedy_cuda_test)" --gtest_filter='*OnMoe' \
    > "$OUT/greedy_moe.log" 2>&1
  stamp "greedy rc=$? $(grep 'distinct' "$OUT/greedy_moe.log" | tr '\n' ' ')"
fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  for b in ${BENCH_BATCHES:-1 64}; do
    for mode in invariant standard; do
      stamp "model_step_bench qwen3-30b-a3b batch $b $mode"
      timeout 240 "$(bin model_step_bench)" --config=qwen3-30b-a3b --layers=${BENCH_LAYERS:-24} \
        --batch=$b --context=128 \
        --steps=${BENCH_STEPS:-8} --warmup=2 --variants=eager --mode=$mode \
        > "$OUT/step_${b}_$mode.md" 2>&1
      stamp "bench rc=$? $(grep -E '^\| eager|MoE:|roofline' "$OUT/step_${b}_$mode.md" | tr '\n' ' ')"
    done
  done
fi
stamp done
cat "$OUT/summary.txt"
