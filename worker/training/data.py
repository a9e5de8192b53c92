"""Records -> token ids with labels, and records -> generation prompts for evaluation.

Loss is on completion tokens only for prompt/completion, instruction and chat data (prompt labels are
-100), and on every token for raw text. Chat goes through the model's own chat template, token for token
(worker/training/chat_format.py). A row longer than max_seq_length loses the beginning of its prompt, never
the answer it teaches; a row whose answer alone is longer is dropped (Formatter.example returns None).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from worker.training.chat_format import ChatRenderer, ChatTemplateError, reference_of

IGNORE = -100

__all__ = ["IGNORE", "ChatTemplateError", "Example", "Formatter", "GenerationRow", "split_indices", "split_rows"]


@dataclass
class Example:
    """One sequence as trained. Its ids and labels are lists, or int32 arrays when read from a file's tokenized rows
    (worker/training/tokenized.py): the collate functions take either."""

    input_ids: list[int] | np.ndarray
    labels: list[int] | np.ndarray
    cut: bool = False  # lost the beginning of its prompt (or, raw text, its end) to max_seq_length

    @property
    def num_loss_tokens(self) -> int:
        return int(np.count_nonzero(np.asarray(self.labels) != IGNORE))


@dataclass
class GenerationRow:
    prompt: str  # what the model is given, as text (shown to users)
    prompt_ids: list[int]
    reference: str


def split_rows(rows: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded held-out split: the same file and seed always give the same evaluation rows."""
    train, held = split_indices(len(rows), share, seed)
    return [rows[i] for i in train], [rows[i] for i in held]


def split_indices(n: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """split_rows by row number, for a file known only by its row count: (training rows, held-out rows), each in
    file order."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(n * share)), n - 1) if n > 1 else 0
    held = sorted(order[:n_eval])
    taken = set(held)
    return [i for i in range(n) if i not in taken], held


def seed_of_test_rows(seed: int) -> int:
    """The seed of a job's test split: not the job's own, so that the test rows are not the validation split's."""
    return (seed * 1_000_003 + 7) % 2**31


def answer_records(record: dict) -> tuple[dict, dict]:
    """A preference record (app/datasets/preference.py) as two records of the shapes the Formatter trains: the
    prompt with the chosen answer, and with the rejected one. An assistant turn of the prompt is context."""
    if "context" not in record:
        return tuple({"prompt": record["prompt"], "completion": record[side]} for side in ("chosen", "rejected"))
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in record["context"]]
    tools = {"tools": record["tools"]} if record.get("tools") else {}
    return tuple({"messages": context + record[side], **tools} for side in ("chosen", "rejected"))


def move_trailing_spaces(prompt: str, completion: str) -> tuple[str, str]:
    """Move a prompt's trailing spaces to the start of its completion.

    SentencePiece-style tokenizers glue a space to the word after it ("A: SELECT" -> "A", ":", "▁S"...).
    A prompt ending in a space would otherwise be tokenized with a lone "▁" that the model never saw in
    pretraining, and it would have to learn an unnatural split. Training and generation both use this.
    """
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped) :] + completion


