#!/usr/bin/env bash
# GPU call B (the machine of call A, still warm): Unsloth's wheels (.whl-pb) added to /tmp/site; Unsloth LoRA and
# QLoRA on the 1B shape (the same data and steps as call A); the random Llama-3.1-8B shape, and Unsloth on it at a
# batch of 16 (32 x 512 tokens does not fit an 80 GB card without gradient checkpointing at 8B).
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pb/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m1b --configs unsloth,unsloth-qlora --steps 20 --warmup 5 --batch 32 \
  --out $OUT/train-1b-unsloth.json > $OUT/train-1b-unsloth.log 2>&1
grep -A6 "^| config" $OUT/train-1b-unsloth.log
python3 bench/random_model.py --shape 8b --out /tmp/models/m8b | tail -1
python3 bench/bench_train.py --model /tmp/models/m8b --configs unsloth,unsloth-qlora --steps 12 --warmup 3 --batch 16 \
  --out $OUT/train-8b-unsloth.json > $OUT/train-8b-unsloth.log 2>&1
grep -A6 "^| config" $OUT/train-8b-unsloth.log
