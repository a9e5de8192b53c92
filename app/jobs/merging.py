"""GET .../adapter?format=merged, the API's side: a LoRA or QLoRA job's base model with its adapter merged in,
bf16 safetensors, for serving engines that take no adapters.

Why built on request by a worker, once, and kept: the API never imports torch, so a worker does the merging. A
merged model is a whole copy of the base (a 1B model ~2.5 GB in bf16, an 8B one ~16 GB) where the adapter is
megabytes; writing one for every job and every evaluated checkpoint at packaging time would multiply the disk a
sweep takes by its candidates and slow every job's end, for a download most users never ask for. So the first
request answers 202 Accepted with Retry-After and puts a merge task on the training queue (a worker does it
between jobs, on its CPU); the archive is stored beside the adapter, and every later request downloads it, with
Range and its checksum like the adapter. A failed build is reported for FAILED_REPORTED_S, then a request builds
it again; a lost message or a dead build is sent again, so no request waits for ever. The worker's side (claim,
merge, finish) is worker/tasks/merges.py and worker/child/merge.py, through app/core/job_state.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import ApiError
from app.core.logs import REQUEST_ID
from app.core.object_store import get_store
from app.core.queue import enqueue_merge
from app.core.settings import Settings
from app.core.storage import JobFiles
from app.core.tables import Job, MergedModel, MergeStatus, as_utc, utcnow

MERGEABLE = ("lora", "qlora")
ASK_AGAIN_S = 10  # the Retry-After of a 202: a small model merges in seconds once a worker is free
FAILED_REPORTED_S = 300  # a failed build is answered with its reason this long; then a request builds it again
BUILD_PRESUMED_DEAD_S = 3600  # a build this old has lost its worker (an 8B model merges in minutes): send it again


def check_mergeable(job: Job) -> None:
    """Only LoRA and QLoRA adapters merge into their base's weights: a 400 naming `format` for the others."""
    kind = job.spec["adapter"]["type"]
    if kind in MERGEABLE:
        return
    if kind == "full":
        why = "its default download (format=adapter) is already a whole model: download it without format"
    else:
        why = f"a {kind} adapter adds virtual tokens instead of changing weights, so it has nothing to merge: "
        why += "download the adapter (format=adapter) and load it with peft"
    raise ApiError(
        400,
        f"format=merged is for LoRA and QLoRA jobs; job {job.id} is {kind}: {why}",
        param="format",
        code="invalid_value",
    )


def request_merged(session: Session, settings: Settings, job: Job, source: str) -> MergedModel:
    """The job's merged model of `source` ("adapter" or "step-<n>"): ready to download, or asked for (the row
    made and its task sent, once) and still queued or building. Raises 500 for a build that failed recently and
    503 when the task queue is unreachable."""
    row = session.scalar(select(MergedModel).where(MergedModel.job_id == job.id, MergedModel.source == source))
    if row is None:
        row = _first_request(session, job.id, source)
    now = utcnow()
    if row.status == MergeStatus.ready:
        if get_store().size(JobFiles(job.id, settings).key(row.archive_name)) is not None:
            return row
        _ask_again(session, row)  # its archive is gone from storage: build it again
    elif row.status == MergeStatus.failed:
        wait = FAILED_REPORTED_S - (now - as_utc(row.finished_at)).total_seconds()
        if wait > 0:
            reason = (row.error or {}).get("message", "unknown")
            raise ApiError(
                500,
                f"Merging the adapter of job {job.id} into its base failed: {reason}. "
                f"A request after {int(wait) + 1} s builds it again",
                code="merge_failed",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        _ask_again(session, row)
    elif row.status == MergeStatus.building and now - as_utc(row.started_at) > timedelta(seconds=BUILD_PRESUMED_DEAD_S):
        _ask_again(session, row)
    if row.status == MergeStatus.queued and _due(row, now, settings):
        # Committed before it is sent: the worker must find the row. A lost message is sent again after
        # requeue_queued_after_s, as a queued job is; duplicates do nothing (the worker claims the row).
        if not enqueue_merge(row.id):
            raise ApiError(
                503,
                "The task queue is unreachable, so the merge could not be started; ask again shortly",
                code="queue_unavailable",
                headers={"Retry-After": str(ASK_AGAIN_S)},
            )
        row.sent_at = now
        session.commit()
    return row


def _first_request(session: Session, job_id: str, source: str) -> MergedModel:
    row = MergedModel(job_id=job_id, source=source, status=MergeStatus.queued, request_id=REQUEST_ID.get())
    session.add(row)
    try:
        session.commit()
        return row
    except IntegrityError:  # a concurrent first request made it: that one is the row
        session.rollback()
        return session.scalar(select(MergedModel).where(MergedModel.job_id == job_id, MergedModel.source == source))


def _ask_again(session: Session, row: MergedModel) -> None:
    row.status, row.sent_at, row.error, row.request_id = MergeStatus.queued, None, None, REQUEST_ID.get()
    session.commit()


def _due(row: MergedModel, now: datetime, settings: Settings) -> bool:
    return row.sent_at is None or now - as_utc(row.sent_at) > timedelta(seconds=settings.requeue_queued_after_s)


def pending_message(row: MergedModel) -> str:
    if row.status == MergeStatus.building:
        return f"A worker is merging the adapter into its base model; ask again in {ASK_AGAIN_S} s"
    return f"The merge is queued for a worker (behind the training jobs on its queue); ask again in {ASK_AGAIN_S} s"
