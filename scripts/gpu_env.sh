# The common start of the scripts/gpu_*_check.sh scripts (sourced, from the
# project root, on the GPU machine): $OUT (logs; ./gpu-out by default) and
# $WORK (scratch; ./gpu-work), NCCL_NVLS_ENABLE=0, the carried Debian
# packages (.device/device-env.sh plus .device/extra/*.deb) and
#   stamp MSG...   prints "[<seconds since start>s] MSG" and appends it to
#                  $OUT/summary.txt
#   gpu_configure  configures build-gpu (Release, sm_90a, benches, CUDA);
#                  exits the script when that fails
#   bin NAME       the path of the built executable NAME under build-gpu
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }

source .device/device-env.sh
for d in .device/extra/*.deb; do [ -e "$d" ] && dpkg -x "$d" /opt/deps; done
WORK=${WORK:-$PWD/gpu-work}
mkdir -p "$WORK"

gpu_configure() {
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DLOCKSTEP_BUILD_BENCH=ON -DLOCKSTEP_CUDA=ON > "$OUT/build.log" 2>&1 \
    || { echo "CONFIGURE FAILED"; tail -40 "$OUT/build.log"; exit 1; }
}

bin() { find build-gpu -name "$1" -type f -perm -u+x | head -1; }
