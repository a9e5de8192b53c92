"""Training-dataset validation and normalisation.

Runs inside the API process, so it uses only the stdlib (plus pyarrow, imported lazily for Parquet):
never torch/transformers here.

* Upload: ``validate_file`` streams the stored upload once and returns a ``DatasetSummary`` or raises
  ``DatasetValidationError`` carrying the first errors by line and field (the API answers 422).
* Training: ``iter_records`` streams the same file and yields normalised records (plain dicts).

Each reader yields ``(line, row_dict)`` or a ``RowError``; ``_Normalizer`` turns a row into a normalised
record (or a ``RowError``). Both public entry points share that pipeline, so what validated is exactly
what the worker trains on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from app.datasets.chat import ROLES
from app.datasets.errors import DatasetValidationError, RowError
from app.datasets.readers import _BOM, _SNIFF_BYTES, FORMATS, Bounds, _csv_delimiter, _read_rows, detect_format
from app.datasets.records import (
    MAPPING_TARGETS,
    SHAPES,
    _check_separator,
    _Normalizer,
    _token_estimate,
    check_column_mapping,
    format_instruction,
)
from app.datasets.sql_rows import record_sql_schema

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "Bounds",
    "MAPPING_TARGETS",
    "ROLES",
    "SHAPES",
    "DatasetSummary",
    "DatasetValidationError",
    "RowError",
    "check_column_mapping",
    "detect_format",
    "format_instruction",
    "iter_records",
    "validate_file",
]


# The version of how the worker turns records into token ids and labels (worker/training/data.py, chat_format.py).
# A stored preview shows one version's formatting: bump this when that changes, and older previews are made again.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class DatasetSummary:
    format: str  # one of FORMATS
    shape: str  # one of SHAPES, after mapping/separator (instruction stays "instruction")
    num_rows: int
    token_estimate: int
    columns: list[str]  # source column names seen in the first row
    sql_schema_rows: int = 0  # rows carrying CREATE TABLE statements (app/datasets/sql_rows.py)
    first_line_without_sql_schema: int | None = None


# ---------------------------------------------------------------------------------------------------
# Public entry points


def validate_file(
    path: str | os.PathLike,
    filename: str,
    *,
    column_mapping: dict | None = None,
    completion_separator: str | None = None,
    max_errors: int = 20,
    max_line_bytes: int = 32 * 1024 * 1024,
    bounds: Bounds = Bounds(),
    max_seconds: float | None = None,
) -> DatasetSummary:
    """Read the stored upload once (streaming); raise DatasetValidationError listing the first errors, or naming
    the bound the file passed (rows, decoded bytes, `max_seconds` of reading)."""
    check_column_mapping(column_mapping)
    _check_separator(completion_separator)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.removeprefix(_BOM):
        raise DatasetValidationError([RowError(None, None, "file is empty")])
    fmt = detect_format(filename, head)
    normalizer = _Normalizer(column_mapping, completion_separator)
    errors: list[RowError] = []
    total_errors = num_rows = tokens = 0
    columns: list[str] | None = None
    schema_rows, no_schema_line = 0, None
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    for item in _read_rows(path, fmt, _csv_delimiter(filename, head), max_line_bytes, bounds):
        if num_rows + total_errors >= bounds.max_rows:
            raise DatasetValidationError([RowError(None, None, f"the file has more than {bounds.max_rows:,} rows")])
        if deadline is not None and (num_rows + total_errors) % 1000 == 0 and time.monotonic() > deadline:
            raise DatasetValidationError(
                [RowError(None, None, f"reading the file took longer than {max_seconds:g} s; upload smaller files")]
            )
        if not isinstance(item, RowError):
            line, row = item
            if columns is None:
                columns = [str(key) for key in row]
            item = normalizer(line, row)
        if isinstance(item, RowError):
            total_errors += 1
            if len(errors) < max(1, max_errors):
                errors.append(item)
            continue
        num_rows += 1
        tokens += _token_estimate(item)
        if record_sql_schema(item) is not None:
            schema_rows += 1
        elif no_schema_line is None:
            no_schema_line = line
    if total_errors:
        raise DatasetValidationError(errors, total_errors)
    if num_rows == 0:
        raise DatasetValidationError([RowError(None, None, "no records")])
    return DatasetSummary(fmt, normalizer.summary_shape, num_rows, tokens, columns or [], schema_rows, no_schema_line)


def iter_records(
    path: str | os.PathLike,
    fmt: str,
    *,
    column_mapping: dict | None = None,
    completion_separator: str | None = None,
    max_line_bytes: int = 32 * 1024 * 1024,
    with_lines: bool = False,
) -> Iterator[dict] | Iterator[tuple[int, dict]]:
    """Yield normalised records of an already validated file (with `with_lines`, as (line, record), so that a
    problem found later, at training, names the line); raise on the first bad row anyway.

    For csv the delimiter comes from the path's extension (.tsv = tab), else from the header line."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    check_column_mapping(column_mapping)
    _check_separator(completion_separator)
    delimiter = ","
    if fmt == "csv":
        with open(path, "rb") as f:
            delimiter = _csv_delimiter(os.fspath(path), f.read(_SNIFF_BYTES))
    normalizer = _Normalizer(column_mapping, completion_separator)
    for item in _read_rows(path, fmt, delimiter, max_line_bytes):
        line = None if isinstance(item, RowError) else item[0]
        if not isinstance(item, RowError):
            item = normalizer(*item)
        if isinstance(item, RowError):
            raise DatasetValidationError([item])
        yield (line, item) if with_lines else item
