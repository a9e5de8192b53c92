"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select, update

from app.config import Settings
from app.deps import CurrentTenant, OwnedJob, SessionDep, SettingsDep, owned_file
from app.errors import ApiError
from app.job_state import add_event
from app.models import TERMINAL_STATUSES, Checkpoint, File, Job, JobEvent, JobStatus, utcnow
from app.pagination import list_page, page_of
from app.presenters import checkpoint_public, event_public, job_public
from app.queue import enqueue_job
from app.schemas import CheckpointList, ErrorResponse, EventList, JobCreate, JobList, JobPublic, resolve_spec

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning jobs"])


def _check_model(settings: Settings, model: str) -> str:
    source = settings.resolved_models().get(model)
    if source is None:
        allowed = ", ".join(settings.public_model_ids()) or "none configured"
        raise ApiError(
            400,
            f"Model '{model}' is not available on this server (allowed: {allowed})",
            param="model",
            code="model_not_available",
        )
    return source


def _check_pairing(training: File, validation: File | None) -> None:
    # Raw text trains on every token; the other shapes on completions. A validation file must match.
    if validation is not None and (validation.shape == "text") != (training.shape == "text"):
        raise ApiError(
            400,
            f"validation_file has shape '{validation.shape}' but training_file has shape '{training.shape}'",
            param="validation_file",
        )


@router.post(
    "",
    response_model=JobPublic,
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
    summary="Create a fine-tuning job (LoRA, QLoRA or prompt tuning), queued for a GPU worker",
)
def create_job(body: JobCreate, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> JobPublic:
    source = _check_model(settings, body.model)
    training = owned_file(session, tenant, body.training_file, param="training_file")
    validation = (
        owned_file(session, tenant, body.validation_file, param="validation_file") if body.validation_file else None
    )
    _check_pairing(training, validation)
    if body.adapter.type == "prompt_tuning" and body.adapter.num_virtual_tokens >= body.training.max_seq_length:
        raise ApiError(
            400, "num_virtual_tokens must be smaller than max_seq_length", param="adapter.num_virtual_tokens"
        )
    job = Job(
        tenant_id=tenant.id,
        model=body.model,
        model_source=source,
        training_file_id=training.id,
        validation_file_id=validation.id if validation else None,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31 - 1),
        metadata_=body.metadata,
        spec=resolve_spec(body),
        status=JobStatus.queued,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Created fine-tuning job {job.id}: {body.adapter.type} on {body.model}")
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
    responses={409: {"model": ErrorResponse}},
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
    session.refresh(job)
    return job_public(job)


@router.get("/{job_id}/events", response_model=EventList, summary="Log lines and per-step metrics, newest first")
def list_events(
    job: OwnedJob,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 20,
) -> EventList:
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    if after:
        try:
            stmt = stmt.where(JobEvent.id < int(after.removeprefix("ftevent-")))
        except ValueError as exc:
            raise ApiError(400, f"Invalid event id '{after}'", param="after") from exc
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
