"""File rows -> FilePublic."""

from __future__ import annotations

from app.api.presenting import unix
from app.core.tables import File
from app.files.schemas import FilePublic


def file_public(row: File) -> FilePublic:
    return FilePublic(
        id=row.id,
        bytes=row.bytes,
        created_at=unix(row.created_at),
        filename=row.filename,
        purpose=row.purpose,
        format=row.format,
        shape=row.shape,
        num_rows=row.num_rows,
        token_estimate=row.token_estimate,
        sha256=row.sha256,
        column_mapping=row.column_mapping,
        completion_separator=row.completion_separator,
    )
