"""Uploads for the /v1/files tests: a request, JSONL bytes, what is stored, and the API's error shape."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func, select

from app.core.tables import File
from tests.conftest import TEST_ENV

ARTIFACTS_DIR = Path(TEST_ENV["FTAAS_ARTIFACTS_DIR"])
UPLOADS_DIR = ARTIFACTS_DIR / "files"
CAP = int(TEST_ENV["FTAAS_MAX_UPLOAD_BYTES"])

PC_JSONL = b'{"prompt": "2+2=", "completion": "4"}\n{"prompt": "3+3=", "completion": "6"}\n'


def upload(client, headers, filename: str, content: bytes, **form: str):
    return client.post("/v1/files", headers=headers, files={"file": (filename, content)}, data=form)


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def stored_names() -> set[str]:
    return {p.name for p in UPLOADS_DIR.iterdir()} if UPLOADS_DIR.is_dir() else set()


def file_row_count(db_session) -> int:
    return db_session.scalar(select(func.count()).select_from(File))


@contextmanager
def stores_nothing(db_session):
    """The block's requests leave no `files` row and no stored upload behind."""
    rows, names = file_row_count(db_session), stored_names()
    yield
    assert file_row_count(db_session) == rows
    assert stored_names() == names


def assert_error(response, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error
