#!/usr/bin/env bash
# The smallest GPU call: the Gemma 2 shape through bench/gpu_checks.py (item 4: its soft-capping on the fused loss).
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
python3 bench/random_model.py --shape gemma2-2b --out /tmp/models/g2
python3 bench/gpu_checks.py --examples 12 --model /tmp/models/g2 2>&1 | tee $OUT/gpu-checks-gemma2.txt | grep -v Warning | tail -30
