#!/usr/bin/env bash
# Offline tests of the Helm chart deploy/helm/lockstep, with Helm 3 and Helm 4 (both installed by
# scripts/install-deploy-tools.sh into .tools/bin):
#   - `helm lint --strict` with the default values and with each non-default scenario;
#   - `helm template` of each scenario, every object validated against the Kubernetes and
#     prometheus-operator schemas and the chart's contract (validate_manifests.js);
#   - the chart packaged with `helm package` renders the same objects (the dashboard and rules are
#     symlinks into deploy/grafana and deploy/prometheus and must be packed as files);
#   - wrong values are rejected by values.schema.json (or by a `required` check) with a clear message.
# Usage: tests/deploy/helm_chart_test.sh      (LOCKSTEP_TOOLS_DIR overrides .tools)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART="$ROOT/deploy/helm/lockstep"
TOOLS_DIR="${LOCKSTEP_TOOLS_DIR:-$ROOT/.tools}"
VALIDATE="$ROOT/tests/deploy/validate_manifests.js"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# Helm keeps caches and repositories under these; keep them out of $HOME.
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

for h in helm3 helm4; do
  if [[ ! -x $TOOLS_DIR/bin/$h ]]; then
    echo "FAIL $TOOLS_DIR/bin/$h is missing: run scripts/install-deploy-tools.sh"
    echo "0 passed, 1 failed"
    exit 1
  fi
done
if [[ ! -d $ROOT/deploy/tools/node_modules/kubernetes-models ]]; then
  echo "FAIL deploy/tools/node_modules is missing: run scripts/install-deploy-tools.sh"
  echo "0 passed, 1 failed"
  exit 1
fi

# name | helm flags | validate_manifests.js expectations
SCENARIOS=(
  "default||--kinds ConfigMap=1,Deployment=1,Service=4,ServiceAccount=1,StatefulSet=1 --probes grpc --gpu rollout=0,learner=0 --replicas 1"
  "gpu|-f $ROOT/deploy/helm/values-gpu.yaml -f $CHART/ci/gpu-values.yaml|--kinds ConfigMap=1,Deployment=1,PrometheusRule=1,Service=4,ServiceAccount=1,ServiceMonitor=1,StatefulSet=1 --probes grpc --gpu rollout=2,learner=1 --replicas 2"
  "gpu-tp8|-f $ROOT/deploy/helm/values-gpu.yaml --set rollout.tp=8 --set rollout.replicas=4|--kinds ConfigMap=1,Deployment=1,PrometheusRule=1,Service=4,ServiceAccount=1,ServiceMonitor=1,StatefulSet=1 --probes grpc --gpu rollout=8,learner=1 --replicas 4"
  "tls-auth|-f $CHART/ci/tls-auth-values.yaml|--kinds Deployment=1,PrometheusRule=1,Secret=1,Service=3,ServiceMonitor=1,StatefulSet=1 --probes tcp --gpu rollout=0,learner=0 --replicas 3"
  "learner-only|--set rollout.enabled=false --set learner.rollouts[0]=rollouts.other-ns.svc:50051 --set metrics.serviceMonitor.enabled=true|--kinds ConfigMap=1,Service=2,ServiceAccount=1,ServiceMonitor=1,StatefulSet=1 --probes grpc"
  "learner-rollout-mtls|--set rollout.enabled=false --set learner.rollouts[0]=rollouts.other-ns.svc:50051 --set learner.rolloutTls.enabled=true --set learner.rolloutTls.existingSecret=rollout-client-tls --set learner.rolloutTls.clientCertificate=true --set learner.rolloutTls.serverName=rollouts.other-ns.svc|--kinds ConfigMap=1,Service=2,ServiceAccount=1,StatefulSet=1 --probes grpc"
)

# Rejected values: helm flags | extended regex the error must match (Helm 3 writes a.b.c, Helm 4 /a/b/c).
BAD_VALUES=(
  "--set rollout.replicas=two|rollout.replicas.*(want integer|Expected: integer)"
  "--set rollout.tp=3|rollout.tp"
  "--set kernels=fast|kernels"
  "--set device=gpu|device"
  "--set learner.drive.steps=-1|learner.drive.steps"
  "--set rollout.ports.grpc=70000|rollout.ports.grpc"
  "--set rollout.replicsa=2|replicsa"
  "--set learner.rollouts[0]=no-port|learner.rollouts.0"
  "--set-string rollout.shm.enabled=yes|rollout.shm.enabled"
  "--set metrics.serviceMonitor.interval=15sec|metrics.serviceMonitor.interval"
  "--set model.dir=relative/path|model.dir"
  "--set tls.enabled=true|tls.existingSecret is required"
  "--set auth.enabled=true|auth.token or auth.existingSecret is required"
  "--set learner.rolloutTls.serverName=rollouts.example|need learner.rolloutTls.enabled or tls.enabled"
  "--set learner.rolloutTls.enabled=true --set learner.rolloutTls.clientCertificate=true|clientCertificate needs learner.rolloutTls.existingSecret"
  "--set learner.rolloutTls.enabled=true --set learner.rolloutTls.serverName=bad_name!|learner.rolloutTls.serverName"
)

