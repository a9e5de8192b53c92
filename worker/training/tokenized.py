"""A file's rows as the worker trains them, tokenized once and kept: flat int32 arrays, not Python lists.

Tokenizing is the longest part of loading a large file (a million WikiSQL rows held as Python lists took about
15 minutes and 11 GiB before the first step). Here rows are read in chunks, each chunk tokenized in one batch call
(Formatter.examples), and the result appended to four arrays:

    ids      int32  every sequence's tokens end to end (4 bytes a token, against about 55 in lists)
    trained  bool   per token: trained on (its label is itself) or not (IGNORE)
    offsets  int64  sequence k is ids[offsets[k]:offsets[k + 1]]; a row has `per_row` sequences (2 for a
                    preference pair: chosen, rejected), empty where the row is not trained on
    status   uint8  per row: OK, CUT (lost the beginning of its prompt), DROPPED (its answer alone is longer
                    than max_seq_length), NO_LOSS (nothing to train on)

The arrays hold the whole file, held-out rows included, so one set serves every split and seed: a sweep's
candidates and a resumed attempt, on any host, read them from the object store (tokenized/<file>/<fingerprint>),
keyed by what decides the tokens (`fingerprint`). They are one uncompressed NumPy .npz: np.savez streams arrays
into it without a second copy (safetensors' save_file copies every array to bytes first, which at a million rows
is another gigabyte), np.load reads each into one allocation, never unpickling, and the zip's CRC-32s catch a
damaged object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np

from worker.training.data import IGNORE, ChatTemplateError, Example, Formatter

log = logging.getLogger("ftaas.tokenized")

LAYOUT = 1  # of the arrays in the file: bump when they change, and older files are made again
OK, CUT, DROPPED, NO_LOSS = 0, 1, 2, 3
CHUNK_ROWS = 4096  # rows per batch call: big enough to keep the Rust tokenizer busy, small enough for the RSS


class DamagedTokens(ValueError):
    """A stored tokenized file that does not hold what it should: made again."""


def fingerprint(tok, max_seq_length: int, file_sha256: str, file_options: dict, per_row: int) -> str:
    """What decides a file's tokens: the tokenizer (its whole definition and chat template), max_seq_length, the
    file's bytes and how they are read (format, column mapping, separator), the row kind, the version of the
    formatting code (app.datasets.FORMAT_VERSION) and of the libraries that render and tokenize."""
    import tokenizers
    import transformers

    from app.datasets import FORMAT_VERSION
    from worker.training.chat_format import FALLBACK_CHAT_TEMPLATE

    backend = getattr(tok, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    digest = hashlib.sha256()
    for part in (
        definition,
        json.dumps(
            {
                # a model without a template renders chat with ftaas' plain one, set on the first chat row
                "chat_template": getattr(tok, "chat_template", None) or FALLBACK_CHAT_TEMPLATE,
                "bos": tok.bos_token_id,
                "eos": tok.eos_token_id,
                "max_seq_length": max_seq_length,
                "file": file_sha256,
                "options": file_options,
                "per_row": per_row,
                "format_version": FORMAT_VERSION,  # bumped when data.py or chat_format.py make other tokens
                "layout": LAYOUT,
                "libraries": [transformers.__version__, tokenizers.__version__],  # templates, pre-tokenizers
            },
            sort_keys=True,
            default=str,
        ),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


@dataclass
class TokenizedRows:
    ids: np.ndarray
    trained: np.ndarray
    offsets: np.ndarray
    status: np.ndarray
    per_row: int

    @property
    def num_rows(self) -> int:
        return len(self.status)

    def example(self, seq: int) -> Example:
        a, b = int(self.offsets[seq]), int(self.offsets[seq + 1])
        ids = self.ids[a:b]
        return Example(ids, np.where(self.trained[a:b], ids, IGNORE), cut=bool(self.status[seq // self.per_row] == CUT))

    def trainable(self, rows: np.ndarray) -> np.ndarray:
        """Of `rows` (row numbers), those with something to train, in the same order."""
        return rows[self.status[rows] <= CUT]

    def counts(self, rows: np.ndarray) -> tuple[int, int]:
        """(cut, dropped) among `rows`."""
        status = self.status[rows]
        return int(np.count_nonzero(status == CUT)), int(np.count_nonzero(status == DROPPED))

    # ------------------------------------------------------------------------------------------------- files

    def save(self, path: Path) -> None:
        """Written whole or not at all (a crash mid-write leaves no half file to read)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:  # np.savez streams each array into the zip, never a second copy in memory
            np.savez(fh, meta=np.array([LAYOUT, self.per_row]), **self.arrays())
        os.replace(tmp, path)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"ids": self.ids, "trained": self.trained, "offsets": self.offsets, "status": self.status}

    @classmethod
    def load(cls, path: Path) -> TokenizedRows:
        """The arrays of a saved file, checked for consistency (and by the zip's CRC-32s); DamagedTokens where they
        are not. Never unpickles: a foreign object fails to load instead of running code."""
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = f["meta"]
                arrays = {name: f[name] for name in ("ids", "trained", "offsets", "status")}
        except Exception as exc:  # noqa: BLE001 - zipfile and numpy raise many kinds for a damaged file
            raise DamagedTokens(f"{path.name}: {exc!r}") from exc
        if meta.tolist()[:1] != [LAYOUT] or len(meta) != 2 or meta[1] not in (1, 2):
            raise DamagedTokens(f"{path.name}: layout {meta.tolist()}")
        rows = cls(**arrays, per_row=int(meta[1]))
        offsets = rows.offsets
        if (
            rows.ids.dtype != np.int32
            or len(rows.trained) != len(rows.ids)
            or len(offsets) != rows.num_rows * rows.per_row + 1
            or offsets[0] != 0
            or offsets[-1] != len(rows.ids)
            or np.any(np.diff(offsets) < 0)
        ):
            raise DamagedTokens(f"{path.name}: arrays of inconsistent sizes")
        return rows


