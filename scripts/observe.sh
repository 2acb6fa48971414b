#!/usr/bin/env bash
# Observe locally running lockstep services (e.g. those of `make demo`) with Debian's Prometheus on
# loopback: scrapes the services' /metrics, evaluates the alert rules of deploy/prometheus/, and probes
# their gRPC health through prometheus-blackbox-exporter when it is installed. `make observe` runs it.
#
# Usage: scripts/observe.sh [options]      (Ctrl-C stops Prometheus and the exporter)
# Without target options it finds the rollout_service and learner_service processes running on this
# machine, and their ports, every 2 s (deploy/prometheus/discover_local_targets.py): `make demo` picks
# its ports at run time. With any of these four, it watches exactly the given endpoints:
#   --rollout HOST:PORT       a rollout's metrics endpoint (repeatable; e.g. 127.0.0.1:9400)
#   --learner HOST:PORT       the learner's metrics endpoint (repeatable; e.g. 127.0.0.1:9401)
#   --grpc-rollout HOST:PORT  a rollout's gRPC endpoint for health probes (repeatable)
#   --grpc-learner HOST:PORT  the learner's gRPC endpoint (repeatable)
#   --listen HOST:PORT        Prometheus' address (default 127.0.0.1:9090; loopback only)
#   --blackbox-listen HOST:PORT  blackbox exporter's address (default 127.0.0.1:9115; loopback only)
#   --no-blackbox             do not probe gRPC health
#   --scrape-interval DUR     scrape and rule evaluation interval (default 5s)
#   --retention DUR           how long Prometheus keeps samples (default 1d)
#   --state-dir DIR           configuration and TSDB (default out/observe)
# Then open http://127.0.0.1:9090 (Alerts, Graph), or import deploy/grafana/lockstep.json into a Grafana
# with this Prometheus as its data source (docs/deploy.md, "Observe locally").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rollouts=() learners=() grpc_rollouts=() grpc_learners=()
listen=127.0.0.1:9090
bb_listen=127.0.0.1:9115
blackbox=1
interval=5s
retention=1d
state="$ROOT/out/observe"

die() { echo "observe: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rollout) need "$@"; rollouts+=("$2"); shift 2 ;;
    --learner) need "$@"; learners+=("$2"); shift 2 ;;
    --grpc-rollout) need "$@"; grpc_rollouts+=("$2"); shift 2 ;;
    --grpc-learner) need "$@"; grpc_learners+=("$2"); shift 2 ;;
    --listen) need "$@"; listen="$2"; shift 2 ;;
    --blackbox-listen) need "$@"; bb_listen="$2"; shift 2 ;;
    --no-blackbox) blackbox=0; shift ;;
    --scrape-interval) need "$@"; interval="$2"; shift 2 ;;
    --retention) need "$@"; retention="$2"; shift 2 ;;
    --state-dir) need "$@"; state="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
