"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse
from sqlalchemy import select

from app.api.deps import CurrentTenant, JobAsRead, OwnedJob, SessionDep, SettingsDep
from app.api.openapi import error_responses
from app.api.pagination import after_query, limit_query, list_page, page_of
from app.core.errors import ApiError
from app.core.job_spec import JobCreate
from app.core.tables import Checkpoint, Job, JobEvent, JobStatus
from app.jobs import service as jobs_service
from app.jobs.event_stream import STREAM_RESPONSE, StreamSessions, event_stream_response, resume_point
from app.jobs.presenters import checkpoint_public, event_public, job_public
from app.jobs.schemas import CheckpointList, EventList, JobList, JobPublic

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning jobs"])


@router.post(
    "",
    response_model=JobPublic,
    responses=error_responses(404),
    summary="Create a fine-tuning job (LoRA, QLoRA or prompt tuning), queued for a GPU worker",
)
def create_job(body: JobCreate, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> JobPublic:
    job = jobs_service.create(session, settings, tenant, body)
    return job_public(job)


METADATA_FILTER = {
    "name": "metadata",
    "in": "query",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "description": "only jobs whose metadata has these values: metadata[key]=value, as the openai client sends "
    "`metadata={...}`; metadata=null lists the jobs without metadata",
    # keys as jobs may hold them (app/core/job_spec.py's Metadata), without brackets: metadata[a[b]] is no one level
    "schema": {
        "type": "object",
        "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": r"^[^\[\]]*$"},
        "additionalProperties": {"type": "string", "maxLength": 512},
    },
    "examples": {"team": {"summary": "the jobs of one team", "value": {"team": "analytics"}}},
}


METADATA_KEY = re.compile(r"metadata\[[^\[\]]*\]")  # one level: metadata values are strings


def metadata_filters(request: Request) -> list:
    """metadata[k]=v pairs of the query (all must match), or metadata=null (no metadata at all)."""
    filters = []
    for name, value in request.query_params.multi_items():
        if name == "metadata" and value == "null":
            filters.append(Job.metadata_.is_(None))
        elif name == "metadata" or (name.startswith("metadata[") and not METADATA_KEY.fullmatch(name)):
            raise ApiError(
                400, f"Filter by metadata as metadata[key]=value (or metadata=null), not {name}={value!r}", param=name
            )
        elif name.startswith("metadata["):
            filters.append(Job.metadata_[name[len("metadata[") : -1]].as_string() == value)
    return filters


@router.get(
    "",
    response_model=JobList,
    summary="List your fine-tuning jobs, newest first",
    openapi_extra={"parameters": [METADATA_FILTER]},
)
def list_jobs(
    request: Request,
    session: SessionDep,
    tenant: CurrentTenant,
    after: Annotated[str | None, after_query("ftjob-abc123")] = None,
    limit: Annotated[int, limit_query(1000, "jobs")] = 20,
    status: Annotated[
        JobStatus | None,
        Query(openapi_examples={"succeeded": {"summary": "the jobs that succeeded", "value": "succeeded"}}),
    ] = None,
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
    filters += metadata_filters(request)
    rows, has_more = page_of(session, Job, filters, after, limit)
    return JobList(**list_page([job_public(r) for r in rows], has_more))


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={304: {"description": "Not modified: the job is as it was when its ETag was sent in If-None-Match"}},
    summary="A job: status, progress, ETA, error, result",
    description="The answer carries an `ETag`; a poller that sends it back in `If-None-Match` gets `304 Not "
    "Modified` with no body until the job changes.",
)
async def get_job(
    job: JobAsRead,
    if_none_match: Annotated[
        str, Header(alias="If-None-Match", description="the ETag of the job as last read: 304 if unchanged")
    ] = None,
) -> Response:
    # async: presenting a loaded row does no I/O, so no thread hop; the body is written here once, for its ETag
    body = job_public(job).model_dump_json().encode()
    etag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match and (if_none_match.strip() == "*" or etag in if_none_match.replace("W/", "").split(", ")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses=error_responses(409),
    summary="Cancel a queued or running job; the training loop stops within seconds",
)
def cancel_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    jobs_service.cancel(session, job)
    return job_public(job)


@router.post(
    "/{job_id}/pause",
    response_model=JobPublic,
    responses=error_responses(409),
    summary="Pause a job: a running one saves a checkpoint at the end of its step and leaves the GPU",
    description="A queued job is paused at once. A running one keeps status `running` with "
    "`progress.phase` `pausing` until its checkpoint is saved (seconds), then is `paused`. Pausing a paused "
    "job changes nothing. POST .../resume continues from that checkpoint.",
)
def pause_job(job: OwnedJob, session: SessionDep) -> JobPublic:
    jobs_service.pause(session, job)
    return job_public(job)


@router.post(
    "/{job_id}/resume",
    response_model=JobPublic,
    responses=error_responses(409, 429),
    summary="Resume a paused job from its checkpoint (queued for the next free GPU)",
    description="A job still pausing (status `running`, phase `pausing`) keeps running instead.",
)
def resume_job(job: OwnedJob, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> JobPublic:
    jobs_service.resume(session, settings, tenant, job)
    return job_public(job)


@router.get(
    "/{job_id}/events",
    response_model=EventList,
    responses={200: STREAM_RESPONSE},
    summary="Log lines and per-step metrics, newest first; or live, as server-sent events (stream=true)",
    description="With `stream=true`: `text/event-stream`. First the job's events after `Last-Event-ID` (or `after`), "
    "oldest first, then new ones as they are written: `id: ftevent-N`, `event: message` or `metrics`, `data:` the "
    "event as in the list. `event: status` (the job) when its status or phase changes, `event: end` (the job) "
    "after its last event once it has succeeded, failed or been cancelled, and the stream closes. A paused job's "
    "stream stays open. `: ping` comments keep an idle stream alive; after FTAAS_EVENT_STREAM_MAX_S it closes and "
    "the client reconnects with `Last-Event-ID`.",
)
def list_events(
    job: OwnedJob,
    session: SessionDep,
    stream_sessions: StreamSessions,
    after: Annotated[
        str | None,
        Query(
            pattern=r"^ftevent-[0-9]{1,12}$",
            examples=["ftevent-42"],
            description="the id of the last event already seen: the list goes on with older events, the stream "
            "with newer ones",
        ),
    ] = None,
    limit: Annotated[int, limit_query(10000, "events of the list (not the stream)")] = 20,
    stream: Annotated[bool, Query(description="live server-sent events instead of a page of the list")] = False,
    # `str` with a None default, not `str | None`: a header is text, and a `null` in its schema would document
    # the text "null" as valid. Any text is taken: the SSE standard makes it opaque to the client, and only our
    # own ids mean anything (app/event_stream.resume_point)
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            description="with stream=true: resume after this event (EventSource sends it when it reconnects); "
            "wins over `after`; a value that is not an event id (ftevent-N) is ignored",
        ),
    ] = None,
) -> EventList | EventSourceResponse:
    if stream:
        job_id = job.id
        # End the request's read-only transaction: its connection goes back to the pool now, not when the
        # stream ends; the stream reads with short sessions of its own.
        session.rollback()
        return event_stream_response(stream_sessions, job_id, resume_point(after, last_event_id))
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
    after: Annotated[str | None, after_query("ftckpt-abc123")] = None,
    limit: Annotated[int, limit_query(1000, "checkpoints")] = 10,
) -> CheckpointList:
    rows, has_more = page_of(session, Checkpoint, [Checkpoint.job_id == job.id], after, limit)
    return CheckpointList(**list_page([checkpoint_public(r, job) for r in rows], has_more))
