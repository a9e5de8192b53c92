"""Record shapes, option checks and normalisation of rows into training records."""

from __future__ import annotations

import re

from app.datasets.chat import normalize_messages, normalize_tools
from app.datasets.errors import RowError, _RowProblem, _type_name
from app.datasets.preference import PREFERENCE_KEYS, normalize_preference

SHAPES = ("preference", "chat", "prompt_completion", "instruction", "text")
MAPPING_TARGETS = (
    "prompt",
    "completion",
    "instruction",
    "input",
    "output",
    "text",
    "messages",
    "tools",
    "chosen",
    "rejected",
    "preferred_output",
    "non_preferred_output",
    "schema",
)
# Keys whose presence marks a row as a given shape; checked in SHAPES order (the priority on overlap).
_SHAPE_KEYS = {
    "preference": PREFERENCE_KEYS,
    "chat": {"messages"},
    "prompt_completion": {"prompt", "completion"},
    "instruction": {"instruction", "output"},
    "text": {"text"},
}
_EXPECTED_SHAPES = (
    "chat {messages, tools?}, prompt_completion {prompt, completion}, instruction {instruction, input?, output}, "
    "text {text}, preference {input, preferred_output, non_preferred_output} or {prompt?, chosen, rejected}"
)


# ---------------------------------------------------------------------------------------------------
# Option checks


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
    if "messages" not in row:
        return _conversational_prompt_completion(row)
    tools = normalize_tools(row["tools"]) if row.get("tools") else None  # [] as OpenAI's own examples send it
    record: dict = {"messages": normalize_messages(row["messages"], tools=tools)}
    if tools:
        record["tools"] = tools
    return record


def _conversational_prompt_completion(row: dict) -> dict:
    """TRL's conversational prompt/completion: the prompt's messages are context (an assistant turn in them has
    weight 0), the completion's assistant messages are trained."""
    if "completion" not in row:
        raise _RowProblem("completion", "missing field")
    tools = normalize_tools(row["tools"]) if row.get("tools") else None
    prompt = normalize_messages(row["prompt"], "prompt", tools=tools, trained=False)
    completion = normalize_messages(row["completion"], "completion", tools=tools)
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt]
    record: dict = {"messages": context + completion}
    if tools:
        record["tools"] = tools
    return record


def _prompt_completion(row: dict) -> dict:
    return {"prompt": _string(row, "prompt"), "completion": _string(row, "completion", non_empty=True)}


def _instruction(row: dict) -> dict:
    instruction = _string(row, "instruction", non_empty=True)
    input_ = _string(row, "input", optional=True)
    output = _string(row, "output", non_empty=True)
    return {"prompt": format_instruction(instruction, input_), "completion": output}


def _text(row: dict) -> dict:
    return {"text": _string(row, "text", non_empty=True)}


_VALIDATORS = {
    "preference": normalize_preference,
    "chat": _chat,
    "prompt_completion": _prompt_completion,
    "instruction": _instruction,
    "text": _text,
}


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
        # Text-to-SQL rows: the database the SQL graders run the output on. Kept only as text: a `schema` of
        # another kind (a JSON Schema object in a structured-output set) is some other column, ignored as before.
        if isinstance(row.get("schema"), str):
            record["schema"] = row["schema"]
        if self.shape is None:
            self.shape, self.shape_line = shape, line
        return record

    def _shape_of(self, row: dict) -> str:
        present = [shape for shape in SHAPES if _SHAPE_KEYS[shape] & row.keys()]
        if "prompt_completion" in present and isinstance(row.get("prompt"), list):
            present.insert(present.index("prompt_completion"), "chat")  # TRL's conversational prompt/completion
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
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in _texts(record))  # JSON may carry lone surrogates
    return -(-size // 4)


_NOT_TEXT = {"role", "type", "id", "tool_call_id", "weight"}


def _texts(value) -> list[str]:
    """The texts a record trains on or is prompted with: contents, names, tool definitions and call arguments."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for key, item in value.items() if key not in _NOT_TEXT for t in _texts(item)]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    return []
