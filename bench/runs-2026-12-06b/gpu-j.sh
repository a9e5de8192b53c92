#!/usr/bin/env bash
# GPU call J (a fresh machine): packed micro-batches in one row where rows run as variable-length sequences
# (worker/training/loss.py packs_into_one_row): the GPU checks on the 1B shape (one packed row against padded
# training included), then the 1B service LoRA and QLoRA and the 8B QLoRA, whose row fill was 87-90%.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-kept
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b | tail -1
python3 bench/gpu_checks.py --examples 12 --model /tmp/models/m1b > $OUT/gpu-checks-one-row.txt 2>&1
grep -E "^ok|^FAIL|one row|all checks" $OUT/gpu-checks-one-row.txt
python3 bench/bench_train.py --model /tmp/models/m1b --configs 3,2 --steps 12 --warmup 4 --batch 32 \
  --out $OUT/train-1b-one-row.json > $OUT/train-1b-one-row.log 2>&1
grep -A4 "^| config" $OUT/train-1b-one-row.log | head -5
python3 bench/random_model.py --shape 8b --out /tmp/models/m8b | tail -1
python3 bench/bench_train.py --model /tmp/models/m8b --configs 2 --steps 8 --warmup 4 --batch 16 \
  --out $OUT/train-8b-one-row.json > $OUT/train-8b-one-row.log 2>&1
grep -A3 "^| config" $OUT/train-8b-one-row.log | head -4
