"""A job's rows: read from this host's copy of the uploaded file, and tokenized once per (file, tokenizer,
max_seq_length, format), the result kept in the object store for every later attempt, candidate and host
(worker/training/tokenized.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from itertools import islice
from pathlib import Path

from app.core.local_cache import LocalCache
from app.core.object_store import StoreError
from app.core.storage import tokenized_key, upload_key
from app.core.tables import File
from app.datasets import iter_records
from worker.child.job_context import UserError

log = logging.getLogger("ftaas.child")


def file_copy(cache: LocalCache, file_row: File) -> Path:
    """This host's copy of the uploaded file, fetched from the store and checked against its SHA-256."""
    try:
        return cache.fetch(upload_key(file_row.storage_name), sha256=file_row.sha256)
    except FileNotFoundError as exc:
        raise UserError("file_missing", f"file {file_row.id} is no longer stored") from exc


def iter_file(path: Path, file_row: File) -> Iterator[tuple[int, dict]]:
    """The file's (line, record)s, streamed: a problem found at training names its line."""
    return iter_records(
        path,
        file_row.format,
        column_mapping=file_row.column_mapping,
        completion_separator=file_row.completion_separator,
        with_lines=True,
    )


def records_at(path: Path, file_row: File, wanted: list[int]) -> list[tuple[int, dict]]:
    """The (line, record)s of the row numbers `wanted` (ascending), reading no further than the last of them: the
    evaluation rows of a million-row file are near its start, spread by the seeded split."""
    out, want = [], iter(wanted)
    nxt = next(want, None)
    for i, item in enumerate(iter_file(path, file_row)):
        if nxt is None:
            break
        if i == nxt:
            out.append(item)
            nxt = next(want, None)
    return out


def split_rows(cache: LocalCache, fmt, spec, job, files: tuple, train_path: Path, num_rows: int):
    """(training row numbers, validation (line, record)s, test (line, record)s) of a job whose `files` are (training,
    validation or None, test or None). Test rows are carved off the training file first (their own seed), so that no
    later choice, the validation split included, can see them; the validation split is then the one it always was
    when there are no test rows. Evaluation rows are read up to evaluation.max_rows."""
    import numpy as np

    from worker.training.data import seed_of_test_rows, split_indices

    train_file, val_file, test_file = files
    max_rows, pref = spec.evaluation.max_rows, spec.preference

    def file_rows(file_row):
        rows = list(islice(iter_file(file_copy(cache, file_row), file_row), max_rows))
        tokenized(fmt, rows, file_row, job.model, pref)  # names a bad row's line
        return rows

    pool = np.arange(num_rows)
    test_rows: list = []
    if test_file is not None:
        test_rows = file_rows(test_file)
    elif spec.training.test_split > 0:
        rest, carved = split_indices(num_rows, spec.training.test_split, seed_of_test_rows(job.seed))
        pool = np.asarray(rest, dtype=np.int64)
        test_rows = records_at(train_path, train_file, carved[:max_rows])
    if val_file is not None:
        return pool, file_rows(val_file), test_rows
    kept, held = split_indices(len(pool), spec.training.validation_split, job.seed)
    wanted = [int(pool[i]) for i in held[:max_rows]]
    val_rows = records_at(train_path, train_file, wanted) if len(pool) > 1 else []
    return pool[np.asarray(kept, dtype=np.int64)], val_rows, test_rows


def chat_error(exc, file_id: str, model: str) -> UserError:
    where = f"line {exc.line}" if exc.line is not None else "a row"
    where += f", field {exc.field}" if exc.field else ""
    return UserError("invalid_training_row", f"file {file_id}, {where}: {exc.message} (model {model})")


def tokenized(fmt, rows: Iterable[tuple[int, dict]], file_row: File, model: str, preference: bool, spill_dir=None):
    """tokenize_rows, a row the model's chat template cannot render failing the job with its file, line and field."""
    from worker.training.data import ChatTemplateError
    from worker.training.tokenized import tokenize_rows

    try:
        return tokenize_rows(fmt, rows, preference, spill_dir)
    except ChatTemplateError as exc:
        raise chat_error(exc, file_row.id, model) from exc


def load_tokens(
    cache: LocalCache,
    path: Path,
    file_row: File,
    fmt,
    preference: bool,
    model: str,
    on_progress: Callable[[int], None] = lambda rows: None,
) -> tuple:
    """(TokenizedRows of the whole file, what happened: a sentence for the job's events). Read back from the store
    when any attempt of any job tokenized this file so before; otherwise tokenized here and stored. The store
    being away costs only the reuse: a failed read or write is logged and the rows are tokenized here."""
    from worker.training.tokenized import DamagedTokens, TokenizedRows, fingerprint

    options = {
        "format": file_row.format,
        "column_mapping": file_row.column_mapping,
        "completion_separator": file_row.completion_separator,
    }
    made_by = fingerprint(fmt.tok, fmt.max_len, file_row.sha256, options, 1 + preference)
    key = tokenized_key(file_row.storage_name, made_by)
    t = time.monotonic()
    with suppress(FileNotFoundError):
        try:
            tokens = TokenizedRows.load(cache.fetch(key))
            took = time.monotonic() - t
            return tokens, f"Tokenized rows read back from the store ({tokens.num_rows:,} rows, {took:.1f}s)"
        except (DamagedTokens, StoreError) as exc:
            log.warning("tokenized rows %s unusable, tokenizing again: %s", key, exc)
    t, local = time.monotonic(), cache.path(key)
    local.parent.mkdir(parents=True, exist_ok=True)
    tokens = tokenized(fmt, _counted(iter_file(path, file_row), on_progress), file_row, model, preference, local.parent)
    took = time.monotonic() - t
    try:
        tokens.save(local)
        cache.push(local)
    except (StoreError, OSError) as exc:  # a full disk or an away store: this attempt trains all the same
        log.warning("tokenized rows not stored for reuse: %s", exc)
    return tokens, (
        f"Tokenized {tokens.num_rows:,} rows ({len(tokens.ids):,} tokens) in {took:.1f}s, "
        f"{len(tokens.ids) / max(took, 1e-9):,.0f} tokens/s; kept in the store for later attempts and jobs"
    )


def _counted(rows: Iterator, on_progress: Callable[[int], None], every: int = 4096) -> Iterator:
    for n, item in enumerate(rows, 1):
        if n % every == 0:
            on_progress(n)
        yield item