discover=0
if [[ $((${#rollouts[@]} + ${#learners[@]} + ${#grpc_rollouts[@]} + ${#grpc_learners[@]})) -eq 0 ]]; then
  discover=1
fi

# Everything listens and scrapes on this machine only.
loopback() { [[ $1 =~ ^(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost|\[::1\]):[0-9]+$ ]]; }
for a in "$listen" "$bb_listen" ${rollouts[@]+"${rollouts[@]}"} ${learners[@]+"${learners[@]}"} \
         ${grpc_rollouts[@]+"${grpc_rollouts[@]}"} ${grpc_learners[@]+"${grpc_learners[@]}"}; do
  loopback "$a" || die "$a is not a loopback HOST:PORT (127.0.0.0/8, localhost or [::1])"
done
[[ $interval =~ ^[0-9]+(ms|s|m)$ ]] || die "--scrape-interval $interval is not a duration like 5s"

PROMETHEUS="$(command -v prometheus || true)"
[[ -n $PROMETHEUS ]] || die "prometheus not found: apt-get install prometheus (scripts/install-deps.sh)"
BLACKBOX="$(command -v prometheus-blackbox-exporter || true)"
if [[ $blackbox == 1 && -z $BLACKBOX ]]; then
  echo "observe: prometheus-blackbox-exporter not installed; gRPC health is not probed" >&2
  blackbox=0
fi

# --- configuration in the state directory ---------------------------------------------------------
mkdir -p "$state/targets" "$state/data"
rm -f "$state"/targets/*.json
cp "$ROOT/deploy/prometheus/lockstep-rules.yml" "$ROOT/deploy/prometheus/blackbox.yml" "$state/"
# The repository's prometheus.yml with this run's interval and own address.
timeout="$interval"
if [[ $interval =~ ^([0-9]+)s$ ]] && (( BASH_REMATCH[1] > 1 )); then timeout="$((BASH_REMATCH[1] - 1))s"; fi
sed -e "s/^  scrape_interval: .*/  scrape_interval: $interval/" \
    -e "s/^  scrape_timeout: .*/  scrape_timeout: $timeout/" \
    -e "s/^  evaluation_interval: .*/  evaluation_interval: $interval/" \
    -e "s/'127.0.0.1:9090'/'$listen'/" \
    "$ROOT/deploy/prometheus/prometheus.yml" > "$state/prometheus.yml"

json_list() { local IFS=,; local q=("${@/#/\"}"); q=("${q[@]/%/\"}"); echo "${q[*]}"; }
# No target labels on the metrics jobs: the services' own `role` label must not be renamed.
write_targets() {  # file targets...
  local file="$1"; shift
  echo "[{\"targets\": [$(json_list "$@")], \"labels\": {}}]" > "$state/targets/$file.tmp"
  mv "$state/targets/$file.tmp" "$state/targets/$file"
}
[[ $discover == 1 ]] || write_targets rollout.json "${rollouts[@]}"
[[ $discover == 1 ]] || write_targets learner.json "${learners[@]}"
if [[ $blackbox == 1 && $discover == 0 ]]; then
  for pair in "rollout:grpc_rollout" "learner:grpc_learner"; do
    role="${pair%%:*}" module="${pair#*:}"
    if [[ $role == rollout ]]; then addrs=("${grpc_rollouts[@]}"); else addrs=("${grpc_learners[@]}"); fi
    [[ ${#addrs[@]} -gt 0 ]] || continue
    for m in "$module" grpc_health; do
      echo "[{\"targets\": [$(json_list "${addrs[@]}")], \"labels\": {\"role\": \"$role\"," \
           "\"module\": \"$m\", \"blackbox\": \"$bb_listen\"}}]" > "$state/targets/grpc-$role-$m.json"
    done
  done
fi
promtool check config "$state/prometheus.yml" > "$state/check.log" 2>&1 ||
  { cat "$state/check.log" >&2; die "invalid configuration in $state/prometheus.yml"; }

# --- run -------------------------------------------------------------------------------------------
pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [[ $discover == 1 ]]; then
  /usr/bin/python3 "$ROOT/deploy/prometheus/discover_local_targets.py" --dir "$state/targets" \
    $( [[ $blackbox == 1 ]] && echo "--blackbox $bb_listen" ) &
  pids+=($!)
fi
if [[ $blackbox == 1 ]]; then
  "$BLACKBOX" --config.file="$state/blackbox.yml" --web.listen-address="$bb_listen" \
    > "$state/blackbox.log" 2>&1 &
  pids+=($!)
fi
"$PROMETHEUS" --config.file="$state/prometheus.yml" --web.listen-address="$listen" \
  --storage.tsdb.path="$state/data" --storage.tsdb.retention.time="$retention" \
  --web.enable-lifecycle > "$state/prometheus.log" 2>&1 &
pids+=($!)

if [[ $discover == 1 ]]; then
  targets="  targets: rollout_service and learner_service processes of this machine, found every 2s"
else
  targets="  rollout metrics: ${rollouts[*]:-none}; learner metrics: ${learners[*]:-none}"
  targets+=$'\n'"  gRPC endpoints: ${grpc_rollouts[*]:-} ${grpc_learners[*]:-}"
fi
cat <<EOF
observe: Prometheus on http://$listen (log: $state/prometheus.log), scraping every $interval
$targets
$( [[ $blackbox == 1 ]] && echo "  gRPC health probed through the blackbox exporter on $bb_listen" )
  try:  curl -s 'http://$listen/api/v1/query?query=sum(lockstep_tokens_mismatched_total)'
        http://$listen/alerts
  dashboard: import deploy/grafana/lockstep.json into Grafana, data source http://$listen
EOF
# Returns when Prometheus exits (or on Ctrl-C / SIGTERM, through the traps).
wait "${pids[-1]}"
