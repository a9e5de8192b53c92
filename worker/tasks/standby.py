"""The worker's side of a standby child (worker/child/standby.py): a child process started before its task, its
libraries imported, which the next one-process child takes over instead of a fresh interpreter.

Each pool process of a training worker starts one when it starts (Celery's worker_process_init), while it waits for
a task: the first job of a fresh worker and every job that finds its worker idle skip the imports (about 18 s on a
GPU host). A pool process serves one task (worker_max_tasks_per_child=1, DESIGN.md), so a job queued right behind
another finds a standby still importing; it takes it anyway, which is never slower than a fresh child.

A standby is used only where a fresh child would be the same process: the same interpreter, working directory and
environment (the log context aside, which the order carries). Otherwise it is let go and a fresh child starts.
It exits at once when its pool process goes away, a kill -9 included: its stdin ends.

On a GPU host a waiting standby holds a CUDA context (bitsandbytes creates one when imported), about 0.5 GB of its
worker's first GPU. It never waits beside a job of its own worker: a pool process starts it after the previous
task's child has exited, and lets it go before a job on several GPUs starts.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from app.core.logs import LOG_CONTEXT_ENV
from app.core.settings import get_settings
from worker.child import CHILD_MODULE

log = logging.getLogger("ftaas.worker")


class Standby:
    def __init__(self, log_path: Path) -> None:
        self.env = dict(os.environ)
        self.cwd = os.getcwd()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, "standby"],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def misfit(self, env: dict[str, str]) -> str | None:
        """Why this standby is not what a fresh child of `env` would be, or None where it is and still waits."""
        if self.proc.poll() is not None:
            return f"it exited with code {self.proc.returncode}"
        if os.getcwd() != self.cwd:
            return "the working directory changed"
        keys = {k for k in env.keys() | self.env.keys() if env.get(k) != self.env.get(k) and k != LOG_CONTEXT_ENV}
        return f"the environment differs: {', '.join(sorted(keys))}" if keys else None

    def hand_over(self, args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen | None:
        """The standby, told to become `python -m worker.child *args` writing to `log_path`; None where it cannot."""
        why = self.misfit(env)
        if why is not None:
            log.warning("standby child %s does not fit this task (%s); a fresh child starts", self.proc.pid, why)
            self.let_go()
            return None
        order = {"argv": args, "log": str(log_path), "log_context": env.get(LOG_CONTEXT_ENV, "{}")}
        try:
            self.proc.stdin.write((json.dumps(order) + "\n").encode())
            self.proc.stdin.close()
        except OSError:  # it died since: a fresh child instead
            self.let_go()
            return None
        return self.proc

    def let_go(self) -> None:
        """A standby that waits exits at the end of its stdin; one still importing is killed."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


_held: Standby | None = None  # this process's standby, where it keeps one


def standby_log() -> Path:
    """Where standbys write until they get a task (import warnings, a failed import): one file per host."""
    return get_settings().cache_dir / "standby.log"


def keep_standby() -> None:
    """Start this process's standby (a training worker's pool process, at its start)."""
    global _held
    if _held is None:
        _held = Standby(standby_log())
        log.info("standby child %s started", _held.proc.pid)


def release_standby() -> None:
    """Let this process's standby go (before a child that would not be it needs the GPU)."""
    global _held
    held, _held = _held, None
    if held is not None:
        held.let_go()


def take_standby(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen | None:
    """This process's standby become the child `args`, or None where there is none that fits."""
    global _held
    held, _held = _held, None
    if held is None:
        return None
    return held.hand_over(args, log_path, env)
