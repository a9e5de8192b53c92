"""Preference rows for DPO, in OpenAI's format and in TRL's, normalised into one record.

- OpenAI: {"input": {"messages": [...], "tools"?: [...]}, "preferred_output": [assistant message],
  "non_preferred_output": [assistant message]}
- TRL, explicit prompt: {"prompt", "chosen", "rejected"}, all text, or the prompt a list of messages and the
  answers lists of assistant messages;
- TRL, implicit prompt: {"chosen": [messages], "rejected": [messages]}, two whole conversations whose shared
  beginning is the prompt (as TRL's extract_prompt takes it).

The record: {"prompt": text, "chosen": text, "rejected": text} for text rows, or {"context": [messages],
"tools"?: [...], "chosen": [assistant messages], "rejected": [assistant messages]} for conversations.
"""

from __future__ import annotations

from typing import Any

from app.datasets.chat import normalize_messages, normalize_tools
from app.datasets.errors import _RowProblem, _type_name

PREFERENCE_KEYS = {"preferred_output", "non_preferred_output", "chosen", "rejected"}


def normalize_preference(row: dict) -> dict:
    if "preferred_output" in row or "non_preferred_output" in row:
        return _openai(row)
    return _trl(row)


def _openai(row: dict) -> dict:
    for key in ("input", "preferred_output", "non_preferred_output"):
        if key not in row:
            raise _RowProblem(key, "missing field")
    source = row["input"]
    if not isinstance(source, dict):
        raise _RowProblem("input", f"must be an object with messages, got {_type_name(source)}")
    if "messages" not in source:
        raise _RowProblem("input.messages", "missing field")
    tools = normalize_tools(source["tools"], "input.tools") if source.get("tools") else None
    context = normalize_messages(source["messages"], "input.messages", tools=tools, trained=False)
    return _conversation(
        context,
        "input.messages",
        tools,
        _answer(row["preferred_output"], "preferred_output", tools),
        _answer(row["non_preferred_output"], "non_preferred_output", tools),
    )


def _trl(row: dict) -> dict:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise _RowProblem(key, "missing field")
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    tools = normalize_tools(row["tools"], "tools") if row.get("tools") else None
    if prompt is None:
        return _implicit(chosen, rejected, tools)
    if isinstance(prompt, str):
        for key, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise _RowProblem(key, f"must be a string like the prompt, got {_type_name(value)}")
            if not value.strip():
                raise _RowProblem(key, "must not be empty")
        if chosen == rejected:
            raise _RowProblem("rejected", "is the same as chosen: the pair teaches nothing")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    context = normalize_messages(prompt, "prompt", tools=tools, trained=False)
    return _conversation(
        context, "prompt", tools, _answer(chosen, "chosen", tools), _answer(rejected, "rejected", tools)
    )


def _implicit(chosen: Any, rejected: Any, tools: list[dict] | None) -> dict:
    """Two whole conversations: the prompt is the messages they share from the start."""
    if isinstance(chosen, str):
        raise _RowProblem("prompt", "missing field (text rows need a prompt; only conversations can share one)")
    chosen = normalize_messages(chosen, "chosen", tools=tools)
    rejected = normalize_messages(rejected, "rejected", tools=tools)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise _RowProblem("rejected", "shares no first message with chosen: give the prompt as its own field")
    for key, rest in (("chosen", chosen[shared:]), ("rejected", rejected[shared:])):
        if not rest or any(m["role"] != "assistant" for m in rest):
            raise _RowProblem(key, "must go on from the shared prompt with assistant messages only")
    return _conversation(chosen[:shared], "chosen", tools, chosen[shared:], rejected[shared:])


def _answer(value: Any, key: str, tools: list[dict] | None) -> list[dict]:
    if isinstance(value, dict):  # a single message rather than a list of one
        value = [value]
    messages = normalize_messages(value, key, tools=tools, trained=False)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            raise _RowProblem(f"{key}[{i}].role", f"must be 'assistant', got {message['role']!r}")
        if "weight" in message:
            raise _RowProblem(f"{key}[{i}].weight", "a preferred or non-preferred output has no weight")
    return messages


def _conversation(
    context: list[dict], where: str, tools: list[dict] | None, chosen: list[dict], rejected: list[dict]
) -> dict:
    if context[-1]["role"] == "assistant":
        raise _RowProblem(where, "must end with a message the answer replies to, not an assistant one")
    if chosen == rejected:
        raise _RowProblem("rejected", "is the same as chosen: the pair teaches nothing")
    record: dict[str, Any] = {"context": context, "chosen": chosen, "rejected": rejected}
    if tools:
        record["tools"] = tools
    return record
