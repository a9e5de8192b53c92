#!/usr/bin/env bash
# GPU call A (a fresh machine), second session of 2026-12-06: the wheels of .whl-pa (bitsandbytes, Liger, pydantic
# and the few imports of bench/); the random Llama-3.2-1B and Gemma-2-2B shapes; the correctness checks on both,
# the RoPE one-row fold of e574d1a among them (not yet run on a GPU); then the 1B shape's service LoRA (3) and
# QLoRA (2) at batch 32, each profiled for 3 steps after its timed ones (the MFU gap of issue 18, item 3).
set -x
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, liger_kernel, bitsandbytes as b; print(torch.__version__, transformers.__version__, peft.__version__, b.__version__)"
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b | tail -1
python3 bench/random_model.py --shape gemma2-2b --out /tmp/models/g2 | tail -1
python3 bench/gpu_checks.py --examples 12 --model /tmp/models/g2 --model /tmp/models/m1b > $OUT/gpu-checks.txt 2>&1
grep -v Warning $OUT/gpu-checks.txt | tail -30
export TRITON_CACHE_DIR=/tmp/triton-kept
python3 bench/bench_train.py --model /tmp/models/m1b --configs 3,2 --steps 20 --warmup 5 --batch 32 \
  --profile 3,2 --profile-steps 3 --out $OUT/train-1b-profile.json > $OUT/train-1b-profile.log 2>&1
grep -A4 "^| config" $OUT/train-1b-profile.log
tail -60 $OUT/train-1b-profile.log
