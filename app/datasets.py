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

import csv
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PureWindowsPath

SHAPES = ("chat", "prompt_completion", "instruction", "text")
FORMATS = ("jsonl", "json", "csv", "parquet")
MAPPING_TARGETS = ("prompt", "completion", "instruction", "input", "output", "text", "messages")
ROLES = ("system", "user", "assistant")

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
# Keys whose presence marks a row as a given shape; checked in SHAPES order (the priority on overlap).
_SHAPE_KEYS = {
    "chat": {"messages"},
    "prompt_completion": {"prompt", "completion"},
    "instruction": {"instruction", "output"},
    "text": {"text"},
}
_EXPECTED_SHAPES = (
    "chat {messages}, prompt_completion {prompt, completion}, instruction {instruction, input?, output}, text {text}"
)


@dataclass(frozen=True)
class RowError:
    line: int | None  # 1-based line / record number, None for file-level problems
    field: str | None  # the field/column at fault, None if the row as a whole
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


class DatasetValidationError(Exception):
    """``errors`` holds the first errors (at most max_errors); ``total`` counts all of them."""

    def __init__(self, errors: list[RowError], total: int | None = None):
        self.errors = list(errors)
        self.total = max(total or 0, len(self.errors))
        super().__init__(self._summary())

    def _summary(self) -> str:
        if not self.errors:
            return "invalid dataset"
        first = self.errors[0]
        if self.total == 1 and first.line is None:
            return first.message
        noun = "invalid row" if first.line is not None else "error"
        plural = "" if self.total == 1 else "s"
        return f"{self.total} {noun}{plural}; first: {first}"


@dataclass(frozen=True)
class DatasetSummary:
    format: str  # one of FORMATS
    shape: str  # one of SHAPES, after mapping/separator (instruction stays "instruction")
    num_rows: int
    token_estimate: int
    columns: list[str]  # source column names seen in the first row


class _RowProblem(Exception):
    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------------------
# Format detection and option checks


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


def check_column_mapping(mapping: dict | None) -> None:
    """Raise ValueError (the API answers 400 on field ``column_mapping``) for a malformed mapping."""
    if mapping is None:
        return
    if not isinstance(mapping, dict):
        # ValueError, not TypeError: the API turns ValueError into a 400 on field column_mapping.
        raise ValueError("column_mapping must map source column -> target field")  # noqa: TRY004
    for source, target in mapping.items():
        if not isinstance(source, str) or not source:
            raise ValueError(f"column_mapping: source column names must be non-empty strings, got {source!r}")
        if not isinstance(target, str) or target not in MAPPING_TARGETS:
            raise ValueError(
                f"column_mapping: invalid target {target!r} for column {source!r}; "
                f"expected one of {', '.join(MAPPING_TARGETS)}"
            )
    targets = list(mapping.values())
    duplicated = sorted({t for t in targets if targets.count(t) > 1})
    if duplicated:
        raise ValueError(f"column_mapping: several columns map to {duplicated[0]!r}")


def _check_separator(separator: str | None) -> None:
    if separator is not None and (not isinstance(separator, str) or not separator):
        raise ValueError("completion_separator must be a non-empty string")


# ---------------------------------------------------------------------------------------------------
# Readers: each yields (line, row dict) or RowError


def _read_rows(path, fmt: str, delimiter: str, max_line_bytes: int) -> Iterator:
    if fmt == "jsonl":
        return _read_jsonl(path, max_line_bytes)
    if fmt == "json":
        return _read_json(path)
    if fmt == "csv":
        return _read_csv(path, delimiter, max_line_bytes)
    if fmt == "parquet":
        return _read_parquet(path)
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
    if not isinstance(obj, dict):
        return RowError(lineno, None, f"expected a JSON object, got {_type_name(obj)}")
    return lineno, obj


def _read_json(path) -> Iterator:
    # A JSON array cannot be parsed incrementally with the stdlib; loading it whole is accepted.
    with open(path, "rb") as f:
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
    duplicated = sorted({c for c in header if header.count(c) > 1})
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


