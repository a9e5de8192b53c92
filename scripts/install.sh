#!/usr/bin/env bash
# Install ftaas into ./.venv: torch first (pinned, so no other torch is pulled), then the project with the
# training worker and the offline BERTScore encoder. Idempotent: a second run only checks.
# Extra arguments are more extras, e.g. `scripts/install.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${FTAAS_TORCH_SPEC:-torch==2.13.0}   # a CPU build here; on a GPU host, the CUDA build of choice
extras="worker,offline-eval"
for extra in "$@"; do extras="$extras,$extra"; done

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q -e ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import app, worker.tasks" >/dev/null
echo "installed: $(.venv/bin/python -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")')"
