"""Every change of a job's state, of a comparison's and of a merged model's, in one place, shared by the API, the
Celery tasks and the training, comparison and merge children.

Writes by a worker are fenced on (status='running', attempt=N): once a job is cancelled, or another
attempt has claimed it after a lost lease, the old attempt's writes match no row and change nothing.
A job's end writes its event, its webhook deliveries (the outbox) and, on success, its result file in the same
transaction. Deciding a sweep whose last candidate ended is the API's work (app/sweeps/service.py), not the
training child's: the child imports nothing of the leaderboard.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.core.outbox import record_job_end
from app.core.result_files import attach_result_file
from app.core.tables import (
    TERMINAL_STATUSES,
    Checkpoint,
    Comparison,
    ComparisonStatus,
    Job,
    JobEvent,
    JobStatus,
    MergedModel,
    MergeStatus,
    Preview,
    PreviewStatus,
    utcnow,
)


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


def end_lease_of_dead_holder(session: Session, job_id: str, holder: str) -> bool:
    """A worker found that `holder`, the process holding a running job, is gone: its lease ends now, so the next
    reconcile pass sends the job again (not committed)."""
    return (
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running, Job.worker == holder)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        ).rowcount
        == 1
    )


# ---------------------------------------------------------------- pause and resume (the user's)


def pause(session: Session, job_id: str) -> None:
    """POST .../pause (not committed). A queued job is not on a GPU: it becomes paused now, and a claim (which needs
    'queued') cannot start it. A running one is flagged: its training child reads the flag within a second,
    checkpoints and exits, and its task then marks it paused (pause_after_checkpoint). Anything else: nothing."""
    if session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued)
        .values(status=JobStatus.paused, phase="paused", pause_requested=False)
    ).rowcount:
        add_event(session, job_id, "Job paused by the user before it started")
    elif session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.pause_requested.is_(False))
        .values(pause_requested=True)
    ).rowcount:
        add_event(session, job_id, "Pause requested: the job saves a checkpoint at the end of its step")


def withdraw_pause(session: Session, job_id: str) -> bool:
    """POST .../resume on a job still pausing: it runs on (not committed)."""
    withdrawn = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.running, Job.pause_requested.is_(True))
        .values(pause_requested=False)
    ).rowcount
    if withdrawn:
        add_event(session, job_id, "Pause withdrawn: the job runs on")
    return withdrawn == 1


def resume(session: Session, job_id: str) -> bool:
    """POST .../resume on a paused job: queued again, to resume from its checkpoint (not committed; the caller
    commits, then enqueues)."""
    resumed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.paused)
        .values(status=JobStatus.queued, phase="queued", updated_at=utcnow())
    ).rowcount
    if resumed:
        add_event(session, job_id, "Job resumed by the user; queued")
    return resumed == 1


# ---------------------------------------------------------------- comparisons


def claim_comparison(session: Session, comparison_id: str, *, take_over_running: bool = False) -> bool:
    """queued -> running, atomically: only one delivery of the task gets to run it. Commits.

    take_over_running: also claim a running one. For a message the broker delivers again because the worker
    that ran it died (acks_late + reject_on_worker_lost): there is no lease on comparisons, so without this
    the comparison would stay running for ever. At worst a comparison is generated twice; the first final
    write wins (finish_comparison only writes over a running row)."""
    claimable = [ComparisonStatus.queued] + ([ComparisonStatus.running] if take_over_running else [])
    result = session.execute(
        update(Comparison)
        .where(Comparison.id == comparison_id, Comparison.status.in_(claimable))
        .values(status=ComparisonStatus.running)
    )
    session.commit()
    return result.rowcount == 1


def finish_comparison(
    session: Session,
    comparison_id: str,
    status: ComparisonStatus,
    *,
    results: dict | None = None,
    error: dict | None = None,
    from_statuses: tuple[ComparisonStatus, ...] = (ComparisonStatus.running,),
) -> bool:
    """Write the final state, only over a running comparison (a finished one is never overwritten); the API
    fails a queued one it could not enqueue. Commits."""
    values: dict = {"status": status, "error": error, "finished_at": utcnow()}
    if results is not None:
        values["results"] = results
    result = session.execute(
        update(Comparison).where(Comparison.id == comparison_id, Comparison.status.in_(from_statuses)).values(**values)
    )
    session.commit()
    return result.rowcount == 1


def claim_preview(session: Session, preview_id: str) -> bool:
    """queued -> running, atomically (a preview takes seconds: a message delivered again after a worker died
    finds it running and leaves it; the API's wait ends and a new request makes a new one). Commits."""
    result = session.execute(
        update(Preview)
        .where(Preview.id == preview_id, Preview.status == PreviewStatus.queued)
        .values(status=PreviewStatus.running)
    )
    session.commit()
    return result.rowcount == 1


def finish_preview(
    session: Session,
    preview_id: str,
    status: PreviewStatus,
    *,
    result: dict | None = None,
    error: dict | None = None,
    from_statuses: tuple[PreviewStatus, ...] = (PreviewStatus.running,),
) -> bool:
    """The final state, over a running preview only (or a queued one the API could not enqueue). Commits."""
    done = session.execute(
        update(Preview)
        .where(Preview.id == preview_id, Preview.status.in_(from_statuses))
        .values(status=status, result=result, error=error, finished_at=utcnow())
    )
    session.commit()
    return done.rowcount == 1


# ---------------------------------------------------------------- merged models


def claim_merge(session: Session, merge_id: str, *, take_over_building: bool = False) -> int | None:
    """queued -> building, atomically; returns the build's attempt number, or None when the row is not there to
    build (ready, failed, being built, gone): a second delivery of the message then does nothing. Commits.

    take_over_building: also claim one being built, for the broker's redelivery after the worker that built it
    died (as claim_comparison's take_over_running). The attempt number fences the old build's writes."""
    claimable = [MergeStatus.queued] + ([MergeStatus.building] if take_over_building else [])
    row = session.execute(
        update(MergedModel)
        .where(MergedModel.id == merge_id, MergedModel.status.in_(claimable))
        .values(status=MergeStatus.building, attempt=MergedModel.attempt + 1, started_at=utcnow(), error=None)
        .returning(MergedModel.attempt)
    ).first()
    session.commit()
    return row[0] if row else None


def finish_merge(session: Session, merge_id: str, attempt: int, status: MergeStatus, **values: Any) -> bool:
    """A build's outcome: ready with archive_name, sha256 and bytes, or failed with error. Written only by the
    attempt that holds the row, so a build that was taken over (or asked for again) changes nothing. Commits."""
    result = session.execute(
        update(MergedModel)
        .where(MergedModel.id == merge_id, MergedModel.status == MergeStatus.building, MergedModel.attempt == attempt)
        .values(status=status, finished_at=utcnow(), **values)
    )
    session.commit()
    return result.rowcount == 1
