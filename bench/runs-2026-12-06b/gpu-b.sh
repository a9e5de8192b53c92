#!/usr/bin/env bash
# GPU call B (the machine of call A): the service's own wheels (.whl-pc) and the BERTScore encoder's config; two
# QLoRA jobs of 3,000 rows on the 1B shape through the service over HTTP, one after the other in a fresh worker with
# an empty Triton cache (the second is warm): issue 18 item 6, the first-step event's breakdown of the start.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pc/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-fresh
rm -rf /tmp/triton-fresh
python3 bench/gpu_service_run.py --work /tmp/svc --model-1b /tmp/models/m1b --build-minilm .gpu-data/minilm-config \
  --methods qlora,qlora --rows 3000 --val-rows 50 --evaluation-json '{"metrics":["perplexity","rouge","token_accuracy"]}' \
  --out $OUT/service.json > $OUT/service.log 2>&1
grep -E "^\| |phases|First step|Data:|tokeniz" $OUT/service.log
