#!/usr/bin/env bash
# GPU call I (the machine of call H): Unsloth QLoRA padded on the 8B shape, beside call H's ftaas QLoRA.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pb/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m8b --configs unsloth-qlora+pad --steps 12 --warmup 3 --batch 16 \
  --out $OUT/train-8b-unsloth-qlora-pad-i.json > $OUT/train-8b-unsloth-qlora-pad-i.log 2>&1
grep -A3 "^| config" $OUT/train-8b-unsloth-qlora-pad-i.log | head -4
