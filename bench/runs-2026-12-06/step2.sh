#!/usr/bin/env bash
# GPU call 2 (the same machine, right after call 1): Unsloth, on the Llama-3.2-1B shape, beside the service's
# LoRA and QLoRA again (the Triton cache of call 1 kept).
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pb/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m1b --configs 3,unsloth,2,unsloth-qlora --steps 20 --warmup 5 \
  --batch 32 --out $OUT/train-1b-unsloth.json 2>&1 | tee $OUT/train-1b-unsloth.log | grep -A8 "^| config" | tail -8
