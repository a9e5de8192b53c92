#!/usr/bin/env bash
# Call A ran LoRA only: QLoRA then failed to shard (torch 2.11 refuses a uint8 parameter); B after the fix (4-bit
# values stored as bf16 when sharded, bnb_4bit_quant_storage) and the weight comparison by norm.
# GPU call B, third session of 2026-12-06 (issue 20): no machine of two GPUs is lent, so FSDP2 runs on one rank of
# one GPU. bench/gpu_fsdp_check.py trains the 1B shape through the service's loop sharded (worker/training/sharding.py)
# and unsharded, for LoRA, QLoRA and full fine-tuning: the GPU-only paths under FSDP (fused LoRA layer, bf16 base with
# fp32 adapters, 4-bit weights on CUDA, a model read into host memory then sharded), and what sharding costs a step.
# Carry: .whl-pa (bitsandbytes, Liger, pydantic and the few imports of bench/).
set -x
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, liger_kernel, bitsandbytes as b; print(torch.__version__, transformers.__version__, peft.__version__, b.__version__)"
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b | tail -1
python3 -m torch.distributed.run --nproc_per_node 1 bench/gpu_fsdp_check.py --model /tmp/models/m1b \
  --kinds qlora,full,lora --steps 12 --micro 8 --json $OUT/fsdp-check.json > $OUT/fsdp-check.log 2>&1
echo "exit $?"
grep -v -i "warn" $OUT/fsdp-check.log | tail -60
