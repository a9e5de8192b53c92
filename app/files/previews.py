"""Previews as the API makes them: the one a request asks for is found (a finished preview answers as is: a file
never changes) or added and sent to the preview worker's queue; the route then waits for it a while without
holding its admission turn. The worker's side is worker/tasks/preview.py."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import get_sessionmaker
from app.core.errors import error_body
from app.core.job_state import finish_preview
from app.core.queue import enqueue_preview
from app.core.settings import Settings
from app.core.tables import File, Preview, PreviewStatus, Tenant, utcnow
from app.datasets import FORMAT_VERSION
from app.files.preview_schemas import PreviewCreate
from app.jobs.service import check_model

# A queued or running preview younger than this is waited for rather than asked for again; an older one was lost
# (its worker died mid-way) and is made anew.
IN_FLIGHT_S = 600
FINISHED = (PreviewStatus.succeeded, PreviewStatus.failed)


def find_or_create(session: Session, tenant: Tenant, file: File, body: PreviewCreate, settings: Settings) -> Preview:
    source = check_model(settings, body.model)
    same = (
        Preview.tenant_id == tenant.id,
        Preview.file_id == file.id,
        Preview.model == body.model,
        Preview.model_source == source,
        Preview.max_seq_length == body.max_seq_length,
        Preview.num_rows == body.rows,
    )
    fresh = Preview.created_at > utcnow() - timedelta(seconds=IN_FLIGHT_S)
    reusable = (Preview.status == PreviewStatus.succeeded) | (
        Preview.status.in_((PreviewStatus.queued, PreviewStatus.running)) & fresh
    )
    found = session.scalars(select(Preview).where(*same, reusable).order_by(Preview.created_at.desc()).limit(1)).first()
    current = found is not None and (
        found.status != PreviewStatus.succeeded or (found.result or {}).get("format_version") == FORMAT_VERSION
    )
    if current:
        return found
    row = Preview(
        tenant_id=tenant.id,
        file_id=file.id,
        model=body.model,
        model_source=source,
        max_seq_length=body.max_seq_length,
        num_rows=body.rows,
        status=PreviewStatus.queued,
    )
    session.add(row)
    session.commit()
    if not enqueue_preview(row.id):
        message = "the job queue is unreachable; try again shortly"
        finish_preview(
            session,
            row.id,
            PreviewStatus.failed,
            error=error_body("queue_unavailable", message),
            from_statuses=(PreviewStatus.queued,),
        )
        session.refresh(row)
    return row


def read(preview_id: str) -> Preview | None:
    """The preview as it is now, detached, from a short session of its own (the waiting route holds none); None
    once it is gone (its file was deleted meanwhile)."""
    with get_sessionmaker()() as session:
        row = session.get(Preview, preview_id)
        if row is not None:
            session.expunge(row)
        return row


def owned_preview(session: Session, tenant: Tenant, file: File, preview_id: str) -> Preview | None:
    return session.scalar(
        select(Preview).where(Preview.id == preview_id, Preview.file_id == file.id, Preview.tenant_id == tenant.id)
    )
