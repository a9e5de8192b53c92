#!/usr/bin/env bash
# GPU call C (a fresh machine): where a fresh training child's first seconds go (call B's first-step event: 4.3 s
# before the recipe runs and 7 s in "tokenizer", against 1.3 s for the tokenizer on a 2-core CPU): Python's
# -X importtime of the child's imports, and each import and load timed on its own. Then the random Llama-3.1-8B
# shape for call D.
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-pa/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/models
python3 bench/random_model.py --shape 1b --out /tmp/models/m1b | tail -1
nproc; cat /proc/cpuinfo | grep "model name" | head -1; df -h /opt/torch /tmp | cat
for i in 1 2; do
python3 - <<'PY'
import time, sys
t = [("start", time.perf_counter())]
def lap(name): t.append((name, time.perf_counter()))
import torch; lap("import torch")
import transformers; lap("import transformers")
from transformers import AutoTokenizer; lap("import AutoTokenizer")
tok = AutoTokenizer.from_pretrained("/tmp/models/m1b"); lap("AutoTokenizer.from_pretrained")
from transformers import AutoModelForCausalLM; lap("import AutoModelForCausalLM")
from transformers.models.llama import modeling_llama; lap("import modeling_llama")
import peft; lap("import peft")
import bitsandbytes; lap("import bitsandbytes")
import liger_kernel.transformers; lap("import liger_kernel.transformers")
torch.zeros(1, device="cuda"); lap("CUDA init")
sys.path.insert(0, ".")
import worker.training.loop, worker.training.modeling, worker.evaluation.evaluate; lap("import worker.training")
print(" | ".join(f"{n} {b - a:.2f}s" for (_, a), (n, b) in zip(t, t[1:])), f"| total {t[-1][1]-t[0][1]:.2f}s")
PY
done
python3 -X importtime -c "import torch, transformers; from transformers import AutoTokenizer, AutoModelForCausalLM; import peft, bitsandbytes, liger_kernel.transformers" 2> $OUT/importtime.txt
sort -t'|' -k2 -n $OUT/importtime.txt | tail -40
python3 bench/random_model.py --shape 8b --out /tmp/models/m8b | tail -1
