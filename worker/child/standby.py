"""A child started before its task: `python -m worker.child standby`. It imports the heavy libraries, then waits on
stdin for one order (a JSON line: the argv a fresh child would get, the log to write to, the parent's log context)
and becomes that child. The worker's side is worker/tasks/standby.py.

Why: on an H100 host a fresh child spent about 18 s importing before it read its job (bench/runs-2026-12-06b,
gpu-c.sh: torch 3.6-4.0 s, transformers 1.5 s, its Auto classes 7.0 s, peft with bitsandbytes 3.9-4.2 s), most of
the 17.5-20.3 s from the claim to the first step of a 3,000-row job (gpu-b.sh). Importing (and fetching the
kernels other hosts compiled) is all it does ahead; the worker itself never initialises CUDA.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

# What a training, comparison or merge child imports before its first step, heaviest first. transformers' Auto
# classes are attributes of a lazy module: naming them imports the code behind them.
PRELOAD = (
    "torch",
    "transformers",
    "peft",
    "worker.child.recipe",
    "worker.child.comparison",
    "worker.child.merge",
    "worker.child.job_data",
    "worker.training.modeling",
    "worker.training.loop",
    "worker.training.tokenized",
    "worker.evaluation.evaluate",
)
PRELOAD_OPTIONAL = ("liger_kernel.transformers",)  # GPU hosts only (the `gpu` extra)
TRANSFORMERS_CLASSES = ("AutoTokenizer", "AutoModelForCausalLM", "AutoConfig")


def preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    for name in PRELOAD_OPTIONAL:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import transformers

    for name in TRANSFORMERS_CLASSES:
        getattr(transformers, name)


def write_output_to(log_path: str) -> None:
    """From now on, this process's stdout and stderr append to the log a fresh child would have written to (its
    spawn opened the same file in append mode); stdin is the null device, as nothing more comes from the worker."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def main() -> int:
    from app.core.settings import get_settings
    from worker.child.process import prepare_process

    prepare_process(get_settings())  # the environment torch and the Hugging Face libraries read at import
    preload()
    from app.core.object_store import get_store
    from worker.child.compiled_kernels import share_compiled

    share_compiled(get_store(), "pull")  # ahead too: the job's own pull then finds nothing missing
    import torch

    # bitsandbytes (imported by peft) asks for the GPU's capability at import, which creates a CUDA context: about
    # 0.5 GB of the GPU the job will use anyway (worker/tasks/standby.py says when a standby is let go instead)
    cuda = "a CUDA context" if torch.cuda.is_initialized() else "no CUDA context"
    print(f"standby {os.getpid()}: ready ({cuda})", flush=True)
    line = sys.stdin.readline()
    if not line.strip():  # the worker's pool process went away (its end of the pipe closed), or let it go
        return 0
    order = json.loads(line)
    write_output_to(order["log"])
    from app.core.logs import LOG_CONTEXT_ENV

    os.environ[LOG_CONTEXT_ENV] = order["log_context"]
    # `ps`, the worker's shutdown and the reconciler find training children by their command line
    # (worker/tasks/supervise.py is_training_child): this one says what a fresh child's would.
    import setproctitle

    setproctitle.setproctitle(" ".join([sys.executable, "-m", "worker.child", *order["argv"]]))
    from worker.child.__main__ import main as child_main

    return child_main(order["argv"])
