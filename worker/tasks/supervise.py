"""Child processes of the worker: one way to start them (a fresh interpreter running `python -m worker.child`,
its output in a log file) for training and comparisons, and the supervision of a training child: the lease
renewed while it runs, a cancel acted on at once, a shutdown passed on.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from sqlalchemy import select

from app.core.db import get_sessionmaker
from app.core.job_state import renew_lease
from app.core.logs import child_env
from app.core.settings import get_settings
from app.core.tables import Job, JobStatus
from worker.child import CHILD_MODULE
from worker.tasks.standby import release_standby, take_standby

log = logging.getLogger("ftaas.worker")

CANCEL_GRACE_S = 10.0  # how long a child of a job claimed by another attempt may take to stop by itself
CANCEL_POLL_S = 1.0  # how often the supervisor looks for a cancel between heartbeats
RANKS_SHUTDOWN_S = 110  # torchrun's wait for ranks after passing a SIGTERM on, before it kills them


def spawn_child(args: list[str], log_path: Path, gpus: int = 1) -> subprocess.Popen:
    """A fresh interpreter, not a fork: CUDA must never be initialised in the worker itself. Or, on one GPU, the
    same interpreter started ahead with its imports done: this pool process's standby (worker/tasks/standby.py). Its
    output is appended to `log_path` (one file per training attempt, one per comparison); its log lines name the
    request and job the task logs under (app/core/logs.py).

    gpus > 1: PyTorch's own launcher, torchrun (torch.distributed.run), starts one process a GPU on this host, in a
    process group of their own, so that a cancel kills every rank at once (kill_child). With no restarts: a rank
    that fails ends the attempt, torchrun stops the others, and the task's retry resumes from the checkpoint."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **child_env()}
    if gpus <= 1:
        child = take_standby(args, log_path, env)  # the same child, its imports done ahead (worker/tasks/standby.py)
        if child is not None:
            child.ranks = 1  # type: ignore[attr-defined]
            return child
    else:
        release_standby()  # its CUDA context would sit on the first of the job's GPUs
    cmd = [sys.executable, "-m", CHILD_MODULE, *args]
    if gpus > 1:
        # one host: a rendezvous on a free local port (what --standalone does, with the address spelled out); on a
        # shutdown, the ranks' time to finish their step and checkpoint before torchrun kills them (its default is
        # 30 s; compose gives a worker 2 minutes)
        launcher = ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={gpus}", "--max-restarts=0"]
        launcher += ["--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", f"--shutdown-timeout={RANKS_SHUTDOWN_S}"]
        cmd = [sys.executable, *launcher, *cmd[1:]]
    with open(log_path, "ab") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=gpus > 1)
    child.ranks = gpus  # type: ignore[attr-defined]
    return child


def signal_child(child: subprocess.Popen, sig: int) -> None:
    """`sig` to the child, and on several GPUs to torchrun and every rank: torchrun starts each rank in a session of
    its own, so they are found as its descendants, before any of them is signalled."""
    if getattr(child, "ranks", 1) <= 1:
        with suppress(ProcessLookupError):
            child.send_signal(sig)
        return
    import psutil

    try:
        launcher = psutil.Process(child.pid)
        tree = [launcher, *launcher.children(recursive=True)]
    except psutil.Error:
        return
    for proc in tree:
        with suppress(psutil.Error):
            proc.send_signal(sig)


def kill_child(child: subprocess.Popen) -> None:
    signal_child(child, signal.SIGKILL)
    child.wait()


def is_training_child(cmdline: list[str], job_id: str | None = None) -> bool:
    """Whether a process's command line runs `-m worker.child train ...` (of `job_id`, when given): a training child,
    a rank of one (torchrun gives its interpreter `-u` first), or the torchrun that launched them. A standby that
    became one renamed itself (setproctitle): its command line is then one string, padded with empty ones."""
    cmdline = [arg for arg in cmdline if arg]
    if len(cmdline) == 1:
        cmdline = cmdline[0].split()
    for i in range(1, len(cmdline) - 2):
        if cmdline[i : i + 3] == ["-m", CHILD_MODULE, "train"]:
            return job_id is None or job_id in cmdline[i + 3 : i + 4]
    return False


def last_lines(path: Path, n: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            return b"\n".join(fh.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


def supervise(job_id: str, attempt: int, child: subprocess.Popen) -> int:
    """Renew the lease while the child runs. A cancelled job's child is killed at once: its writes are fenced
    already, there is nothing to save, and the user wants the GPU back; a job claimed by another attempt gets
    CANCEL_GRACE_S to stop by itself first."""
    settings, Session = get_settings(), get_sessionmaker()
    lost_since, last_beat = None, time.monotonic()
    while child.poll() is None:
        try:  # wakes as soon as the child exits
            child.wait(timeout=min(settings.heartbeat_s, CANCEL_POLL_S))
            break
        except subprocess.TimeoutExpired:
            pass
        try:
            with Session() as s:
                status = s.scalar(select(Job.status).where(Job.id == job_id))
                if status == JobStatus.cancelled:
                    log.info("job %s was cancelled: stopping its training child", job_id)
                    kill_child(child)
                    break
                if time.monotonic() - last_beat < settings.heartbeat_s and lost_since is None:
                    continue
                ours = renew_lease(s, job_id, attempt, settings.lease_s)
                last_beat = time.monotonic()
        except Exception:  # the database is away: keep training, try again next beat
            log.warning("heartbeat for %s failed", job_id, exc_info=True)
            continue
        if ours:
            lost_since = None
        elif lost_since is None:
            lost_since = time.monotonic()
        elif time.monotonic() - lost_since > CANCEL_GRACE_S and child.poll() is None:
            log.warning("job %s: no longer this attempt's and its child did not stop; killing it", job_id)
            kill_child(child)
    return child.returncode


@contextmanager
def passing_shutdown_to(child: subprocess.Popen):
    """While the task supervises `child`, a SIGTERM to this pool process (systemd and Kubernetes signal every
    process of the worker; Celery resets pool processes to die of it) goes on to the child, which checkpoints
    and exits with EXIT_INTERRUPTED; this process stays to release the job."""
    from billiard.process import current_process

    if threading.current_thread() is not threading.main_thread() or current_process().name == "MainProcess":
        yield  # not a prefork pool process (a test calling the task, a solo pool): Celery's handler stays
        return

    def forward(_signum, _frame):
        if child.poll() is None:
            signal_child(child, signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def training_children(parent) -> list:
    """Training children (`python -m worker.child train ...`) under `parent` (a psutil.Process), at any depth."""
    import psutil

    found = []
    for proc in parent.children(recursive=True):
        with suppress(psutil.Error):
            if is_training_child(proc.cmdline()):
                found.append(proc)
    return found
