"""Format detection and the per-format readers, each yielding ``(line, row_dict)`` or a ``RowError``."""

from __future__ import annotations

import collections
import csv
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PureWindowsPath

from app.datasets.errors import DatasetValidationError, RowError, _type_name

FORMATS = ("jsonl", "json", "csv", "parquet")

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 64 * 1024
_CSV_FIELD_LIMIT = 64 * 1024 * 1024  # the csv default (128 KiB) would reject long documents spuriously
_PARQUET_BATCH_ROWS = 256  # small batches bound memory when rows hold long documents
# A fine-tuning record needs a handful of fields (prompt/completion, messages, instruction/input/output,
# text): a file with thousands of columns is a mistake or an attack, refused before its rows are read.
MAX_COLUMNS = 256
# A .json array has to be parsed whole (several times its size in memory); larger data goes as .jsonl.
MAX_JSON_ARRAY_BYTES = 64 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------
# Format detection


def detect_format(filename: str, head: bytes) -> str:
    """Format from the client's filename extension (never used as a path), else from the first bytes."""
    ext = PureWindowsPath(filename or "").suffix.lower()  # handles both / and \ separators
    fmt = _EXTENSIONS.get(ext) or _sniff(head)
    if fmt is None:
        what = f"extension {ext!r}" if ext else "no extension"
        raise DatasetValidationError(
            [
                RowError(
                    None,
                    None,
                    f"unsupported file type ({what}, contents not recognised): "
                    "expected .jsonl, .ndjson, .json, .csv, .tsv or .parquet",
                )
            ]
        )
    return fmt


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.removeprefix(_BOM).lstrip()
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "jsonl"
    # Conservative: only a header-like first line (several short cells of at most a few words, and a
    # second row with as many fields) means CSV, so that prose with commas is not taken for CSV.
    complete = text[: text.rfind(b"\n") + 1] or text  # drop a line cut off by the sniff window
    try:
        lines = complete.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None
    delimiter = _delimiter_of(lines[0] if lines else "")
    try:
        rows = list(itertools.islice(csv.reader(lines, delimiter=delimiter), 2))
    except csv.Error:
        return None
    header = rows[0] if rows else []
    header_like = len(header) >= 2 and all(0 < len(c.strip()) <= 64 and len(c.split()) <= 4 for c in header)
    return "csv" if header_like and (len(rows) == 1 or len(rows[1]) == len(header)) else None


def _delimiter_of(line: str) -> str:
    return "\t" if line.count("\t") > line.count(",") else ","


def _csv_delimiter(name: str, head: bytes) -> str:
    """Tab for .tsv; otherwise whichever of tab/comma the header line has more of (comma on a tie).

    Sniffing even for .csv keeps validate_file (client filename) and iter_records (stored path, whatever
    its name) in agreement."""
    if PureWindowsPath(name).suffix.lower() == ".tsv":
        return "\t"
    return _delimiter_of(head.removeprefix(_BOM).split(b"\n", 1)[0].decode("utf-8", "replace"))


# ---------------------------------------------------------------------------------------------------
# Readers: each yields (line, row dict) or RowError


@dataclass(frozen=True)
class Bounds:
    """What an upload may cost to read, checked before the work it bounds (issue 14): rows in all, and for
    Parquet, whose pages decompress, the decoded bytes its metadata announces (a 17 KB file held 3 million
    dictionary-encoded rows; a 1.6 KB one a 30 MB string)."""

    max_rows: int = 1_000_000
    max_decoded_bytes: int = 2 * 1024**3
    max_decoded_ratio: int = 100  # decoded bytes per stored byte, past decoded_floor
    decoded_floor: int = 16 * 1024**2


