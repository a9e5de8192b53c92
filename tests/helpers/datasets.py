"""Dataset files for the app.datasets tests: a JSONL file from rows, and the errors validation reports on one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.datasets import DatasetValidationError, RowError, validate_file


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), "utf-8")
    return path


def errors_of(path: Path, filename: str | None = None, **kwargs) -> list[RowError]:
    with pytest.raises(DatasetValidationError) as info:
        validate_file(path, filename or path.name, **kwargs)
    return info.value.errors


def one_error(path: Path, filename: str | None = None, **kwargs) -> tuple:
    errors = errors_of(path, filename, **kwargs)
    assert len(errors) == 1, errors
    return errors[0].line, errors[0].field, errors[0].message