def tokenize_rows(
    fmt: Formatter, rows: Iterable[tuple[int, dict]], preference: bool = False, spill_dir: Path | None = None
) -> TokenizedRows:
    """Every (line, record) tokenized, CHUNK_ROWS at a time. A chat row the model's template cannot render raises
    ChatTemplateError with `line` set to its line.

    Each chunk's tokens go to a temporary file in `spill_dir` (default: the system's) and are read back at the end
    into one array: the peak memory is the arrays once, never the arrays plus the pieces they are made of."""
    per_row = 2 if preference else 1
    length_parts, status_parts = [], []
    with tempfile.TemporaryDirectory(dir=spill_dir, prefix=".tokenizing-") as spill:
        ids_path, trained_path = Path(spill) / "ids", Path(spill) / "trained"
        with open(ids_path, "wb") as ids_out, open(trained_path, "wb") as trained_out:
            for chunk in _chunks(rows, CHUNK_ROWS):
                lengths, status, kept = _tokenize_chunk(fmt, chunk, per_row)
                total = int(lengths.sum())
                np.fromiter(chain.from_iterable(e.input_ids for e in kept), np.int32, total).tofile(ids_out)
                labels = np.fromiter(chain.from_iterable(e.labels for e in kept), np.int32, total)
                (labels != IGNORE).tofile(trained_out)
                length_parts.append(lengths)
                status_parts.append(status)
        lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
        return TokenizedRows(
            ids=np.fromfile(ids_path, np.int32),
            trained=np.fromfile(trained_path, bool),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            status=np.concatenate(status_parts) if status_parts else np.zeros(0, np.uint8),
            per_row=per_row,
        )


def _tokenize_chunk(fmt: Formatter, chunk: list, per_row: int) -> tuple[np.ndarray, np.ndarray, list[Example]]:
    """(each sequence's length, 0 where not kept; each row's status; the kept sequences in order)."""
    lines, records = zip(*chunk)
    try:
        made = fmt.pairs(list(records)) if per_row == 2 else [(e,) for e in fmt.examples(list(records))]
    except ChatTemplateError as exc:
        exc.line = lines[exc.row] if exc.row is not None else None
        raise
    status = np.empty(len(made), np.uint8)
    lengths = np.zeros(len(made) * per_row, np.int64)
    kept: list[Example] = []
    for i, seqs in enumerate(made):
        if seqs is None or seqs[0] is None:
            status[i] = DROPPED
        elif not all(e.num_loss_tokens for e in seqs):
            status[i] = NO_LOSS
        else:
            status[i] = CUT if any(e.cut for e in seqs) else OK
            kept.extend(seqs)
            lengths[i * per_row : (i + 1) * per_row] = [len(e.input_ids) for e in seqs]
    return lengths, status, kept


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class TrainingExamples(Sequence):
    """The training rows of a file as Examples, made from the arrays when the loop reaches them: a million-row
    file never exists as a million Python objects."""

    def __init__(self, tokens: TokenizedRows, rows: np.ndarray) -> None:
        assert tokens.per_row == 1, "preference rows are trained as pairs (pairs_of)"
        self.tokens, self.rows = tokens, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> Example:
        return self.tokens.example(int(self.rows[k]))

    def lengths(self) -> np.ndarray:
        return np.diff(self.tokens.offsets)[self.rows]


def pairs_of(tokens: TokenizedRows, rows: np.ndarray) -> list:
    """The preference pairs of `rows`, as objects: attach_reference gives each its reference log-probabilities."""
    from worker.training.preference import Pair

    return [Pair(tokens.example(2 * int(r)), tokens.example(2 * int(r) + 1)) for r in rows]
