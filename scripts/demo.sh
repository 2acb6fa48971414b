#!/usr/bin/env bash
# lockstep demo: the learner-driven RL loop on the tiny model, on CPU, with a
# rollout_service and a learner_service as separate processes on loopback —
# first with the invariant kernels, then with the standard ones.
#
# Usage: scripts/demo.sh BUILD_DIR        (`make demo` passes its build dir)
# Environment:
#   DEMO_STEPS=N        training steps per mode (default 30)
#   DEMO_TASK=reverse   built-in task (reverse | add)
#   DEMO_LR=3e-3        learning rate
#   DEMO_TEMPERATURE=0.8, DEMO_TOP_P=0.95
#                       the sampling distribution (the learner trains on the
#                       logprobs under it; both kinds are compared)
#   DEMO_LINGER=S       keep both services of each mode up S seconds after the
#                       run so that a local Prometheus can scrape them
#   DEMO_KEEP=1         keep the work directory (logs, model)
# Exit status: 0 when invariant mode compared tokens and every one was
# bit-identical; 1 when invariant mode ever mismatched; 2 on setup errors.
set -euo pipefail

BUILD_DIR=${1:-build}
STEPS=${DEMO_STEPS:-30}
TASK=${DEMO_TASK:-reverse}
LR=${DEMO_LR:-3e-3}
TEMPERATURE=${DEMO_TEMPERATURE:-0.8}
TOP_P=${DEMO_TOP_P:-0.95}
LINGER=${DEMO_LINGER:-0}
PROMPTS=${DEMO_PROMPTS:-16}
SAMPLES=${DEMO_SAMPLES:-8}

MAKE_MODEL="$BUILD_DIR/common/lockstep_make_model"
ROLLOUT="$BUILD_DIR/rollout_service/rollout_service"
LEARNER="$BUILD_DIR/learner_service/learner_service"
for bin in "$MAKE_MODEL" "$ROLLOUT" "$LEARNER"; do
  if [[ ! -x "$bin" ]]; then
    echo "demo: $bin not found; build first (make build)" >&2
    exit 2
  fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-demo.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true
  done
  if [[ "${DEMO_KEEP:-0}" != 1 ]]; then rm -rf "$WORK"; else echo "demo: kept $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits for `listening grpc=H:P metrics=H:P` in $1 (a log file) from process