for h in helm3 helm4; do
  HELM="$TOOLS_DIR/bin/$h"
  version="$("$HELM" version --short 2>/dev/null)"
  echo "== $h $version"
  validate_args=()
  for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r name flags expect <<< "$s"
    # shellcheck disable=SC2086  # flags are word lists
    if out="$("$HELM" lint --strict "$CHART" $flags 2>&1)"; then
      ok "$h lint --strict [$name]"
    else
      bad "$h lint --strict [$name]"; echo "$out" | grep -v 'symbolic link' | sed 's/^/     /'
    fi
    rendered="$WORK/$h-$name.yaml"
    # shellcheck disable=SC2086
    if "$HELM" template lockstep "$CHART" --namespace rl $flags > "$rendered" 2> "$WORK/err"; then
      ok "$h template [$name]"
      # shellcheck disable=SC2206
      validate_args+=(-- "$rendered" $expect)
    else
      bad "$h template [$name]"; grep -v 'symbolic link' "$WORK/err" | sed 's/^/     /'
    fi
  done
  # One Node process validates every scenario's objects (loading the schemas takes seconds).
  node "$VALIDATE" "${validate_args[@]:1}" > "$WORK/validate.out" 2>&1
  while IFS= read -r line; do
    case "$line" in
      FAIL:*) bad "$h schema/contract ${line#FAIL: }" ;;
      *" 0 failed") ok "$h validated $line" ;;
      *) echo "     $line" ;;
    esac
  done < "$WORK/validate.out"

  for b in "${BAD_VALUES[@]}"; do
    IFS='|' read -r flags want <<< "$b"
    # shellcheck disable=SC2086
    if "$HELM" template lockstep "$CHART" $flags > /dev/null 2> "$WORK/err"; then
      bad "$h rejects [$flags]: rendered without error"
    elif tr '\n' ' ' < "$WORK/err" | grep -qE -- "$want"; then
      ok "$h rejects [$flags]: $(grep -v 'symbolic link' "$WORK/err" | tr '\n' ' ' | cut -c1-110)"
    else
      bad "$h rejects [$flags]: error lacks '$want'"; sed 's/^/     /' "$WORK/err"
    fi
  done
done

# The packaged chart (symlinked dashboard and rules packed as files) renders like the directory.
HELM="$TOOLS_DIR/bin/helm4"
if "$HELM" package "$CHART" -d "$WORK/pkg" > "$WORK/pkg.log" 2>&1; then
  tgz="$(ls "$WORK"/pkg/lockstep-*.tgz)"
  listing="$(tar -tzf "$tgz")"
  if grep -qx 'lockstep/files/lockstep.json' <<< "$listing" &&
     grep -qx 'lockstep/files/lockstep-rules.yml' <<< "$listing" &&
     ! grep -q '^lockstep/ci/' <<< "$listing"; then
    ok "helm package: files/ packed, ci/ left out"
  else
    bad "helm package: content"; sed 's/^/     /' <<< "$listing"
  fi
  for h in helm3 helm4; do
    flags=(-f "$ROOT/deploy/helm/values-gpu.yaml")
    if "$TOOLS_DIR/bin/$h" template lockstep "$tgz" --namespace rl "${flags[@]}" > "$WORK/pkg-$h.yaml" 2> "$WORK/err" &&
       diff -q "$WORK/pkg-$h.yaml" <("$TOOLS_DIR/bin/$h" template lockstep "$CHART" --namespace rl "${flags[@]}" 2>/dev/null) > /dev/null; then
      ok "$h template of the packaged chart equals the directory's"
    else
      bad "$h template of the packaged chart"; sed 's/^/     /' "$WORK/err"
    fi
  done
else
  bad "helm package"; sed 's/^/     /' "$WORK/pkg.log"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
