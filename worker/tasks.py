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
import threading
import time
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path

from celery import bootsteps
from celery.signals import worker_process_init, worker_shutting_down
from sqlalchemy import select, update

from app.core.celery_app import TRAIN_TASK, make_celery
from app.core.db import get_engine, get_sessionmaker
from app.core.job_state import (
    claim_job,
    counted_attempts,
    finish_job,
    pause_after_checkpoint,
    release_for_retry,
    renew_lease,
    take_orphaned_jobs,
)
from app.core.settings import get_settings
from app.core.tables import Job, JobStatus, utcnow
from worker.job_context import EXIT_INTERRUPTED

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
        counted = counted_attempts(s, job_id, attempt) if attempt is not None else 0
    if attempt is None:
        log.info("job %s is not claimable (finished, cancelled or held); nothing to do", job_id)
        return "skipped"
    if counted > settings.max_attempts:
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
    with passing_shutdown_to(child):
        code = supervise(job_id, attempt, child)
    stderr_tail = last_lines(log_path)
    with Session() as s:
        job = s.get(Job, job_id)
        still_ours = job is not None and job.status == JobStatus.running and job.attempt == attempt
        paused_by_user = still_ours and job.pause_requested
    if not still_ours:
        return "done"
    if code == EXIT_INTERRUPTED and paused_by_user:  # POST .../pause: checkpointed, stays off
        with Session() as s:
            pause_after_checkpoint(s, job_id, attempt)
        return "paused"
    if code == EXIT_INTERRUPTED:  # the worker is shutting down: the child saved a checkpoint and stopped
        with Session() as s:
            release_for_retry(s, job_id, attempt, "its worker shut down; checkpoint saved", interrupted=True)
        celery.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)  # for the next worker
        return "interrupted"
    # The child ended without writing a final state: it crashed (an exception, an OOM kill, a signal).
    if code < 0:  # killed by a signal (the kernel's OOM killer, kill -9, ...)
        reason = f"training child was killed by signal {signal.Signals(-code).name}"
    else:
        last_line = (stderr_tail.strip().splitlines() or [f"exit code {code}"])[-1][:500]
        reason = f"training child exited with code {code}: {last_line}"
    with Session() as s:
        if counted < settings.max_attempts:
            release_for_retry(s, job_id, attempt, reason)
            celery.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)
            return "retrying"
        finish_job(
            s, job_id, attempt, JobStatus.failed, error={"code": "training_crashed", "message": reason, "param": None}
        )
    return "failed"


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
            child.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@worker_shutting_down.connect
def _interrupt_training_children(sig=None, how=None, **_kwargs) -> None:
    """A warm shutdown (SIGTERM, or SIGINT once, to the worker's main process, as `docker stop` sends it)
    would wait for the running job to finish, hours on a GPU. Instead every training child under this
    worker is told to checkpoint and stop; the task then puts its job back in the queue for the next worker.
    A cold shutdown kills the pool: the job is then recovered from its lease like any crash."""
    import psutil

    for proc in training_children(psutil.Process()):
        log.info("worker shutting down (%s, %s): interrupting training child %s", sig, how, proc.pid)
        with suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)


def training_children(parent) -> list:
    """`python -m worker.child ...` processes under `parent` (a psutil.Process), at any depth."""
    import psutil

    found = []
    for proc in parent.children(recursive=True):
        with suppress(psutil.Error):
            cmdline = proc.cmdline()
            if "worker.child" in cmdline[1:3]:
                found.append(proc)
    return found


def reconcile_once() -> int:
    """Send again every job whose lease expired or whose message may be lost; the claim dedupes."""
    settings, Session = get_settings(), get_sessionmaker()
    with Session() as s:
        ids = take_orphaned_jobs(s, queued_older_than_s=settings.requeue_queued_after_s)
    for job_id in ids:
        celery.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)
    if ids:
        log.info("reconciler re-enqueued %s", ids)
    return len(ids) + len(resend_if_broker_lost())


# The marker is refreshed every pass; the TTL only lets the marker of a queue no longer served go away. Should
# every worker be stopped for longer, the first pass after takes it for a loss: one harmless resend.
BROKER_MARKER_TTL_S = 24 * 3600


