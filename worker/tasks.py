"""The Celery task: claim the job, run the training child, keep the lease alive, decide on retries.

The message carries only the job id. The task re-reads the row and claims it atomically, so a second
delivery of the same message (Redis redelivery, a reconciler's resend) does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from celery import bootsteps
from celery.signals import worker_process_init
from sqlalchemy import select

from app.config import get_settings
from app.db import get_engine, get_sessionmaker
from app.job_state import claim_job, finish_job, release_for_retry, renew_lease, take_orphaned_jobs
from app.models import Job, JobStatus
from app.sweeps import finalize_open_sweeps
from worker.celery_app import TRAIN_TASK, make_celery

log = logging.getLogger("ftaas.worker")
celery = make_celery()

CANCEL_GRACE_S = 10.0  # how long a child of a job claimed by another attempt may take to stop by itself


def worker_name() -> str:
    return f"{os.environ.get('FTAAS_WORKER_NAME') or socket.gethostname()}:{os.getpid()}"


def spawn_child(job_id: str, attempt: int) -> tuple[subprocess.Popen, Path]:
    """A fresh interpreter, not a fork: CUDA must never be initialised in the worker itself.
    Its output goes to a log file per attempt beside the job's checkpoints."""
    log_path = get_settings().jobs_dir / job_id / f"attempt-{attempt}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "worker.child", job_id, str(attempt)], stdout=out, stderr=subprocess.STDOUT
        )
    return child, log_path


def last_lines(path: Path, n: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            return b"\n".join(fh.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


CANCEL_POLL_S = 1.0  # how often the supervisor looks for a cancel between heartbeats


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
                    child.kill()
                    child.wait()
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
            child.kill()
    return child.returncode


@celery.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> str:
    settings, Session = get_settings(), get_sessionmaker()
    with Session() as s:
        attempt = claim_job(s, job_id, worker_name(), settings.lease_s)
    if attempt is None:
        log.info("job %s is not claimable (finished, cancelled or held); nothing to do", job_id)
        return "skipped"
    if attempt > settings.max_attempts:
        with Session() as s:
            finish_job(
                s,
                job_id,
                attempt,
                JobStatus.failed,
                error={
                    "code": "too_many_attempts",
                    "message": f"gave up after {settings.max_attempts} attempts",
                    "param": None,
                },
            )
        return "failed"
    log.info("job %s attempt %s: starting training child", job_id, attempt)
    child, log_path = spawn_child(job_id, attempt)
    code = supervise(job_id, attempt, child)
    stderr_tail = last_lines(log_path)
    with Session() as s:
        job = s.get(Job, job_id)
        still_ours = job is not None and job.status == JobStatus.running and job.attempt == attempt
    if not still_ours:
        return "done"
    # The child ended without writing a final state: it crashed (an exception, an OOM kill, a signal).
    if code < 0:  # killed by a signal (the kernel's OOM killer, kill -9, ...)
        reason = f"training child was killed by signal {signal.Signals(-code).name}"
    else:
        last_line = (stderr_tail.strip().splitlines() or [f"exit code {code}"])[-1][:500]
        reason = f"training child exited with code {code}: {last_line}"
    with Session() as s:
        if attempt < settings.max_attempts:
            release_for_retry(s, job_id, attempt, reason)
            celery.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)
            return "retrying"
        finish_job(
            s, job_id, attempt, JobStatus.failed, error={"code": "training_crashed", "message": reason, "param": None}
        )
    return "failed"


def reconcile_once() -> int:
    """Send again every job whose lease expired or whose message may be lost; the claim dedupes."""
    settings, Session = get_settings(), get_sessionmaker()
    with Session() as s:
        ids = take_orphaned_jobs(s, queued_older_than_s=settings.requeue_queued_after_s)
    for job_id in ids:
        celery.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)
    if ids:
        log.info("reconciler re-enqueued %s", ids)
    with Session() as s:  # a sweep whose last job ended in a crash of the finishing process
        finalize_open_sweeps(s)
    return len(ids)


def _reconcile_safely() -> None:
    try:
        reconcile_once()
    except Exception:  # noqa: BLE001 - the broker or the database may be away for a while
        log.warning("reconcile pass failed", exc_info=True)


class Reconciler(bootsteps.StartStopStep):
    """Runs reconcile_once every reconcile_every_s on the worker's own timer, in its main thread.

    Not a thread of its own: the prefork pool forks a new child for every task (max_tasks_per_child=1), and
    a fork while another thread holds an import or logging lock leaves the child waiting on it for ever
    (seen: a pool child stuck in importlib's module lock because the reconciler thread was importing
    SQLAlchemy's Postgres dialect at that moment). Timers fire between forks, never during one."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker) -> None:
        # A first pass now, in the main thread, before the pool forks: it does the one-time imports (the
        # database dialect, the broker's client). With a polling transport (the embedded filesystem broker)
        # Celery's timer is a thread, and from then on a pass imports nothing that a fork could catch.
        _reconcile_safely()
        self.tref = worker.timer.call_repeatedly(get_settings().reconcile_every_s, _reconcile_safely)

    def stop(self, worker) -> None:
        if self.tref is not None:
            self.tref.cancel()


celery.steps["worker"].add(Reconciler)


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs) -> None:
    """A forked pool child must not reuse the parent's pooled database connections (SQLAlchemy's rule for
    forks): drop the inherited pool without closing the parent's sockets."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