def _read_parquet(path) -> Iterator:
    import pyarrow.parquet as pq  # lazy: only Parquet uploads pay for the import

    # Any failure of pyarrow on user data (ArrowInvalid, OSError, NotImplementedError, ...) must become
    # a file-level error, never an exception escaping into the API: hence the broad excepts.
    with open(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001
            yield RowError(None, None, f"not a readable Parquet file: {exc}")
            return
        line = 0
        try:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    line += 1
                    yield line, row
        except Exception as exc:  # noqa: BLE001
            yield RowError(line + 1, None, f"cannot read Parquet data: {exc}")


# ---------------------------------------------------------------------------------------------------
# Normalisation


def format_instruction(instruction: str, input: str = "") -> str:
    """The Alpaca prompt template; the Input section only when ``input`` is non-empty."""
    if input and input.strip():
        return (
            "Below is an instruction that describes a task, paired with an input that provides further "
            "context. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    return (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        f"the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    )


def _string(row: dict, key: str, *, name: str | None = None, optional: bool = False, non_empty: bool = False) -> str:
    name = name or key
    value = row.get(key)
    if value is None and optional:  # an absent or null optional field (nullable Parquet column)
        return ""
    if key not in row:
        raise _RowProblem(name, "missing field")
    if not isinstance(value, str):
        raise _RowProblem(name, f"must be a string, got {_type_name(value)}")
    if non_empty and not value.strip():
        raise _RowProblem(name, "must not be empty")
    return value


def _chat(row: dict) -> dict:
    messages = row["messages"]
    if isinstance(messages, str):  # a CSV/Parquet string column holding the JSON list
        try:
            messages = json.loads(messages)
        except ValueError:
            pass
    if not isinstance(messages, list):
        raise _RowProblem("messages", f"must be an array of messages, got {_type_name(messages)}")
    if not messages:
        raise _RowProblem("messages", "must contain at least one message")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _RowProblem(where, f"must be an object with role and content, got {_type_name(message)}")
        role = message.get("role")
        if "role" not in message:
            raise _RowProblem(f"{where}.role", "missing field")
        if not isinstance(role, str) or role not in ROLES:
            raise _RowProblem(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {repr(role)[:40]}")
        content = _string(message, "content", name=f"{where}.content", non_empty=role == "assistant")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise _RowProblem("messages", "must contain at least one assistant message")
    return {"messages": out}


def _prompt_completion(row: dict) -> dict:
    return {"prompt": _string(row, "prompt"), "completion": _string(row, "completion", non_empty=True)}


def _instruction(row: dict) -> dict:
    instruction = _string(row, "instruction", non_empty=True)
    input_ = _string(row, "input", optional=True)
    output = _string(row, "output", non_empty=True)
    return {"prompt": format_instruction(instruction, input_), "completion": output}


def _text(row: dict) -> dict:
    return {"text": _string(row, "text", non_empty=True)}


_VALIDATORS = {"chat": _chat, "prompt_completion": _prompt_completion, "instruction": _instruction, "text": _text}


def _split_text(text: str, separator: str) -> dict:
    """Split at the LAST separator: the prompt keeps the separator, the completion is the rest."""
    cut = text.rfind(separator)
    if cut < 0:
        raise _RowProblem("text", f"does not contain the completion separator {separator!r}")
    cut += len(separator)
    if not text[cut:].strip():
        raise _RowProblem("text", f"has an empty completion after the completion separator {separator!r}")
    return {"prompt": text[:cut], "completion": text[cut:]}


class _Normalizer:
    """Maps, validates and normalises rows; the file's shape is fixed by the first valid row."""

    def __init__(self, mapping: dict | None, separator: str | None):
        self.mapping = mapping or None
        self.source_of = {target: source for source, target in (mapping or {}).items()}
        self.separator = separator
        self.shape: str | None = None
        self.shape_line: int | None = None

    @property
    def summary_shape(self) -> str:
        if self.shape == "text" and self.separator is not None:
            return "prompt_completion"
        return self.shape or "text"

    def __call__(self, line: int, row: dict) -> dict | RowError:
        if self.mapping:
            missing = next((source for source in self.mapping if source not in row), None)
            if missing is not None:
                return RowError(line, missing, f"missing column (mapped to {self.mapping[missing]!r})")
            row = {target: row[source] for source, target in self.mapping.items()}
        try:
            return self._normalize(line, row)
        except _RowProblem as problem:
            return RowError(line, self._source_field(problem.field), problem.message)

    def _normalize(self, line: int, row: dict) -> dict:
        shape = self._shape_of(row)
        if self.separator is not None and shape != "text":
            raise _RowProblem(None, f"completion_separator applies only to text records; this row is {shape!r}")
        record = _VALIDATORS[shape](row)
        if self.separator is not None:
            record = _split_text(record["text"], self.separator)
        if self.shape is None:
            self.shape, self.shape_line = shape, line
        return record

    def _shape_of(self, row: dict) -> str:
        present = [shape for shape in SHAPES if _SHAPE_KEYS[shape] & row.keys()]
        if not present:
            keys = ", ".join(repr(k) for k in list(row)[:20]) or "none"
            after = " after column_mapping" if self.mapping else ""
            raise _RowProblem(
                None, f"row matches no known shape: it has keys [{keys}]{after}; expected one of: {_EXPECTED_SHAPES}"
            )
        if self.shape is None or self.shape in present:
            return self.shape or present[0]
        raise _RowProblem(
            None,
            f"row has shape {present[0]!r} but the file's rows are {self.shape!r} "
            f"(decided by line {self.shape_line}); all rows must have the same shape",
        )

    def _source_field(self, field: str | None) -> str | None:
        """Name a mapped field by the user's source column, e.g. messages[0].role -> conv[0].role."""
        if field is None or not self.source_of:
            return field
        head = re.match(r"\w+", field).group()
        return self.source_of.get(head, head) + field[len(head) :]


def _token_estimate(record: dict) -> int:
    # Heuristic, not a tokenizer (none is loaded in the API process): BPE vocabularies of current LLMs
    # average roughly 4 UTF-8 bytes per token on English text, so tokens ~= ceil(utf8_bytes / 4) per
    # record. Good enough for quotas and ETAs; it under-counts code and non-Latin scripts.
    texts = [m["content"] for m in record["messages"]] if "messages" in record else record.values()
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)  # JSON may carry lone surrogates
    return -(-size // 4)


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
) -> DatasetSummary:
    """Read the stored upload once (streaming); raise DatasetValidationError listing the first errors."""
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
    for item in _read_rows(path, fmt, _csv_delimiter(filename, head), max_line_bytes):
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
    if total_errors:
        raise DatasetValidationError(errors, total_errors)
    if num_rows == 0:
        raise DatasetValidationError([RowError(None, None, "no records")])
    return DatasetSummary(fmt, normalizer.summary_shape, num_rows, tokens, columns or [])


def iter_records(
    path: str | os.PathLike,
    fmt: str,
    *,
    column_mapping: dict | None = None,
    completion_separator: str | None = None,
    max_line_bytes: int = 32 * 1024 * 1024,
) -> Iterator[dict]:
    """Yield normalised records of an already validated file; raise on the first bad row anyway.

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
        if not isinstance(item, RowError):
            item = normalizer(*item)
        if isinstance(item, RowError):
            raise DatasetValidationError([item])
        yield item