def resend_if_broker_lost() -> list[str]:
    """Send every queued job again when the broker has forgotten its messages (Redis restarted without
    persistence, or flushed), without waiting requeue_queued_after_s. A loss shows as a marker key missing;
    the one worker whose SET NX recreates it resends (a job also still in the queue gets a second message,
    which claim_job makes a no-op). Running jobs need nothing: their lease, not their message, keeps them."""
    queue = get_settings().queue_name
    if not broker_marker_was_missing(queue):
        return []
    ids = queued_job_ids()
    try:
        for job_id in ids:
            celery.send_task(TRAIN_TASK, args=[job_id], queue=queue)
    except Exception:
        with suppress(Exception):  # so that the next pass, not nobody, sends them
            with broker_redis() as client:
                client.delete(broker_marker_key(queue))
        raise
    log.log(
        logging.WARNING if ids else logging.INFO,
        "broker marker of queue %s was missing (first start, or the broker lost its messages): "
        "re-sent %d queued job(s) %s",
        queue,
        len(ids),
        ids,
    )
    return ids


def broker_marker_was_missing(queue: str) -> bool:
    """SET NX of the queue's marker: True for the one caller that found it missing; False when it was there,
    and for a broker that is not Redis (the embedded filesystem transport keeps its messages in files)."""
    with broker_redis() as client:
        if client is None:
            return False
        key = broker_marker_key(queue)
        if client.set(key, f"{worker_name()} at {time.time():.0f}", nx=True, ex=BROKER_MARKER_TTL_S):
            return True
        client.expire(key, BROKER_MARKER_TTL_S)
        return False


def broker_marker_key(queue: str) -> str:
    # one per queue: services sharing a Redis (one queue each) must each resend their own jobs after a loss
    return f"ftaas:broker-marker:{queue}"


@contextmanager
def broker_redis():
    """The redis-py client of a fresh broker connection of this Celery app (kombu's own, with its options and
    key prefix), or None when the broker is not Redis. Fresh, not pooled: one per reconcile_every_s costs
    nothing, and none is left holding a socket from before a Redis restart."""
    with celery.connection_for_write() as conn:
        yield conn.default_channel.client if conn.transport.driver_type == "redis" else None


def queued_job_ids() -> list[str]:
    with get_sessionmaker()() as s:
        return list(s.scalars(select(Job.id).where(Job.status == JobStatus.queued).order_by(Job.created_at)))


def _reconcile_safely() -> None:
    try:
        reconcile_once()
    except Exception:  # noqa: BLE001 - the broker or the database may be away for a while
        log.warning("reconcile pass failed", exc_info=True)


def holder_is_gone(worker: str, claimed_at) -> bool:
    """Whether the process named in a job's `worker` ("host:pid") is gone: no such pid, a zombie (killed, its
    parent dead too and not yet reaped), or a process started after the claim (the pid was reused)."""
    import psutil

    pid = worker.rsplit(":", 1)[1]
    if not pid.isdigit():
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return claimed_at is not None and proc.create_time() > claimed_at.timestamp()
    except psutil.NoSuchProcess:
        return True


def reclaim_jobs_of_dead_predecessors() -> list[str]:
    """At worker start: jobs still `running` under a worker process of this host that no longer exists.

    A worker killed outright (kill -9, the OOM killer, a container restart) leaves its job running with a
    lease of up to lease_s to go. Its name says it was on this host, and its process is gone, so the lease
    ends now and the first reconcile pass sends the job again. A training child it may have left behind is
    killed first, so two attempts never train at once. A holder that still runs is left to its lease."""
    import psutil

    host = worker_name().rsplit(":", 1)[0]
    Session = get_sessionmaker()
    with Session() as s:
        rows = s.execute(
            select(Job.id, Job.worker, Job.started_at).where(
                Job.status == JobStatus.running, Job.worker.startswith(f"{host}:")
            )
        ).all()
        dead = [(job_id, name) for job_id, name, claimed_at in rows if holder_is_gone(name, claimed_at)]
        if len(dead) < len(rows):
            log.info("running jobs of this host whose holder still runs: %s", sorted(set(rows) - set(dead)))
        for job_id, name in dead:
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if "worker.child" in cmdline[1:3] and job_id in cmdline:
                    with suppress(psutil.Error):
                        proc.kill()
                        proc.wait(timeout=10)
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running, Job.worker == name)
                .values(lease_expires_at=utcnow() - timedelta(seconds=1))
            )
        s.commit()
    return [job_id for job_id, _ in dead]


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
        try:
            reclaimed = reclaim_jobs_of_dead_predecessors()
            if reclaimed:
                log.info("jobs of a dead worker of this host, sent again now: %s", reclaimed)
        except Exception:  # noqa: BLE001 - the database may be away; the leases expire anyway
            log.warning("could not look for jobs of dead workers", exc_info=True)
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
