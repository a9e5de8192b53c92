"""Every change of a job's state, in one place, shared by the API, the Celery task and the training child.

Writes by a worker are fenced on (status='running', attempt=N): once a job is cancelled, or another
attempt has claimed it after a lost lease, the old attempt's writes match no row and change nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.models import TERMINAL_STATUSES, Checkpoint, Job, JobEvent, JobStatus, utcnow
from app.result_files import attach_result_file
from app.sweeps import finalize_quietly
from app.webhook_outbox import record_job_end


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict | None = None,
    created_at: datetime | None = None,  # when it happened, for an event written later than that
) -> None:
    session.add(
        JobEvent(job_id=job_id, message=message, level=level, type=type, data=data, created_at=created_at or utcnow())
    )


def claim_job(session: Session, job_id: str, worker: str, lease_s: int) -> int | None:
    """Atomically move a queued job (or a running one whose lease expired) to running.

    Returns the new attempt number, or None when someone else holds it or it is finished: a second
    delivery of the same message then does nothing.
    """
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == JobStatus.queued,
                (Job.status == JobStatus.running) & (Job.lease_expires_at < now),
            ),
        )
        .values(
            status=JobStatus.running,
            attempt=Job.attempt + 1,
            worker=worker,
            lease_expires_at=now + timedelta(seconds=lease_s),
            started_at=now,
            phase="starting",
        )
        .returning(Job.attempt)
    ).first()
    if row is None:
        session.rollback()
        return None
    add_event(session, job_id, f"Attempt {row[0]} started on {worker}")
    session.commit()
    return row[0]


def fenced(job_id: str, attempt: int):
    return (Job.id == job_id) & (Job.status == JobStatus.running) & (Job.attempt == attempt)


def renew_lease(session: Session, job_id: str, attempt: int, lease_s: int) -> bool:
    """Heartbeat. False means the job is no longer ours (cancelled, finished, or claimed again)."""
    result = session.execute(
        update(Job).where(fenced(job_id, attempt)).values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
    )
    session.commit()
    return result.rowcount == 1


def update_job(session: Session, job_id: str, attempt: int, **values: Any) -> bool:
    """A fenced update of a running job's columns; commits; False if the job is no longer ours."""
    result = session.execute(update(Job).where(fenced(job_id, attempt)).values(**values))
    session.commit()
    return result.rowcount == 1


def finish_job(
    session: Session, job_id: str, attempt: int, status: JobStatus, *, error: dict | None = None, **values: Any
) -> bool:
    # a pause asked too late (during the final evaluation) has nothing left to pause
    values.update(
        status=status, error=error, finished_at=utcnow(), lease_expires_at=None, eta_s=None, pause_requested=False
    )
    ok = session.execute(update(Job).where(fenced(job_id, attempt)).values(**values)).rowcount == 1
    if ok and status == JobStatus.succeeded:
        attach_result_file(session, session.get(Job, job_id))  # same transaction: no success without it
    if ok:
        message = f"Job {status}" + (f": {error['message']}" if error else "")
        add_event(session, job_id, message, level="error" if error else "info")
        record_job_end(session, job_id, status)  # its webhook deliveries, committed with the status
    session.commit()
    if ok:
        after_job_ended(session, job_id)
    return ok


def cancel_open_jobs(session: Session, job_ids: list[str], message: str) -> list[str]:
    """Flip those of `job_ids` that have not ended to cancelled, each with its event and its webhook deliveries
    (not committed). The child's writes are fenced on status='running', so nothing more lands, and it stops at
    its next check; a queued job can no longer be claimed. Returns the ids it cancelled: a job that ended
    meanwhile keeps its own end, and its own webhooks."""
    if not job_ids:
        return []
    cancelled = session.scalars(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status.notin_(TERMINAL_STATUSES))
        .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=utcnow(), eta_s=None)
        .returning(Job.id)
    ).all()
    for job_id in cancelled:
        add_event(session, job_id, message)
        record_job_end(session, job_id, JobStatus.cancelled)
    return list(cancelled)


def after_job_ended(session: Session, job_id: str) -> None:
    """A job reached a final state (committed): if it belongs to a sweep, the sweep may now be decided."""
    finalize_quietly(session, session.scalar(select(Job.sweep_id).where(Job.id == job_id)))


def release_for_retry(session: Session, job_id: str, attempt: int, reason: str, *, interrupted: bool = False) -> bool:
    """Put a running job back to queued, so the next attempt resumes from its checkpoint: after a crash, or
    (interrupted=True) after its worker shut down, which is counted apart and not as a failed attempt."""
    values: dict[str, Any] = {"status": JobStatus.queued, "lease_expires_at": None, "phase": "requeued"}
    if interrupted:
        values["interruptions"] = Job.interruptions + 1
    ok = session.execute(update(Job).where(fenced(job_id, attempt)).values(**values)).rowcount == 1
    if ok:
        level = "info" if interrupted else "warning"
        add_event(session, job_id, f"Attempt {attempt} ended ({reason}); queued again", level=level)
    session.commit()
    return ok


def pause_after_checkpoint(session: Session, job_id: str, attempt: int) -> bool:
    """The child stopped at a checkpoint because the user asked for a pause: the job leaves the GPU and stays
    `paused` (not queued again) until POST .../resume. Counted as an interruption, not a failed attempt."""
    values = {
        "status": JobStatus.paused,
        "pause_requested": False,
        "lease_expires_at": None,
        "phase": "paused",
        "eta_s": None,
        "interruptions": Job.interruptions + 1,
    }
    ok = session.execute(update(Job).where(fenced(job_id, attempt)).values(**values)).rowcount == 1
    if ok:
        step = session.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job_id))
        add_event(session, job_id, f"Job paused with its checkpoint of step {step}; GPU released")
    session.commit()
    return ok


def counted_attempts(session: Session, job_id: str, attempt: int) -> int:
    """Attempts so far, this one included, that count against max_attempts: all but those a worker shutdown ended."""
    return attempt - (session.scalar(select(Job.interruptions).where(Job.id == job_id)) or 0)


def take_orphaned_jobs(session: Session, queued_older_than_s: float) -> list[str]:
    """Jobs a reconciler should send to the broker again: running with an expired lease, or queued for
    a while (their message may have been lost with a broker restart). Duplicates are harmless.
    Queued ones are touched, so the next pass does not resend them at once; commits."""
    now = utcnow()
    stmt = select(Job.id).where(
        or_(
            (Job.status == JobStatus.running) & (Job.lease_expires_at < now),
            (Job.status == JobStatus.queued) & (Job.updated_at < now - timedelta(seconds=queued_older_than_s)),
        )
    )
    ids = list(session.scalars(stmt))
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids), Job.status == JobStatus.queued).values(updated_at=now))
    session.commit()
    return ids
