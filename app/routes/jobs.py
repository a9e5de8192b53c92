"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select, update

from app.deps import CurrentTenant, OwnedJob, SessionDep, SettingsDep
from app.errors import ApiError
from app.job_builder import build_job, check_active_job_room, training_files
from app.job_state import add_event, after_job_ended
from app.models import TERMINAL_STATUSES, Checkpoint, Job, JobEvent, JobStatus, utcnow
from app.openapi import error_responses
from app.pagination import list_page, page_of
from app.presenters import checkpoint_public, event_public, job_public
from app.queue import enqueue_job
from app.schemas import CheckpointList, EventList, JobCreate, JobList, JobPublic

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning jobs"])


@router.post(
    "",
    response_model=JobPublic,
    responses=error_responses(404),
    summary="Create a fine-tuning job (LoRA, QLoRA or prompt tuning), queued for a GPU worker",
)
def create_job(body: JobCreate, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> JobPublic:
    training, validation = training_files(session, tenant, body.training_file, body.validation_file)
    check_active_job_room(session, settings, tenant, 1)
    job = build_job(session, settings, tenant, body, training, validation)
    session.commit()  # commit, then enqueue: the worker must find the row
    enqueue_job(job.id)
    return job_public(job)


@router.get("", response_model=JobList, summary="List your fine-tuning jobs, newest first")
def list_jobs(
    session: SessionDep,
    tenant: CurrentTenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    status: JobStatus | None = None,
    training_file: str | None = None,
    model: str | None = None,
) -> JobList:
    filters = [Job.tenant_id == tenant.id]
    if status is not None:
        filters.append(Job.status == status)
    if training_file:
        filters.append(Job.training_file_id == training_file)
    if model:
        filters.append(Job.model == model)
    rows, has_more = page_of(session, Job, filters, after, limit)
    return JobList(**list_page([job_public(r) for r in rows], has_more))


@router.get("/{job_id}", response_model=JobPublic, summary="A job: status, progress, ETA, error, result")
def get_job(job: OwnedJob) -> JobPublic:
    return job_public(job)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses=error_responses(409),
    summary="Cancel a queued or running job; the training loop stops within seconds",
)
def cancel_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    if job.status in TERMINAL_STATUSES:
        raise ApiError(409, f"Job {job.id} has already {job.status}", param="job_id", code="job_not_cancellable")
    # The status flips now; the child's writes are fenced on status='running', so nothing more lands,
    # and it stops at its next check. A queued job can no longer be claimed.
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status.notin_(TERMINAL_STATUSES))
        .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=utcnow(), eta_s=None)
    )
    if result.rowcount:
        add_event(session, job.id, "Job cancelled by the user")
    session.commit()
    if result.rowcount:
        after_job_ended(session, job.id)
    session.refresh(job)
    return job_public(job)


@router.get("/{job_id}/events", response_model=EventList, summary="Log lines and per-step metrics, newest first")
def list_events(
    job: OwnedJob,
    session: SessionDep,
    after: Annotated[
        str | None, Query(pattern=r"^ftevent-[0-9]+$", description="the id of the last event already seen")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 20,
) -> EventList:
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    # Event ids are 32-bit: a larger `after` (a database error if sent as is) comes after every event.
    if after and (before := int(after.removeprefix("ftevent-"))) <= 2**31 - 1:
        stmt = stmt.where(JobEvent.id < before)
    rows = session.scalars(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)).all()
    return EventList(**list_page([event_public(r) for r in rows[:limit]], len(rows) > limit))


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, summary="Saved checkpoints, newest first")
def list_checkpoints(
    job: OwnedJob,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> CheckpointList:
    rows, has_more = page_of(session, Checkpoint, [Checkpoint.job_id == job.id], after, limit)
    return CheckpointList(**list_page([checkpoint_public(r, job) for r in rows], has_more))
