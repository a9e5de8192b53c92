"""A file's first rows as a model's worker will train them (POST /v1/files/{id}/preview): what the Formatter makes
of each row, token by token with which tokens are trained, and how many rows of the file max_seq_length cuts or
drops. The same Formatter the training child uses, so the preview is the training."""

from __future__ import annotations

import time
from collections.abc import Iterable

from app.datasets import FORMAT_VERSION
from worker.training.data import IGNORE, ChatTemplateError, Example, Formatter, answer_records

MAX_ROWS_COUNTED = 100_000  # rows formatted for the cut/dropped counts; a larger file's counts say "of the first"
COUNT_S = 10.0  # and for at most this long: one preview worker serves every tenant
MAX_TOKENS_SHOWN = 4096  # per row: a 128k-token row is counted whole but not listed whole


class PreviewRowError(ValueError):
    def __init__(self, line: int | None, field: str | None, message: str) -> None:
        super().__init__(message)
        self.line, self.field, self.message = line, field, message

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field {self.field!r}" if self.field else "")
        return f"{where}: {self.message}"


def preview(
    tokenizer, rows: Iterable[tuple[int, dict]], max_seq_length: int, num_rows: int, max_seconds: float = COUNT_S
) -> dict:
    fmt = Formatter(tokenizer, max_seq_length)
    shown: list[dict] = []
    counted = cut = dropped = 0
    deadline = time.monotonic() + max_seconds
    whole_file = True
    for line, record in rows:
        if counted >= num_rows and (counted >= MAX_ROWS_COUNTED or time.monotonic() > deadline):
            whole_file = False  # a preview answers in seconds: the counts are of the rows formatted by then
            break
        try:
            # a preference row is two examples, its prompt with each answer; dropped if either is
            examples = [fmt.example(r) for r in answer_records(record)] if "chosen" in record else [fmt.example(record)]
        except ChatTemplateError as exc:
            raise PreviewRowError(line, exc.field, exc.message) from exc
        counted += 1
        dropped += any(e is None for e in examples)
        cut += any(e is not None and e.cut for e in examples)
        if counted <= num_rows:
            sides = ("chosen", "rejected") if len(examples) == 2 else (None,)
            shown += [_shown_row(tokenizer, line, e, max_seq_length, side) for e, side in zip(examples, sides)]
    return {
        "rows": shown,
        "rows_counted": counted,
        "rows_cut": cut,
        "rows_dropped": dropped,
        "whole_file": whole_file,
        "format_version": FORMAT_VERSION,
    }


def _shown_row(tokenizer, line: int, example: Example | None, max_seq_length: int, side: str | None) -> dict:
    if example is None:
        return {
            "line": line,
            "answer": side,
            "dropped": f"its answer alone is longer than max_seq_length ({max_seq_length} tokens): not trained on",
            "cut": False,
            "num_tokens": 0,
            "num_trained_tokens": 0,
            "text": None,
            "trained_text": None,
            "tokens": [],
        }
    ids, labels = example.input_ids, example.labels
    pieces = tokenizer.convert_ids_to_tokens(ids[:MAX_TOKENS_SHOWN])
    return {
        "line": line,
        "answer": side,
        "dropped": None,
        "cut": example.cut,
        "num_tokens": len(ids),
        "num_trained_tokens": example.num_loss_tokens,
        "text": tokenizer.decode(ids),
        "trained_text": tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE]),
        "tokens": [
            {"id": t, "token": piece, "trained": label != IGNORE}
            for t, piece, label in zip(ids[:MAX_TOKENS_SHOWN], pieces, labels[:MAX_TOKENS_SHOWN], strict=True)
        ],
    }
