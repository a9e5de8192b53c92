#!/usr/bin/env bash
# GPU call 2: Unsloth, then every configuration on the Llama-3.2-1B shape in one run (the Triton cache of call 1
# kept), then the Gemma 2 shape on the service's LoRA against TRL's.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pb/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m1b --configs 2,3,trl,trl-qlora,unsloth,unsloth-qlora \
  --steps 20 --warmup 5 --batch 32 --out $OUT/train-1b.json 2>&1 | tee $OUT/train-1b.log | grep -v "it/s\]\|examples/s\]" | tail -45
python3 bench/bench_train.py --model /tmp/models/g2 --configs 3,trl --steps 10 --warmup 3 --batch 16 \
  --out $OUT/train-gemma2.json 2>&1 | tee $OUT/train-gemma2.log | grep -v "it/s\]\|examples/s\]" | tail -8
