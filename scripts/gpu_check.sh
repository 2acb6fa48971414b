#!/usr/bin/env bash
# Builds the CUDA kernels, their tests and benchmarks on the GPU machine, runs
# everything and prints a summary. Meant for the device tool:
#   bash scripts/gpu_check.sh [tests|bench|all]   (default: all)
# Logs go to $OUT (or ./gpu-out): build.log, sass.txt, tests.log, gemm.log,
# attention.log, summary.txt.
set -u
MODE=${1:-all}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

source .device/device-env.sh
# Packages missing from .device/debs (libgmock-dev: GTest::gmock, which every
# test target links) may be dropped into .device/extra/.
for d in .device/extra/*.deb; do [ -e "$d" ] && dpkg -x "$d" /opt/deps; done
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
  > "$OUT/summary.txt" 2>&1
stamp "configure" | tee -a "$OUT/summary.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DLOCKSTEP_BUILD_BENCH=ON -DLOCKSTEP_CUDA=ON \
  > "$OUT/build.log" 2>&1 || { echo "CONFIGURE FAILED"; tail -40 "$OUT/build.log"; exit 1; }
grep -E "lockstep: CUDA" "$OUT/build.log" | tee -a "$OUT/summary.txt"

# The backend harness runs every op on the CPU and the CUDA backend
# (tests/kernels/backend_ops_test.cc); run directly it does both.
TESTS="kernels_backend_ops_test"
BENCHES="gemm_cuda_bench attention_cuda_bench"
TARGETS=""
[ "$MODE" != bench ] && TARGETS="$TARGETS $TESTS"
[ "$MODE" != tests ] && TARGETS="$TARGETS $BENCHES"
stamp "build" | tee -a "$OUT/summary.txt"
# Build what builds; a broken target (someone else's file) must not stop the rest.
cmake --build build-gpu -j16 --target $TARGETS -- -k 0 >> "$OUT/build.log" 2>&1 \
  || echo "some targets failed to build (see build.log)" | tee -a "$OUT/summary.txt"
grep -E "error|FAILED" "$OUT/build.log" | head -20

stamp "sass" | tee -a "$OUT/summary.txt"
OBJ=$(find build-gpu -name 'matmul.cu.o' | head -1)
if [ -n "$OBJ" ]; then
  cuobjdump -sass "$OBJ" > "$OUT/sass_full.txt" 2>&1
  {
    echo "matmul.cu.o SASS: HGMMA $(grep -c HGMMA "$OUT/sass_full.txt")," \
         "UTMALDG $(grep -c UTMALDG "$OUT/sass_full.txt")," \
         "SYNCS $(grep -c SYNCS "$OUT/sass_full.txt")," \
         "LDL/STL $(grep -cE 'LDL|STL' "$OUT/sass_full.txt")"
    grep -oE "HGMMA\.[0-9A-Za-z.]+" "$OUT/sass_full.txt" | sort | uniq -c
  } > "$OUT/sass.txt"
  rm -f "$OUT/sass_full.txt"
  cat "$OUT/sass.txt" | tee -a "$OUT/summary.txt" | head -12
fi

if [ "$MODE" != bench ]; then
  : > "$OUT/tests.log"
  for t in $TESTS; do
    bin=build-gpu/tests/kernels/$t
    if [ ! -x "$bin" ]; then echo "$t: NOT BUILT" | tee -a "$OUT/summary.txt"; continue; fi
    stamp "$t" >> "$OUT/tests.log"
    timeout 240 "$bin" --gtest_color=no >> "$OUT/tests.log" 2>&1
    rc=$?
    line=$(grep -E "^\[  PASSED  \]|^\[  FAILED  \] [0-9]+ test" "$OUT/tests.log" | tail -1)
    echo "$t: rc=$rc $line" | tee -a "$OUT/summary.txt"
  done
  grep -E "^\[  FAILED  \]|Failure|rel err" "$OUT/tests.log" | head -40
fi

if [ "$MODE" != tests ]; then
  stamp "gemm bench" | tee -a "$OUT/summary.txt"
  if [ -x build-gpu/bench/gemm_cuda_bench ]; then
    timeout 300 build-gpu/bench/gemm_cuda_bench --benchmark_counters_tabular=true \
      > "$OUT/gemm.log" 2>&1
    echo "gemm_cuda_bench rc=$?" | tee -a "$OUT/summary.txt"
    grep -E "^ceilings|^\|" "$OUT/gemm.log" | tee -a "$OUT/summary.txt"
  fi
  stamp "attention bench" | tee -a "$OUT/summary.txt"
  if [ -x build-gpu/bench/attention_cuda_bench ]; then
    timeout 200 build-gpu/bench/attention_cuda_bench > "$OUT/attention.log" 2>&1
    echo "attention_cuda_bench rc=$?" | tee -a "$OUT/summary.txt"
    grep -E "^ceiling|^\|" "$OUT/attention.log" | tee -a "$OUT/summary.txt"
  fi
fi
stamp "done" | tee -a "$OUT/summary.txt"