class Formatter:
    """Turns normalized records into training examples and generation rows for one tokenizer."""

    def __init__(self, tokenizer, max_seq_length: int) -> None:
        self.tok = tokenizer
        self.max_len = max_seq_length
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self._chat: ChatRenderer | None = None

    @property
    def chat(self) -> ChatRenderer:
        # Made on the first chat row: it gives a tokenizer without a template ftaas' plain one
        if self._chat is None:
            self._chat = ChatRenderer(self.tok, IGNORE)
        return self._chat

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text, in one call of the Rust tokenizer where there is one: it splits the batch over
        the cores and skips the Python wrapper's per-call work (about 2x faster on one core, more on several)."""
        backend = getattr(self.tok, "backend_tokenizer", None)
        if backend is None:
            return [self.encode(t) for t in texts]
        # A tokenizer.json may carry truncation or padding, which transformers switches on at load; its own calls
        # switch them off first (encode() asks for neither), and so does this, or rows would be cut and padded.
        if backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

    def with_bos(self, ids: list[int]) -> list[int]:
        """The ids with the BOS in front, once: a prompt already rendered by a chat template (a comparison on held-out
        rows sends the evaluation's own prompt text) starts with it."""
        return ids if not self.bos or ids[:1] == self.bos else self.bos + ids

    # -- training examples

    def example(self, record: dict) -> Example | None:
        """The row as trained, or None when its answer alone is longer than max_seq_length."""
        if "text" in record:
            ids = self.bos + self.encode(record["text"]) + self.eos
            return Example(ids[: self.max_len], ids[: self.max_len], cut=len(ids) > self.max_len)
        if "messages" in record:
            rendered = self.chat.conversation(record["messages"], record.get("tools"))
            return self._fit(rendered.ids, rendered.labels)
        prompt, completion = move_trailing_spaces(record["prompt"], record["completion"])
        prompt_ids, completion_ids = self.with_bos(self.encode(prompt)), self.encode(completion) + self.eos
        return self._fit(prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids)

    def examples(self, records: list[dict]) -> list[Example | None]:
        """example() of each record, the same token for token, with the plain texts tokenized in batches.
        A chat row the template cannot render raises ChatTemplateError with `row` set to its position."""
        out: list[Example | None] = [None] * len(records)
        plain = [i for i, r in enumerate(records) if "messages" not in r]
        for i, r in enumerate(records):
            if "messages" in r:
                try:
                    out[i] = self.example(r)
                except ChatTemplateError as exc:
                    exc.row = i
                    raise
        texts = [i for i in plain if "text" in records[i]]
        for i, ids in zip(texts, self.encode_many([records[i]["text"] for i in texts])):
            ids = self.bos + ids + self.eos
            out[i] = Example(ids[: self.max_len], ids[: self.max_len], cut=len(ids) > self.max_len)
        answered = [i for i in plain if "text" not in records[i]]
        split = [move_trailing_spaces(records[i]["prompt"], records[i]["completion"]) for i in answered]
        prompts = self.encode_many([p for p, _ in split])
        completions = self.encode_many([c for _, c in split])
        for i, prompt_ids, completion_ids in zip(answered, prompts, completions):
            prompt_ids, completion_ids = self.with_bos(prompt_ids), completion_ids + self.eos
            out[i] = self._fit(prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids)
        return out

    def pair(self, record: dict) -> tuple[Example, Example] | None:
        """A preference row as the two examples preference tuning compares: the same prompt with the chosen and with
        the rejected answer, only the answer trained; None when either answer alone is too long."""
        chosen, rejected = (self.example(r) for r in answer_records(record))
        return None if chosen is None or rejected is None else (chosen, rejected)

    def pairs(self, records: list[dict]) -> list[tuple[Example, Example] | None]:
        """pair() of each preference record, tokenized in batches like examples()."""
        try:
            made = self.examples([r for record in records for r in answer_records(record)])
        except ChatTemplateError as exc:
            exc.row = None if exc.row is None else exc.row // 2
            raise
        pairs = [(made[2 * i], made[2 * i + 1]) for i in range(len(records))]
        return [None if chosen is None or rejected is None else (chosen, rejected) for chosen, rejected in pairs]

    def _fit(self, ids: list[int], labels: list[int]) -> Example | None:
        """Cut the beginning of a row too long for max_seq_length, keeping its first token where that is the BOS
        (the model never sees a sequence without it) and the whole of its last trained run (the final answer)."""
        if len(ids) <= self.max_len:
            return Example(ids, labels)
        head = 1 if self.bos and ids[0] == self.bos[0] else 0
        last_run = len(labels)
        while last_run > 0 and labels[last_run - 1] == IGNORE:
            last_run -= 1
        while last_run > 0 and labels[last_run - 1] != IGNORE:
            last_run -= 1
        keep = self.max_len - head
        if len(ids) - last_run > keep:
            return None
        return Example(ids[:head] + ids[-keep:], labels[:head] + labels[-keep:], cut=True)

    # -- generation rows for evaluation

    def generation_row(self, record: dict) -> GenerationRow | None:
        """The prompt a user would send and the reference answer; None for raw text (nothing to generate)."""
        if "text" in record:
            return None
        if "messages" in record:
            messages = record["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) != 0)
            if last == 0:
                return None  # an answer the conversation opens with: there is no prompt to generate it from
            prompt, ids = self.chat.prompt(messages[:last], record.get("tools"))
            reference = reference_of(messages[last])
        else:
            prompt, reference = record["prompt"], record["completion"]
            ids = self.with_bos(self.encode(move_trailing_spaces(prompt, "")[0]))
        # Keep room for the answer: long prompts lose their beginning, not their question (nor their BOS).
        if len(ids) > self.max_len - 1:
            head = 1 if self.bos and ids[0] == self.bos[0] else 0
            ids = ids[:head] + ids[-(self.max_len // 2 - head) :]
        return GenerationRow(prompt=prompt, prompt_ids=ids, reference=reference)
