#!/usr/bin/env bash
# GPU call C (the same machine): the service's own wheels (.whl-pc). The peers padded to the longest example of a
# batch (`+pad`) on the 1B shape: without a flash-attention package (none has a wheel for torch 2.11 / CUDA 13),
# their padding-free rows ran at a quarter of the service's speed in calls A and B, so a user would pad. Then the 8B
# shape: the service's LoRA and QLoRA and the padded peers at a batch of 16.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pc/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m1b --configs trl+pad,trl-qlora+pad,unsloth+pad,unsloth-qlora+pad \
  --steps 20 --warmup 5 --batch 32 --out $OUT/train-1b-padded.json > $OUT/train-1b-padded.log 2>&1
grep -A7 "^| config" $OUT/train-1b-padded.log
python3 bench/bench_train.py --model /tmp/models/m8b --configs 3,2,trl+pad,trl-qlora+pad,unsloth+pad \
  --steps 12 --warmup 3 --batch 16 --out $OUT/train-8b.json > $OUT/train-8b.log 2>&1
grep -A8 "^| config" $OUT/train-8b.log
