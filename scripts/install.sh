#!/usr/bin/env bash
# Install ftaas into ./.venv: torch first (pinned, so no other torch is pulled), then the project with the
# training worker and the offline BERTScore encoder, every package at the version constraints.txt locks
# (scripts/lock.sh regenerates it; an upgrade is deliberate, never a side effect of a fresh machine).
# Idempotent: a second run only checks.
# Extra arguments are more extras, e.g. `scripts/install.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${FTAAS_TORCH_SPEC:-torch==2.13.0}   # a CPU build here; on a GPU host, the CUDA build of choice
extras="worker,offline-eval"
for extra in "$@"; do extras="$extras,$extra"; done

# pip's output less the local index's notices; pip's own exit status stands (pipefail)
pip_quiet() { .venv/bin/python -m pip "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
echo "install: .venv ($("$PYTHON" --version)), $TORCH_SPEC, then .[$extras] at constraints.txt's versions ..."
pip_quiet install -q --upgrade pip
pip_quiet install -q "$TORCH_SPEC"
pip_quiet install -q -c constraints.txt -e ".[$extras]"
.venv/bin/python -c "import app, worker.tasks" >/dev/null
echo "installed: $(.venv/bin/python -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")')"