def _read_rows(path, fmt: str, delimiter: str, max_line_bytes: int, bounds: Bounds | None = None) -> Iterator:
    """The rows of a file; `bounds` checked where a format announces them (None: a file already validated)."""
    if fmt == "jsonl":
        return _read_jsonl(path, max_line_bytes)
    if fmt == "json":
        return _read_json(path)
    if fmt == "csv":
        return _read_csv(path, delimiter, max_line_bytes)
    if fmt == "parquet":
        return _read_parquet(path, bounds)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _physical_lines(f, max_line_bytes: int) -> Iterator[tuple[int, str | RowError]]:
    """Decoded physical lines of a binary file, never holding much more than max_line_bytes.

    Decoding line by line is safe: no byte of a UTF-8 multi-byte sequence equals b"\\n"."""
    lineno = 0
    while raw := f.readline(max_line_bytes + 1):
        lineno += 1
        if lineno == 1:
            raw = raw.removeprefix(_BOM)
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the rest of the over-long line without keeping it
            yield lineno, RowError(lineno, None, f"line exceeds {max_line_bytes} bytes")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield lineno, RowError(lineno, None, f"invalid UTF-8 (byte {exc.start + 1} of the line)")
            continue
        yield lineno, text


def _read_jsonl(path, max_line_bytes: int) -> Iterator:
    seen = False
    with open(path, "rb") as f:
        for lineno, text in _physical_lines(f, max_line_bytes):
            if isinstance(text, RowError):
                seen = True
                yield text
            elif text.strip():
                seen = True
                yield _parse_object(lineno, text)
    if not seen:
        yield RowError(None, None, "file is empty")


def _parse_object(lineno: int, text: str):
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return RowError(lineno, None, f"malformed JSON: {exc.msg} (column {exc.colno})")
    except RecursionError:
        return RowError(lineno, None, "malformed JSON: nested too deeply")
    except ValueError as exc:  # a number past Python's integer-string limit (4300 digits)
        return RowError(lineno, None, f"malformed JSON: {exc}")
    if not isinstance(obj, dict):
        return RowError(lineno, None, f"expected a JSON object, got {_type_name(obj)}")
    return lineno, obj