# $2; prints "GRPC METRICS".
wait_listening() {
  local log=$1 pid=$2 deadline=$((SECONDS + 180)) line
  while ((SECONDS < deadline)); do
    line=$(grep -m1 '^listening grpc=' "$log" 2>/dev/null || true)
    if [[ -n "$line" ]]; then
      line=${line#listening grpc=}
      echo "${line%% metrics=*} ${line##* metrics=}"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: process $pid exited before listening; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "demo: timed out waiting for $log" >&2
  return 1
}

# Value of a sample line `name value` in a Prometheus text scrape (stdin).
metric() { awk -v n="$1" '$1 == n { print $2; exit }'; }

echo "== lockstep demo: tiny model (vocab 64), task '$TASK', $STEPS steps," \
     "$PROMPTS prompts x $SAMPLES samples per step, CPU"
"$MAKE_MODEL" --preset tiny --seed 1 --out "$WORK/model" >/dev/null

declare -A SUMMARY
run_mode() {
  local mode=$1
  local rlog="$WORK/rollout_$mode.log" llog="$WORK/learner_$mode.log"
  echo
  echo "== $mode kernels"
  "$ROLLOUT" --model_dir="$WORK/model" --kernels="$mode" --device=cpu \
    --host=127.0.0.1 --port=0 --metrics_port=0 >"$rlog" 2>&1 &
  local rpid=$!
  PIDS+=("$rpid")
  local raddr rmetrics
  read -r raddr rmetrics < <(wait_listening "$rlog" "$rpid") || exit 2
  "$LEARNER" --model_dir="$WORK/model" --kernels="$mode" --device=cpu \
    --host=127.0.0.1 --port=0 --metrics_port=0 --rollout="$raddr" \
    --drive --steps="$STEPS" --task="$TASK" --lr="$LR" --seed=1 \
    --temperature="$TEMPERATURE" --top_p="$TOP_P" \
    --prompts_per_step="$PROMPTS" --samples_per_prompt="$SAMPLES" \
    --keep_serving >"$llog" 2>&1 &
  local lpid=$!
  PIDS+=("$lpid")
  local laddr lmetrics
  read -r laddr lmetrics < <(wait_listening "$llog" "$lpid") || exit 2
  echo "   rollout_service grpc=$raddr metrics=http://$rmetrics/metrics"
  echo "   learner_service grpc=$laddr metrics=http://$lmetrics/metrics"
  # Stream the learner's per-step lines until its summary line.
  local printed=0 summary=""
  while true; do
    mapfile -t lines < <(grep -E '^ *(step|[0-9]+) ' "$llog" || true)
    while ((printed < ${#lines[@]})); do
      echo "   ${lines[$printed]}"
      printed=$((printed + 1))
    done
    summary=$(grep -m1 '^summary ' "$llog" || true)
    [[ -n "$summary" ]] && break
    if ! kill -0 "$lpid" 2>/dev/null; then
      echo "demo: learner_service ($mode) stopped early; its log:" >&2
      cat "$llog" >&2
      exit 2
    fi
    sleep 0.3
  done
  mapfile -t lines < <(grep -E '^ *(step|[0-9]+) ' "$llog" || true)
  while ((printed < ${#lines[@]})); do
    echo "   ${lines[$printed]}"
    printed=$((printed + 1))
  done
  # The same numbers as Prometheus sees them.
  local scrape
  scrape=$(curl -sf "http://$lmetrics/metrics" || true)
  local cmp mis exact smis
  cmp=$(metric lockstep_tokens_compared_total <<<"$scrape")
  mis=$(metric lockstep_tokens_mismatched_total <<<"$scrape")
  smis=$(metric lockstep_sampled_tokens_mismatched_total <<<"$scrape")
  exact=$(awk '$1 ~ /^lockstep_logprob_abs_diff_bucket\{le="0"\}$/ { print $2; exit }' <<<"$scrape")
  echo "   /metrics: lockstep_tokens_compared_total=${cmp:-?}" \
       "lockstep_tokens_mismatched_total=${mis:-?}" \
       "lockstep_logprob_abs_diff_bucket{le=\"0\"}=${exact:-?}" \
       "lockstep_sampled_tokens_mismatched_total=${smis:-?}"
  SUMMARY[$mode]=$summary
  if ((LINGER > 0)); then
    echo "   (services stay up ${LINGER}s for scraping)"
    sleep "$LINGER"
  fi
  kill -TERM "$lpid" "$rpid" 2>/dev/null || true
  wait "$lpid" 2>/dev/null || true
  wait "$rpid" 2>/dev/null || true
}

run_mode invariant
run_mode standard

field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2; exit }'; }

echo
echo "== summary ($STEPS steps each, temperature $TEMPERATURE, top_p $TOP_P)"
printf '%-10s %10s %11s %9s %11s %9s %9s %9s %13s\n' mode compared mismatched exact% \
  'max|dlp|' reward0 rewardN push_ms 'sampled-mism'
for mode in invariant standard; do
  s=${SUMMARY[$mode]}
  printf '%-10s %10s %11s %8.2f%% %11s %9s %9s %9s %13s\n' "$mode" \
    "$(field "$s" tokens_compared)" "$(field "$s" tokens_mismatched)" \
    "$(field "$s" exact_pct)" "$(field "$s" max_abs_diff)" \
    "$(field "$s" reward_first)" "$(field "$s" reward_last)" \
    "$(field "$s" mean_push_ms)" "$(field "$s" sampled_mismatched)"
done

inv=${SUMMARY[invariant]}
inv_cmp=$(field "$inv" tokens_compared)
inv_mis=$(field "$inv" tokens_mismatched)
inv_scmp=$(field "$inv" sampled_compared)
inv_smis=$(field "$inv" sampled_mismatched)
echo
if [[ "${inv_cmp:-0}" -gt 0 && "${inv_mis:-1}" -eq 0 && "${inv_scmp:-0}" -gt 0 &&
      "${inv_smis:-1}" -eq 0 ]]; then
  echo "invariant: all $inv_cmp compared tokens bit-identical between rollout and learner," \
       "raw and under the sampling distribution ($inv_scmp)"
  exit 0
fi
echo "invariant: MISMATCH ($inv_mis raw and ${inv_smis:-?} sampled of $inv_cmp tokens differ)" >&2
exit 1
