#!/usr/bin/env bash
# Regenerate constraints.txt, the versions every install uses (scripts/install.sh, .ci/run through
# scripts/test.sh, the Docker images, bench/fetch_gpu_wheels.sh). An upgrade is a deliberate act: run this,
# run the whole suite, and commit constraints.txt with what changed and why.
# It resolves pyproject.toml's ranges afresh, in a throwaway virtualenv, with every extra. torch is left out:
# install.sh pins it first (a CPU build here, the CUDA build of choice on GPU hosts). The `gpu` extra's
# packages need CUDA torch to install, so their version is resolved without installing them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${FTAAS_TORCH_SPEC:-torch==2.13.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "lock: resolving in a fresh virtualenv ($tmp) ..."
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q "$TORCH_SPEC"
"$tmp/venv/bin/python" -m pip install -q ".[worker,offline-eval,test]"
gpu_pkgs=$("$tmp/venv/bin/python" - <<'PY'
import tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"]))
PY
)
# shellcheck disable=SC2086
"$tmp/venv/bin/python" -m pip download -q --no-deps -d "$tmp/gpu" $gpu_pkgs
{
  echo "# Every install's versions: pip install -c constraints.txt. Made by scripts/lock.sh on $(date -u +%F);"
  echo "# torch is pinned by scripts/install.sh instead (CPU or CUDA build). Upgrade deliberately: see scripts/lock.sh."
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(ftaas|torch|nvidia-|triton)[=@ ]' | grep -v '^#'
  for w in "$tmp"/gpu/*.whl; do
    base=$(basename "$w"); name=${base%%-*}; rest=${base#*-}; echo "${name//_/-}==${rest%%-*}"
  done
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "lock: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
