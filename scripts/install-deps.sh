#!/usr/bin/env bash
# Installs every Debian package lockstep's build and tests need (idempotent).
# Usage: scripts/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

PACKAGES=(
  build-essential cmake make pkg-config git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libtorch-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libopenblas0-pthread
  libssl-dev zlib1g-dev libcurl4-openssl-dev
  prometheus python3 python3-grpcio python3-protobuf
  prometheus-blackbox-exporter
)
trap 'rc=$?; [[ $rc -ne 0 || -n ${LOCKSTEP_SKIP_DEPLOY_TOOLS:-} ]] || "$(dirname "$0")/install-deploy-tools.sh" || rc=$?; exit $rc' EXIT  # then the deploy tests' npm tools

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if [[ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial || true)" ]]; then
  $SUDO apt-get update -q
fi
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
