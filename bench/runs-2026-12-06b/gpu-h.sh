#!/usr/bin/env bash
# GPU call H (a fresh machine): the 8B QLoRA comparison in one lease. The service's QLoRA (2) twice in one process
# (the second warm), the second profiled for 2 steps (the 8B QLoRA MFU miss of issue 18); call I adds Unsloth QLoRA
# padded on the same machine.
set -x
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-kept
mkdir -p /tmp/models
python3 bench/random_model.py --shape 8b --out /tmp/models/m8b | tail -1
python3 bench/bench_train.py --model /tmp/models/m8b --configs 2,2 --steps 12 --warmup 3 --batch 16 \
  --profile 2 --profile-steps 2 --out $OUT/train-8b-qlora.json > $OUT/train-8b-qlora.log 2>&1
grep -A4 "^| config" $OUT/train-8b-qlora.log | head -5
grep -A12 "^Profile of config 2" $OUT/train-8b-qlora.log | tail -13