def _read_json(path) -> Iterator:
    # A JSON array cannot be parsed incrementally with the stdlib: it is loaded whole, so its size is capped.
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size > MAX_JSON_ARRAY_BYTES:
            yield RowError(
                None,
                None,
                f"a .json array of {size:,} bytes is over the {MAX_JSON_ARRAY_BYTES:,}-byte limit for arrays "
                "(they are parsed whole); upload the records as .jsonl, one object per line",
            )
            return
        f.seek(0)
        data = f.read().removeprefix(_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        yield RowError(None, None, f"invalid UTF-8 on line {line}")
        return
    del data  # only the parsed objects are needed from here on: don't keep extra copies alive
    if not text.strip():
        yield RowError(None, None, "file is empty")
        return
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        yield RowError(None, None, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return
    except RecursionError:
        yield RowError(None, None, "malformed JSON: nested too deeply")
        return
    except ValueError as exc:  # a number past Python's integer-string limit (4300 digits)
        yield RowError(None, None, f"malformed JSON: {exc}")
        return
    del text
    if not isinstance(items, list):
        yield RowError(
            None,
            None,
            f"expected a JSON array of objects, got {_type_name(items)} "
            "(for one object per line, upload a .jsonl file)",
        )
        return
    for number, item in enumerate(items, 1):  # record N is reported as line N
        if isinstance(item, dict):
            yield number, item
        else:
            yield RowError(number, None, f"expected a JSON object, got {_type_name(item)}")


class _StopCsv(Exception):
    def __init__(self, error: RowError):
        self.error = error


def _read_csv(path, delimiter: str, max_line_bytes: int) -> Iterator:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with open(path, "rb") as f:
        # csv.reader counts the strings it pulls, so feeding it one physical line at a time makes
        # reader.line_num a physical line number even with quoted multi-line fields.
        # strict: a stray or unterminated quote is an error instead of silently swallowing later rows.
        lines = _csv_lines(_physical_lines(f, max_line_bytes))
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        try:
            yield from _csv_rows(reader)
        except _StopCsv as stop:  # bad UTF-8 / over-long line: the rest cannot be parsed reliably
            yield stop.error
        except csv.Error as exc:
            yield RowError(reader.line_num, None, f"malformed CSV: {exc}")


def _csv_lines(lines) -> Iterator[str]:
    for _, text in lines:
        if isinstance(text, RowError):
            raise _StopCsv(text)
        yield text


def _csv_rows(reader) -> Iterator:
    header = next((row for row in reader if row), None)
    if header is None:
        yield RowError(None, None, "file is empty")
        return
    if len(header) > MAX_COLUMNS:
        yield RowError(reader.line_num, None, f"the header has {len(header):,} columns; at most {MAX_COLUMNS}")
        return
    counts = collections.Counter(header)  # linear: header.count() per column was quadratic in the width
    duplicated = sorted(c for c, n in counts.items() if n > 1)
    if duplicated:
        yield RowError(reader.line_num, duplicated[0], "duplicate column name in the header")
        return
    previous = reader.line_num
    for fields in reader:
        start, previous = previous + 1, reader.line_num  # a row is reported at its first line
        if not fields:
            continue  # blank line
        if len(fields) != len(header):
            yield RowError(start, None, f"row has {len(fields)} fields but the header has {len(header)}")
            continue
        yield start, dict(zip(header, fields, strict=True))  # "" stays "", not missing


def _read_parquet(path, bounds: Bounds | None) -> Iterator:
    import pyarrow.parquet as pq  # lazy: only Parquet uploads pay for the import

    # Any failure of pyarrow on user data (ArrowInvalid, OSError, NotImplementedError, ...) must become
    # a file-level error, never an exception escaping into the API: hence the broad excepts.
    with open(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001
            yield RowError(None, None, f"not a readable Parquet file: {exc}")
            return
        refusal = _parquet_refusal(parquet) or (bounds and _parquet_too_large(parquet, os.path.getsize(path), bounds))
        if refusal:
            yield RowError(None, refusal[0], refusal[1])
            return
        line = 0
        try:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    line += 1
                    yield line, row
        except Exception as exc:  # noqa: BLE001
            yield RowError(line + 1, None, f"cannot read Parquet data: {exc}")


def _parquet_too_large(parquet, stored_bytes: int, bounds: Bounds) -> tuple[str | None, str] | None:
    """(None, reason) when the metadata announces more rows or decoded bytes than an upload may have."""
    meta = parquet.metadata
    if meta.num_rows > bounds.max_rows:
        return None, f"the file has {meta.num_rows:,} rows; at most {bounds.max_rows:,}"
    decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    allowed = min(bounds.max_decoded_bytes, max(bounds.decoded_floor, bounds.max_decoded_ratio * stored_bytes))
    if decoded > allowed:
        return None, (
            f"the file decodes to {decoded:,} bytes from {stored_bytes:,} stored; at most {allowed:,} "
            f"({bounds.max_decoded_ratio}x its size past {bounds.decoded_floor:,})"
        )
    return None


def _parquet_refusal(parquet) -> tuple[str | None, str] | None:
    """(column, reason) when the file's schema is refused before any row is read: too many columns, or an
    Arrow extension type (custom types rebuilt by code on read; old pyarrow even unpickled some). Checked on
    the raw metadata, so pyarrow never interprets the extension itself."""
    n = parquet.metadata.num_columns
    if n > MAX_COLUMNS:
        return None, f"the file has {n:,} columns; at most {MAX_COLUMNS}"
    import base64

    raw = (parquet.metadata.metadata or {}).get(b"ARROW:schema", b"")
    try:
        schema_bytes = base64.b64decode(raw, validate=False) if raw else b""
    except ValueError:
        schema_bytes = raw
    if b"ARROW:extension:name" in schema_bytes or b"ARROW:extension:name" in raw:
        return None, "Arrow extension types are not accepted; store the columns as plain strings"
    return None
