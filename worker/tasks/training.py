"""The training task: claim the job, run its training child, keep the lease alive, decide on retries.

The message carries only the job id. The task re-reads the row and claims it atomically, so a second
delivery of the same message (Redis redelivery, a reconciler's resend) does nothing.
"""

from __future__ import annotations

import logging
import re
import signal

from sqlalchemy import select

from app.core.celery_app import TRAIN_TASK
from app.core.db import get_sessionmaker
from app.core.job_spec import gpus_of
from app.core.job_state import (
    claim_job,
    counted_attempts,
    finish_job,
    pause_after_checkpoint,
    release_for_retry,
)
from app.core.queue import train_queue
from app.core.settings import get_settings
from app.core.storage import JobFiles
from app.core.tables import Job, JobStatus
from worker import telemetry
from worker.child.job_context import EXIT_CRASH, EXIT_DONE, EXIT_INTERRUPTED
from worker.tasks.runtime import celery, logging_for, worker_name
from worker.tasks.supervise import last_lines, passing_shutdown_to, spawn_child, supervise

log = logging.getLogger("ftaas.worker")


@celery.task(name=TRAIN_TASK, bind=True)
def train(self, job_id: str) -> str:
    with logging_for(Job, job_id):
        result = run_attempt(job_id)
        if telemetry.enabled():
            try:
                telemetry.count_job(outcome(job_id, result))
            except Exception:  # noqa: BLE001 - a figure lost, never the task's result
                log.warning("job %s: attempt not counted in /metrics", job_id, exc_info=True)
    return result


def outcome(job_id: str, result: str) -> str:
    """How the attempt ended, for the worker's /metrics: the task's result, or for "done" (the child wrote the
    job's end, or the job was cancelled or taken over meanwhile) the job's status then."""
    if result != "done":
        return result
    with get_sessionmaker()() as s:
        status = s.scalar(select(Job.status).where(Job.id == job_id))
    return str(status) if status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled) else "lost"


def first_failure(log_text: str) -> tuple[int, str] | None:
    """The rank torchrun saw fail first, and how, from the report it writes when it ends ("Root Cause (first
    observed failure)": its rank and exit code), or None where there is none."""
    _, found, report = log_text.rpartition("Root Cause (first observed failure)")
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", report, re.MULTILINE)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", report, re.MULTILINE)
    if not (found and rank and code):
        return None
    c = int(code.group(1))
    how = f"was killed by signal {signal.Signals(-c).name}" if c < 0 else f"exited with code {c}"
    return int(rank.group(1)), how


def ranks_outcome(files: JobFiles, attempt: int, gpus: int, log_text: str = "") -> tuple[int, tuple[int, str] | None]:
    """The exit code of an attempt on several GPUs, from what each rank left (torchrun's own is 1 for any failure),
    and the first rank that failed with how. The main rank's "done" stands (it wrote the job's end, or the job is
    no longer ours; the other ranks were stopped). An interrupt (a worker's shutdown, a pause) is one only where
    every rank stopped at the checkpoint (or had finished its training); anything else is a crash, blamed on the
    rank torchrun saw fail first where its report says (`log_text`, the attempt's log)."""
    codes = []
    for rank in range(gpus):
        path = files.rank_exit(attempt, rank)
        text = path.read_text().strip() if path.is_file() else ""
        codes.append(int(text) if text.lstrip("-").isdigit() else None)
    if codes[0] == EXIT_DONE:
        return EXIT_DONE, None
    # a rank that finished its training (0) while the main one stopped after the last step is no failure
    if codes[0] == EXIT_INTERRUPTED and all(c in (EXIT_DONE, EXIT_INTERRUPTED) for c in codes[1:]):
        return EXIT_INTERRUPTED, None
    cause = first_failure(log_text)
    if cause is not None:
        return EXIT_CRASH, cause
    # without torchrun's report: a rank that left no code was killed (the OOM killer, kill -9); the others then fail
    # at their next collective with it
    for rank, c in enumerate(codes):
        if c is None:
            return EXIT_CRASH, (rank, "ended without an exit code (killed)")
    for rank, c in enumerate(codes):
        if c not in (EXIT_DONE, EXIT_INTERRUPTED):
            return EXIT_CRASH, (rank, f"exited with code {c}")
    return EXIT_CRASH, (0, f"exited with code {codes[0]}")


def run_attempt(job_id: str) -> str:
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
    with Session() as s:
        gpus = gpus_of(s.get(Job, job_id).spec)
    log.info("job %s attempt %s: starting training child (%s GPU%s)", job_id, attempt, gpus, "s" if gpus > 1 else "")
    files = JobFiles(job_id)
    log_path = files.attempt_log(attempt)
    for rank in range(gpus if gpus > 1 else 0):
        files.rank_exit(attempt, rank).unlink(missing_ok=True)
    child = spawn_child(["train", job_id, str(attempt)], log_path, gpus)
    with passing_shutdown_to(child):
        code = supervise(job_id, attempt, child)
    stderr_tail = last_lines(log_path)
    failed_rank = None
    if gpus > 1:
        code, failed_rank = ranks_outcome(files, attempt, gpus, last_lines(log_path, 400))
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
        celery.send_task(TRAIN_TASK, args=[job_id], queue=train_queue(gpus))  # for the next worker
        return "interrupted"
    # The child ended without writing a final state: it crashed (an exception, an OOM kill, a signal).
    if failed_rank is not None:  # torchrun's failure report ends the log: its last error line says more
        errors = [ln for ln in stderr_tail.splitlines() if "Error" in ln or "Exception" in ln]
        reason = f"rank {failed_rank[0]} of {gpus} {failed_rank[1]}" + (
            f"; {errors[-1].strip()[:400]}" if errors else ""
        )
    elif code < 0:  # killed by a signal (the kernel's OOM killer, kill -9, ...)
        reason = f"training child was killed by signal {signal.Signals(-code).name}"
    else:
        last_line = (stderr_tail.strip().splitlines() or [f"exit code {code}"])[-1][:500]
        reason = f"training child exited with code {code}: {last_line}"
    with Session() as s:
        if counted < settings.max_attempts:
            release_for_retry(s, job_id, attempt, reason)
            celery.send_task(TRAIN_TASK, args=[job_id], queue=train_queue(gpus))
            return "retrying"
        finish_job(
            s, job_id, attempt, JobStatus.failed, error={"code": "training_crashed", "message": reason, "param": None}
        )
    return "failed"
