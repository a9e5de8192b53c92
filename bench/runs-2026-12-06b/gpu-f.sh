#!/usr/bin/env bash
# GPU call F (the machine of call E): the service's wheels (.whl-pc, setproctitle added) and issue 18 item 6 again,
# after the standby child (worker/tasks/standby.py) and the compiled kernels shared through the store
# (worker/child/compiled_kernels.py). Each job is submitted 30 s after the one before it ended, so that it finds its
# worker idle, as a user's lone job does.
# 1. host A: a fresh service, an empty compile cache and an empty store; two 3,000-row QLoRA jobs on the 1B shape
#    (the first compiles every kernel and stores them; the second is warm).
# 2. host B: the same database and store, a new cache folder (no kernels, no files); one more such job, whose kernels
#    come from the store.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pc/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
unset TRITON_CACHE_DIR  # the service's own: under each host's cache folder
common=(--work /tmp/svc --model-1b /tmp/models/m1b --build-minilm .gpu-data/minilm-config --rows 3000 --val-rows 50
  --evaluation-json '{"metrics":["perplexity","rouge","token_accuracy"]}' --one-at-a-time --gap-s 30)
python3 bench/gpu_service_run.py "${common[@]}" --cache-dir /tmp/host-a --methods qlora,qlora --out $OUT/service-a.json \
  > $OUT/service-a.log 2>&1
grep -E "^\| |phases|First step" $OUT/service-a.log
python3 bench/gpu_service_run.py "${common[@]}" --cache-dir /tmp/host-b --methods qlora --out $OUT/service-b.json \
  > $OUT/service-b.log 2>&1
grep -E "^\| |phases|First step|compiled kernels" $OUT/service-b.log
grep -h "compiled kernels\|standby" $OUT/service-*.children.log | head -20
du -sh /tmp/host-a/compiled /tmp/svc/var/artifacts/compiled 2>/dev/null
