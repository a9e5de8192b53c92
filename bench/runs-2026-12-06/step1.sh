#!/usr/bin/env bash
# GPU call 1 of issue 18's run: the peers' wheels but Unsloth's (bitsandbytes, TRL 1.15, datasets 4.8, Liger, the
# project's few imports) into /tmp/site; the random Llama-3.2-1B and Gemma-2-2B shapes (kept in /tmp while the
# machine is held); the correctness checks on both; a fresh worker's first QLoRA and LoRA runs (empty Triton
# cache), then the same with the cache kept, beside TRL's in the same process.
set -x
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b
python3 bench/random_model.py --shape gemma2-2b --out /tmp/models/g2
python3 bench/gpu_checks.py --examples 16 --model /tmp/models/m1b --model /tmp/models/g2 2>&1 | tee $OUT/gpu-checks.txt | grep -v Warning | tail -40
# an empty Triton cache: the first 2 and 3 are a fresh worker's first jobs (Liger compiles inside their steps), the
# repeats at the end run with every kernel compiled
rm -rf /tmp/triton-kept
export TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m1b --configs 2,3,trl,trl-qlora,2,3 --steps 20 --warmup 5 --batch 32 \
  --out $OUT/train-1b.json 2>&1 | tee $OUT/train-1b.log | grep -A10 "^| config" | tail -10
