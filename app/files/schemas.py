"""Response shapes of files (OpenAI's file object, with ftaas' format, shape and size figures)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from app.api.schemas import ListPage


class FilePublic(BaseModel):
    object: Literal["file"] = "file"
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    format: str
    shape: str
    num_rows: int
    token_estimate: int
    sha256: str
    column_mapping: dict[str, str] | None = None
    completion_separator: str | None = None


class FileList(ListPage):
    data: list[FilePublic]


class FileDeleted(BaseModel):
    object: Literal["file"] = "file"
    id: str
    deleted: bool = True
