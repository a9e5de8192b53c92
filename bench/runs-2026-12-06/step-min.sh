#!/usr/bin/env bash
# The GPU call that fits the device time left: wheels, the two random shapes, the correctness checks, and the 1B
# shape's service LoRA and QLoRA beside TRL's in one process (an empty Triton cache: a fresh worker).
set -x
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRITON_CACHE_DIR=/tmp/triton-kept
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b
python3 bench/random_model.py --shape gemma2-2b --out /tmp/models/g2
python3 bench/gpu_checks.py --examples 12 --model /tmp/models/g2 --model /tmp/models/m1b 2>&1 | tee $OUT/gpu-checks.txt | grep -v Warning | tail -40
python3 bench/bench_train.py --model /tmp/models/m1b --configs 3,trl,2,trl-qlora --steps 15 --warmup 3 --batch 32 \
  --out $OUT/train-1b.json 2>&1 | tee $OUT/train-1b.log | grep -A8 "^| config" | tail -8
