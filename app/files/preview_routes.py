"""/v1/files/{file_id}/preview: the file's first rows as a model's worker will train them, before a GPU is paid
for: the text as trained (chat template included), its token ids, which tokens are trained, and how many rows of
the file max_seq_length cuts or drops. Made by the preview worker (`ftaas preview-worker`, worker/tasks/preview.py):
the API never loads a tokenizer, as that needs transformers, which imports torch."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from app.api.admission import END_TURN, Refused, gate
from app.api.deps import CurrentTenant, OwnedFile, SessionDep, SettingsDep
from app.api.openapi import error_responses
from app.api.presenting import unix
from app.core.errors import ApiError, not_found
from app.core.tables import Preview, PreviewStatus
from app.files import previews
from app.files.preview_schemas import PreviewCreate, PreviewError, PreviewPublic, PreviewRow

router = APIRouter(prefix="/v1/files", tags=["files"])

POLL_S = 0.5


def preview_public(row: Preview) -> PreviewPublic:
    result = row.result or {}
    return PreviewPublic(
        id=row.id,
        created_at=unix(row.created_at),
        finished_at=unix(row.finished_at),
        file_id=row.file_id,
        model=row.model,
        max_seq_length=row.max_seq_length,
        status=row.status,
        rows=[PreviewRow(**r) for r in result["rows"]] if "rows" in result else None,
        rows_counted=result.get("rows_counted"),
        rows_cut=result.get("rows_cut"),
        rows_dropped=result.get("rows_dropped"),
        whole_file=result.get("whole_file"),
        error=PreviewError(**row.error) if row.error else None,
    )


def answer(row: Preview) -> Response:
    if row.status == PreviewStatus.failed and row.error and row.error.get("code") == "invalid_training_row":
        error = row.error
        raise ApiError(
            422,
            error["message"],
            param=error.get("param"),
            code=error["code"],
            errors=[{"line": error.get("line"), "field": error.get("param"), "message": error["message"]}],
        )
    body = preview_public(row).model_dump(mode="json")
    if row.status in previews.FINISHED:
        return JSONResponse(body)
    location = f"/v1/files/{row.file_id}/previews/{row.id}"
    return JSONResponse(body, status_code=202, headers={"Retry-After": "1", "Location": location})


@router.post(
    "/{file_id}/preview",
    response_model=PreviewPublic,
    responses={
        202: {
            "description": "Still being made: GET the Location (Retry-After seconds) for the answer",
            "model": PreviewPublic,
        },
        **error_responses(404, 422),
    },
    summary="The file's first rows as a model will train them: text, token ids, trained tokens, rows cut or dropped",
    description="Answered by the preview worker within FTAAS_PREVIEW_WAIT_S (a 202 with a Location to poll past "
    "it); the same file, model, max_seq_length and rows are answered from the last preview at once. A row the "
    "model's chat template cannot render (tools on a template without tool support, a role it refuses) is a 422 "
    "naming its line and field, as the job would fail on it.",
)
async def create_preview(
    request: Request,
    body: PreviewCreate,
    file: OwnedFile,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
) -> Response:
    row = await run_in_threadpool(previews.find_or_create, session, tenant, file, body, settings)
    await run_in_threadpool(session.close)  # the wait below holds no connection
    if row.status not in previews.FINISHED and settings.preview_wait_s > 0:
        row = await _wait(request, row, tenant.id, settings.preview_wait_s)
    return answer(row)


async def _wait(request: Request, row: Preview, share: str, wait_s: float) -> Preview:
    """Poll the row until it is finished or `wait_s` passed, reading with turns of its own in the tenant's share
    (like a live stream's reads), not holding the request's: a slow preview must not keep other requests out. A
    read refused a turn (the process is full) ends the wait: the answer is then the 202 to poll."""
    request.scope.get(END_TURN, lambda: None)()
    deadline = time.monotonic() + wait_s
    while row.status not in previews.FINISHED and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        try:
            async with gate().turn(share):
                current = await run_in_threadpool(previews.read, row.id)
        except Refused:
            return row
        if current is None:
            raise not_found("preview", row.id, "preview_id")
        row = current
    return row


@router.get(
    "/{file_id}/previews/{preview_id}",
    response_model=PreviewPublic,
    summary="A preview: queued, running, or its rows",
)
def get_preview(
    file: OwnedFile, session: SessionDep, tenant: CurrentTenant, preview_id: str = Path(max_length=64)
) -> PreviewPublic:
    row = previews.owned_preview(session, tenant, file, preview_id)
    if row is None:
        raise not_found("preview", preview_id, "preview_id")
    return preview_public(row)
