#!/usr/bin/env bash
# GPU call A (a fresh machine): the wheels of .whl-pa (bitsandbytes, TRL 1.15, datasets 4.8.5, Liger, pydantic and
# the few imports of bench/), the random Llama-3.2-1B and Gemma-2-2B shapes, the correctness checks on both, then
# the 1B shape: the service's QLoRA (2) and LoRA (3) with an empty Triton cache (a fresh worker's first jobs),
# TRL + Liger beside them, and 2 and 3 again with every kernel compiled.
set -x
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, trl, datasets, liger_kernel, bitsandbytes as b; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, datasets.__version__, b.__version__)"
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b | tail -1
python3 bench/random_model.py --shape gemma2-2b --out /tmp/models/g2 | tail -1
python3 bench/gpu_checks.py --examples 12 --model /tmp/models/g2 --model /tmp/models/m1b > $OUT/gpu-checks.txt 2>&1
grep -v Warning $OUT/gpu-checks.txt | tail -25
rm -rf /tmp/triton-kept
export TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m1b --configs 2,3,trl,trl-qlora,2,3 --steps 20 --warmup 5 --batch 32 \
  --out $OUT/train-1b.json > $OUT/train-1b.log 2>&1
grep -A10 "^| config" $OUT/train-1b.log
