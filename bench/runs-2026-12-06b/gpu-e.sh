#!/usr/bin/env bash
# GPU call E (a fresh machine): .whl-pa's wheels and the random Llama-3.2-1B shape, for call F.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b | tail -1
