#!/usr/bin/env bash
# Install ftaas into ./.venv: torch first (pinned, so no other torch is pulled), then the project with the
# training worker and the offline BERTScore encoder, every package at the version constraints.txt locks
# (scripts/lock.sh regenerates it; an upgrade is deliberate, never a side effect of a fresh machine).
# Idempotent: a second run only checks.
# Extra arguments are more extras, e.g. `scripts/install.sh test`.
# Each step says what it does and how long it took, and pip shows what it fetches; FTAAS_QUIET_INSTALL=1 (set by
# CI=true too) keeps pip to its errors.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${FTAAS_TORCH_SPEC:-torch==2.13.0}   # a CPU build here; on a GPU host, the CUDA build of choice
extras="worker,offline-eval"
for extra in "$@"; do extras="$extras,$extra"; done
quiet=()
if [ "${FTAAS_QUIET_INSTALL:-}" = 1 ] || [ "${CI:-}" = true ]; then quiet=(-q); fi

# pip's output less the local index's notices; pip's own exit status stands (pipefail)
pip_run() { .venv/bin/python -m pip "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }
started=$SECONDS
step() { echo "install [$((SECONDS - started))s] $*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv ($("$PYTHON" --version))"
  "$PYTHON" -m venv .venv
fi
step "pip itself"
pip_run install -q --upgrade pip
step "$TORCH_SPEC (the largest download: a few hundred MB for a CPU build)"
pip_run install "${quiet[@]}" "$TORCH_SPEC"
step "ftaas and .[$extras] at constraints.txt's versions"
pip_run install "${quiet[@]}" -c constraints.txt -e ".[$extras]"
step "checking the imports"
.venv/bin/python -c "import app, worker.tasks" >/dev/null
step "installed: $(.venv/bin/python -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")')"
