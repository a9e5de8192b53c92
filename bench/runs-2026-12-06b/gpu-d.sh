#!/usr/bin/env bash
# GPU call D (the machine of call C): Unsloth's wheels (.whl-pb: Unsloth 2026.10.9, TRL 1.15, datasets 4.8.5 and
# what they lack) and Unsloth QLoRA padded on the 8B shape at a batch of 16, the one peer configuration the first
# session of the day had no device time left for.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pb/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m8b --configs unsloth-qlora+pad --steps 12 --warmup 3 --batch 16 \
  --out $OUT/train-8b-unsloth-qlora-pad.json > $OUT/train-8b-unsloth-qlora-pad.log 2>&1
grep -A4 "^| config" $OUT/train-8b-unsloth-qlora-pad.log; tail -5 $OUT/train-8b-unsloth-qlora-pad.log
