#!/usr/bin/env bash
# GPU call D (the same machine). Item 6 through the service over HTTP (bench/gpu_service_run.py): two QLoRA jobs of
# 3,000 rows on the 1B shape, one after the other in a fresh worker with an empty cache (the second is warm).
# Then Llama-3.1-70B QLoRA, depth-reduced (4 and 8 of its 80 decoder layers, every other size real) and
# extrapolated per layer by bench/extrapolate_depth.py: a random 70B is 141 GB of bf16 safetensors, over the
# machine's 64 GB disk. Gradient checkpointing for every stack (70B activations without it exceed 80 GB at any
# useful batch), a batch of 8, the peers padded.
set -x
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# the 8B service configurations again, in the other order (in call C, bf16 LoRA ran first in its process)
TRITON_CACHE_DIR=/tmp/triton-kept python3 bench/bench_train.py --model /tmp/models/m8b --configs 2,3 --steps 12 --warmup 3 \
  --batch 16 --out $OUT/train-8b-again.json > $OUT/train-8b-again.log 2>&1
grep -A4 "^| config" $OUT/train-8b-again.log
rm -rf /tmp/models/m8b $OUT/train-8b-again.md
python3 bench/gpu_service_run.py --work /tmp/svc --model-1b /tmp/models/m1b --build-minilm .gpu-data/minilm-config \
  --methods qlora,qlora --rows 3000 --val-rows 50 --evaluation-json '{"metrics":["perplexity","rouge","token_accuracy"]}' \
  --out $OUT/service.json > $OUT/service.log 2>&1
grep -E "^\| |phases" $OUT/service.log
rm -f $OUT/service.md
export TRITON_CACHE_DIR=/tmp/triton-kept
for n in 4 8; do
  python3 bench/random_model.py --shape 70b --layers $n --out /tmp/models/m70-$n | tail -1
  python3 bench/bench_train.py --model /tmp/models/m70-$n --configs 2+ckpt,trl-qlora+ckpt+pad,unsloth-qlora+ckpt+pad \
    --steps 8 --warmup 2 --batch 8 --out $OUT/train-70b-$n.json > $OUT/train-70b-$n.log 2>&1
  grep -A6 "^| config" $OUT/train-70b-$n.log
  rm -rf /tmp/models/m70-$n $OUT/train-70b-$n.md
done
python3 bench/extrapolate_depth.py $OUT/train-70b-4.json:4 $OUT/train-70b-8.json:8 --layers 80 | tee $OUT/train-70b.md
