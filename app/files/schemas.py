"""Response shapes of files (OpenAI's file object, with ftaas' format, shape and size figures)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from app.api.schemas import ListPage


class FilePublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "object": "file",
                    "id": "file-abc123",
                    "bytes": 10143,
                    "created_at": 1796311311,
                    "filename": "train.jsonl",
                    "purpose": "fine-tune",
                    "status": "processed",
                    "status_details": None,
                    "format": "jsonl",
                    "shape": "text",
                    "num_rows": 40,
                    "token_estimate": 2390,
                    "sha256": "460cb3b5f967aa1d41203ea2cfc01bfb7c2feaac516651b2a20455331c0129a3",
                    "column_mapping": None,
                    "completion_separator": None,
                }
            ]
        }
    )

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
