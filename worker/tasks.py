"""The Celery task: claim the job, run the training child, keep the lease alive, decide on retries.

The message carries only the job id. The task re-reads the row and claims it atomically, so a second
delivery of the same message (Redis redelivery, a reconciler's resend) does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque

from celery.signals import worker_ready

from app.config import get_settings
from app.db import get_sessionmaker
from app.job_state import claim_job, finish_job, orphaned_job_ids, release_for_retry, renew_lease
from app.models import Job, JobStatus
from worker.celery_app import TRAIN_TASK, make_celery

log = logging.getLogger("ftaas.worker")
celery = make_celery()

CANCEL_GRACE_S = 10.0  # how long a child may take to notice a cancel before it is killed


def worker_name() -> str:
    return f"{os.environ.get('FTAAS_WORKER_NAME') or socket.gethostname()}:{os.getpid()}"


def spawn_child(job_id: str, attempt: int) -> subprocess.Popen:
    # A fresh interpreter, not a fork: CUDA must never be initialised in the worker itself.
    return subprocess.Popen(
        [sys.executable, "-m", "worker.child", job_id, str(attempt)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def supervise(job_id: str, attempt: int, child: subprocess.Popen) -> tuple[int, str]:
    """Renew the lease while the child runs; kill it if the job is no longer ours and it does not stop."""
    settings, Session = get_settings(), get_sessionmaker()
    tail: deque[str] = deque(maxlen=40)
    reader = threading.Thread(target=lambda: tail.extend(child.stderr), daemon=True)
    reader.start()
    lost_since = None
    while child.poll() is None:
        time.sleep(min(settings.heartbeat_s, 1.0) if lost_since else settings.heartbeat_s)
        try:
            with Session() as s:
                ours = renew_lease(s, job_id, attempt, settings.lease_s)
        except Exception:  # the database is away: keep training, try again next beat
            log.warning("heartbeat for %s failed", job_id, exc_info=True)
            continue
        if ours:
            lost_since = None
        elif lost_since is None:
            lost_since = time.monotonic()
        elif time.monotonic() - lost_since > CANCEL_GRACE_S and child.poll() is None:
            log.warning("job %s: child did not stop after cancel; killing it", job_id)
            child.kill()
    reader.join(timeout=5)
    return child.returncode, "".join(tail)


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
            finish_job(s, job_id, attempt, JobStatus.failed, error={
                "code": "too_many_attempts", "message": f"gave up after {settings.max_attempts} attempts", "param": None})
        return "failed"
    log.info("job %s attempt %s: starting training child", job_id, attempt)
    code, stderr_tail = supervise(job_id, attempt, spawn_child(job_id, attempt))
    with Session() as s:
        job = s.get(Job, job_id)
        still_ours = job is not None and job.status == JobStatus.running and job.attempt == attempt
    if not still_ours:
        return "done"
    # The child ended without writing a final state: it crashed (an exception, an OOM kill, a signal).
    last_line = (stderr_tail.strip().splitlines() or [f"exit code {code}"])[-1][:500]
    reason = f"training child exited with code {code}: {last_line}"
    with Session() as s:
        if attempt < settings.max_attempts:
            release_for_retry(s, job_id, attempt, reason)
            celery.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)
            return "retrying"
        finish_job(s, job_id, attempt, JobStatus.failed,
                   error={"code": "training_crashed", "message": reason, "param": None})
    return "failed"


def reconcile_once() -> int:
    """Send again every job whose lease expired or whose message may be lost; the claim dedupes."""
    settings, Session = get_settings(), get_sessionmaker()
    with Session() as s:
        ids = orphaned_job_ids(s, queued_older_than_s=settings.requeue_queued_after_s)
        if ids:
            from sqlalchemy import update

            from app.models import utcnow

            # Touch queued rows so the next pass does not resend them at once.
            s.execute(update(Job).where(Job.id.in_(ids), Job.status == JobStatus.queued).values(updated_at=utcnow()))
            s.commit()
    for job_id in ids:
        celery.send_task(TRAIN_TASK, args=[job_id], queue=settings.queue_name)
    if ids:
        log.info("reconciler re-enqueued %s", ids)
    return len(ids)


def _reconcile_forever() -> None:
    settings = get_settings()
    while True:
        time.sleep(settings.reconcile_every_s)
        try:
            reconcile_once()
        except Exception:  # noqa: BLE001 - the broker or the database may be away for a while
            log.warning("reconcile pass failed", exc_info=True)


@worker_ready.connect
def _start_reconciler(**_kwargs) -> None:
    threading.Thread(target=_reconcile_forever, name="ftaas-reconciler", daemon=True).start()
