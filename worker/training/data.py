"""Records -> token ids with labels, and records -> generation prompts for evaluation.

Loss is on completion tokens only for prompt/completion, instruction and chat data (prompt labels are
-100), and on every token for raw text. Chat data uses the tokenizer's chat template when it has one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

IGNORE = -100

# Used when a tokenizer has no chat template (e.g. a base model): plain, readable role headers.
FALLBACK_ROLE_HEADER = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class GenerationRow:
    prompt: str  # what the model is given, as text (shown to users)
    prompt_ids: list[int]
    reference: str


def split_rows(rows: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded held-out split: the same file and seed always give the same evaluation rows."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(len(rows) * share)), len(rows) - 1) if len(rows) > 1 else 0
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


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

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    # -- training examples

    def example(self, record: dict) -> Example:
        if "text" in record:
            ids = self.bos + self.encode(record["text"]) + self.eos
            return self._truncate(ids, list(ids))
        segments = self._segments(record)
        ids, labels = list(self.bos), [IGNORE] * len(self.bos)
        for text, trained in segments:
            part = self.encode(text)
            ids += part
            labels += part if trained else [IGNORE] * len(part)
        ids += self.eos
        labels += self.eos
        return self._truncate(ids, labels)

    def _truncate(self, ids: list[int], labels: list[int]) -> Example:
        return Example(ids[: self.max_len], labels[: self.max_len])

    def _segments(self, record: dict) -> list[tuple[str, bool]]:
        """(text, is_trained) pieces in order."""
        if "messages" in record:
            return self._chat_segments(record["messages"])
        prompt, completion = move_trailing_spaces(record["prompt"], record["completion"])
        return [(prompt, False), (completion, True)]

    def _chat_segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        if getattr(self.tok, "chat_template", None):
            # Render growing prefixes; the text each assistant turn adds is what gets trained.
            segments, rendered = [], ""
            for i, msg in enumerate(messages):
                full = self.tok.apply_chat_template(messages[: i + 1], tokenize=False)
                if msg["role"] == "assistant":
                    prefix = self.tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                    if prefix.startswith(rendered) and full.startswith(prefix):
                        segments.append((prefix[len(rendered) :], False))
                        segments.append((full[len(prefix) :], True))
                        rendered = full
                        continue
                segments.append((full[len(rendered) :], False))
                rendered = full
            return [(text, trained) for text, trained in segments if text]
        segments = []
        for msg in messages:
            header = FALLBACK_ROLE_HEADER.get(msg["role"], f"### {msg['role']}:\n")
            trained = msg["role"] == "assistant"
            segments.append((header, False))
            segments.append((msg["content"] + "\n\n", trained))
        return segments

    # -- generation rows for evaluation

    def generation_row(self, record: dict) -> GenerationRow | None:
        """The prompt a user would send and the reference answer; None for raw text (nothing to generate)."""
        if "text" in record:
            return None
        if "messages" in record:
            msgs = record["messages"]
            last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            context, reference = msgs[:last], msgs[last]["content"]
            if getattr(self.tok, "chat_template", None):
                prompt = self.tok.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
            else:
                prompt = (
                    "".join(
                        FALLBACK_ROLE_HEADER.get(m["role"], f"### {m['role']}:\n") + m["content"] + "\n\n"
                        for m in context
                    )
                    + FALLBACK_ROLE_HEADER["assistant"]
                )
        else:
            prompt, reference = record["prompt"], record["completion"]
        # Keep room for the answer: long prompts lose their beginning, not their question.
        ids = self.bos + self.encode(move_trailing_spaces(prompt, "")[0])
        if len(ids) > self.max_len - 1:
            ids = ids[-(self.max_len // 2) :]
        return GenerationRow(prompt=prompt, prompt_ids=ids, reference=reference)
