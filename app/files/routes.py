"""/v1/files: upload (streamed to the object store under a server-made name, size-capped, validated), list, get,
content, delete, plus the file's leaderboard (in leaderboard.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Response, UploadFile

from app.api.deps import CurrentTenant, OwnedFile, SessionDep, SettingsDep
from app.api.downloads import REDIRECT_RESPONSE, Download, stored_download
from app.api.openapi import error_responses
from app.api.pagination import after_query, limit_query, list_page, page_of
from app.core.errors import ApiError
from app.core.object_store import StoreError, get_store
from app.core.storage import tokenized_prefix, upload_key
from app.core.tables import TERMINAL_STATUSES, File, Job, new_id, utcnow
from app.datasets import Bounds, DatasetValidationError, check_column_mapping, validate_file
from app.files.presenters import file_public
from app.files.schemas import FileDeleted, FileList, FilePublic

router = APIRouter(prefix="/v1/files", tags=["files"])

COPY_CHUNK = 1024 * 1024


def _parse_mapping(raw: str | None) -> dict[str, str] | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        mapping = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # malformed, a number past the integer-string limit, too deep
        raise ApiError(400, f"column_mapping is not valid JSON: {exc}", param="column_mapping") from exc
    try:
        check_column_mapping(mapping)
    except ValueError as exc:
        raise ApiError(400, f"Invalid column_mapping: {exc}", param="column_mapping") from exc
    return mapping


class _Incoming:
    """The spooled upload read once, in chunks: each goes to the object store's multipart upload and to a local
    copy the validation reads (Parquet needs random access), while the size is capped and the SHA-256 computed."""

    def __init__(self, upload: UploadFile, copy: Path, cap: int) -> None:
        self.upload, self.copy, self.cap = upload, copy, cap
        self.size, self.digest, self.too_large = 0, hashlib.sha256(), False

    def chunks(self) -> Iterator[bytes]:
        with open(self.copy, "xb") as out:
            while chunk := self.upload.file.read(COPY_CHUNK):
                self.size += len(chunk)
                if self.size > self.cap:
                    self.too_large = True  # stop here; the object made so far is deleted by the caller
                    return
                self.digest.update(chunk)
                out.write(chunk)
                yield chunk


def _store_upload(upload: UploadFile, key: str, copy: Path, cap: int) -> tuple[int, str]:
    """The upload stored at `key` and copied to `copy`; 413 as soon as it passes the cap."""
    incoming = _Incoming(upload, copy, cap)
    get_store().put_stream(key, incoming.chunks())  # a StoreError is the API's 503 (app/api/errors.py)
    if incoming.too_large:
        raise ApiError(413, f"File is larger than the {cap}-byte limit", param="file", code="file_too_large")
    return incoming.size, incoming.digest.hexdigest()


@router.post(
    "",
    response_model=FilePublic,
    responses=error_responses(413, 422),
    summary="Upload a dataset (JSONL, JSON array, CSV or Parquet); validated before it is kept",
)
def upload_file(
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    file: UploadFile,
    purpose: Annotated[Literal["fine-tune"], Form(description="what the file is for: fine-tune")] = "fine-tune",
    column_mapping: Annotated[
        str | None,
        Form(description='JSON object, source column -> field, e.g. {"question": "prompt", "sql": "completion"}'),
    ] = None,
    completion_separator: Annotated[
        str | None,
        Form(
            max_length=200,
            description='split {"text"} rows at the last occurrence into prompt and completion, e.g. "\\nA: "',
        ),
    ] = None,
) -> FilePublic:
    mapping = _parse_mapping(column_mapping)
    separator = completion_separator or None
    client_name = os.path.basename((file.filename or "upload").replace("\\", "/")).replace("\x00", "")[:255]

    file_id = new_id("file")
    # The stored name is the server-made id: nothing the client sends becomes a key or a path.
    key = upload_key(file_id)
    incoming = settings.cache_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    copy = incoming / file_id
    try:
        size, sha256 = _store_upload(file, key, copy, settings.max_upload_bytes)
        try:
            summary = validate_file(
                copy,
                client_name,
                column_mapping=mapping,
                completion_separator=separator,
                bounds=Bounds(max_rows=settings.max_upload_rows, max_decoded_bytes=4 * settings.max_upload_bytes),
                max_seconds=settings.upload_validation_s,
            )
        except DatasetValidationError as exc:
            raise ApiError(
                422,
                f"Invalid training file '{client_name}': {exc}",
                param="file",
                code="invalid_file",
                errors=[e.as_dict() for e in exc.errors],
            ) from exc
        row = File(
            id=file_id,
            tenant_id=tenant.id,
            filename=client_name or "upload",
            purpose=purpose,
            bytes=size,
            sha256=sha256,
            format=summary.format,
            shape=summary.shape,
            num_rows=summary.num_rows,
            token_estimate=summary.token_estimate,
            sql_schema_rows=summary.sql_schema_rows,
            first_line_without_sql_schema=summary.first_line_without_sql_schema,
            column_mapping=mapping,
            completion_separator=separator,
            storage_name=file_id,
        )
        session.add(row)
        session.commit()
    except BaseException:
        # Nothing half-stored: no row without its object, no object without its row.
        session.rollback()
        with suppress(StoreError):  # the store is away: the object is an orphan no row names, never served
            get_store().delete([key])
        raise
    finally:
        copy.unlink(missing_ok=True)
    return file_public(row)


@router.get("", response_model=FileList, summary="List your files, newest first")
def list_files(
    session: SessionDep,
    tenant: CurrentTenant,
    after: Annotated[str | None, after_query("file-abc123")] = None,
    limit: Annotated[int, limit_query(10000, "files")] = 100,
    purpose: Annotated[
        str | None, Query(openapi_examples={"fine-tune": {"summary": "training data", "value": "fine-tune"}})
    ] = None,
) -> FileList:
    filters = [File.tenant_id == tenant.id, File.deleted_at.is_(None)]
    if purpose:
        filters.append(File.purpose == purpose)
    rows, has_more = page_of(session, File, filters, after, limit)
    return FileList(**list_page([file_public(r) for r in rows], has_more))


@router.get("/{file_id}", response_model=FilePublic, summary="One file")
def get_file(file: OwnedFile) -> FilePublic:
    return file_public(file)


@router.get(
    "/{file_id}/content",
    response_class=Download,
    responses={
        200: {"description": "the file's bytes", "content": {"application/octet-stream": {}}},
        206: {
            "description": "the requested byte range(s)",
            "content": {"application/octet-stream": {}, "multipart/byteranges": {}},
        },
        **REDIRECT_RESPONSE,
        **error_responses(416, 500),
    },
    summary="The file's bytes, as uploaded (Range resumes a download)",
)
def file_content(file: OwnedFile, settings: SettingsDep) -> Response:
    return stored_download(
        settings,
        upload_key(file.storage_name),
        expected_bytes=file.bytes,
        sha256=file.sha256,
        media_type="application/octet-stream",
        filename=file.filename,
        missing=ApiError(404, f"The content of file {file.id} is missing from storage", code="file_content_missing"),
    )


@router.delete(
    "/{file_id}",
    response_model=FileDeleted,
    responses=error_responses(409),
    summary="Delete a file (jobs that used it keep their results)",
)
def delete_file(file: OwnedFile, session: SessionDep) -> FileDeleted:
    busy = (
        session.query(Job.id)
        .filter(
            (Job.training_file_id == file.id) | (Job.validation_file_id == file.id) | (Job.test_file_id == file.id),
            Job.status.notin_(TERMINAL_STATUSES),  # a paused job still needs it to resume
        )
        .first()
    )
    if busy is not None:
        raise ApiError(
            409, f"File is in use by job '{busy[0]}', which has not finished", param="file_id", code="file_in_use"
        )
    # Soft delete: finished jobs keep pointing at the row; the bytes go now.
    file.deleted_at = utcnow()
    session.commit()
    with suppress(StoreError):  # the row is deleted; an object the store kept is never served again
        get_store().delete_prefix(tokenized_prefix(file.storage_name))  # its tokens are its data too
    with suppress(StoreError):
        get_store().delete([upload_key(file.storage_name)])
    return FileDeleted(id=file.id)
