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
import signal
import sys
import threading
import traceback

import setproctitle

from worker.child import CHILD_MODULE
from worker.child.job_context import EXIT_CRASH, EXIT_INTERRUPTED

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


class Order:
    """The one order, read from stdin by a thread from the start: a standby taken while it still imports becomes the
    job's child at once in what the worker sees (its command line, where its output goes), since the worker's
    shutdown and the reconciler find training children by their command line."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.log_context = "{}"
        self.read = threading.Event()
        setproctitle.getproctitle()  # moves the environment off the argv area now, on the main thread
        threading.Thread(target=self._wait, name="standby-order", daemon=True).start()

    def _wait(self) -> None:
        line = sys.stdin.readline()
        if not line.strip():
            # The end of stdin: the pool process let this standby go, or ended (a kill -9 too, which closes its end
            # of the pipe). Nothing is left to do, even mid-import.
            os._exit(0)
        try:
            order = json.loads(line)
            self.log_context = order["log_context"]  # set by the main thread (setenv is not thread-safe)
            # what a fresh child's command line says (worker/tasks/supervise.py is_training_child)
            setproctitle.setproctitle(" ".join([sys.executable, "-m", CHILD_MODULE, *order["argv"]]))
            write_output_to(order["log"])
            self.argv = order["argv"]
        except Exception:  # noqa: BLE001 - never a job run unseen: the task reports the crash and retries
            traceback.print_exc()
            os._exit(EXIT_CRASH)
        self.read.set()

    @staticmethod
    def on_sigterm(_signum, _frame) -> None:
        """Until the child's own handler is in place nothing has trained: a standby stops as an interrupted attempt
        does, and the task queues its job again (a SIGTERM can come between the order's write and its reading; an
        unused standby's code is read by nobody)."""
        os._exit(EXIT_INTERRUPTED)


def main() -> int:
    order = Order()
    signal.signal(signal.SIGTERM, order.on_sigterm)
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
    order.read.wait()  # set only once an order is taken: the end of stdin or a bad order ends the process
    from app.core.logs import LOG_CONTEXT_ENV
    from worker.child.__main__ import main as child_main

    os.environ[LOG_CONTEXT_ENV] = order.log_context
    if order.argv[0] != "train":  # comparisons and merges keep no checkpoint to stop at: a fresh child's default
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return child_main(order.argv)
