"""Chat rows as OpenAI's fine-tuning accepts them, checked and normalised into the message dicts that chat
templates take (Hugging Face's conventions).

- roles system, developer, user, assistant, tool; an optional `name` on any message;
- `weight` 0 or 1 on assistant messages: 0 keeps the turn as context without training on it;
- top-level `tools` (function definitions), assistant `tool_calls`, and `tool` messages answering them. A call's
  `arguments` is a JSON text in OpenAI's format; templates render it as an object (`| tojson`), so it is parsed
  here, once, and a text that is not a JSON object is the row's error;
- content as a string, or as OpenAI's list of text parts (joined);
- other keys of a message are dropped, as before: datasets carry extras (ids, scores) that templates ignore.

Every problem is a _RowProblem naming the field (messages[2].tool_calls[0].function.arguments), which the
upload answers as a 422 with the line.
"""

from __future__ import annotations

import json
from typing import Any

from app.datasets.errors import _RowProblem, _type_name

ROLES = ("system", "developer", "user", "assistant", "tool")


def normalize_tools(tools: Any, where: str = "tools") -> list[dict]:
    """OpenAI's function definitions: [{"type": "function", "function": {"name", "description"?, "parameters"?}}]."""
    if not isinstance(tools, list) or not tools:
        raise _RowProblem(where, f"must be a non-empty array of tools, got {_type_name(tools)}")
    out = []
    for i, tool in enumerate(tools):
        at = f"{where}[{i}]"
        if not isinstance(tool, dict):
            raise _RowProblem(at, f"must be an object, got {_type_name(tool)}")
        if tool.get("type", "function") != "function":
            raise _RowProblem(f"{at}.type", f"must be 'function', got {repr(tool.get('type'))[:40]}")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _RowProblem(f"{at}.function", f"must be an object with a name, got {_type_name(function)}")
        _name(function, f"{at}.function.name")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _RowProblem(f"{at}.function.parameters", "must be a JSON Schema object")
        if "description" in function and not isinstance(function["description"], str):
            raise _RowProblem(f"{at}.function.description", "must be a string")
        out.append({"type": "function", "function": function})
    return out


def normalize_messages(
    messages: Any, where: str = "messages", *, tools: list[dict] | None = None, trained: bool = True
) -> list[dict]:
    """The messages of one conversation, normalised. `trained`: at least one assistant message must be trained
    (a chat row to learn from), else the messages are context only (a preference row's input)."""
    if isinstance(messages, str):  # a CSV/Parquet string column holding the JSON list
        try:
            messages = json.loads(messages)
        except ValueError:
            pass
    if not isinstance(messages, list):
        raise _RowProblem(where, f"must be an array of messages, got {_type_name(messages)}")
    if not messages:
        raise _RowProblem(where, "must contain at least one message")
    tool_names = {t["function"]["name"] for t in tools} if tools else None
    out: list[dict] = []
    open_calls: set[str] | None = None  # the call ids of the last assistant message with tool_calls
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        normalized = _message(message, at, tool_names)
        if normalized["role"] == "tool":
            _check_answers_a_call(normalized, open_calls, at)
        elif normalized["role"] == "assistant" and "tool_calls" in normalized:
            open_calls = {call["id"] for call in normalized["tool_calls"] if call.get("id")}
        else:  # a tool message answers the assistant message just before it (or the calls' other answers)
            open_calls = None
        out.append(normalized)
    if trained:
        assistants = [m for m in out if m["role"] == "assistant"]
        if not assistants:
            raise _RowProblem(where, "must contain at least one assistant message")
        if all(m.get("weight", 1) == 0 for m in assistants):
            raise _RowProblem(where, "every assistant message has weight 0: nothing would be trained")
    return out


def _message(message: Any, at: str, tool_names: set[str] | None) -> dict:
    if not isinstance(message, dict):
        raise _RowProblem(at, f"must be an object with role and content, got {_type_name(message)}")
    if "role" not in message:
        raise _RowProblem(f"{at}.role", "missing field")
    role = message["role"]
    if role == "function" or "function_call" in message:
        raise _RowProblem(at, "the legacy `function` role and `function_call` are not supported: use tool_calls")
    if not isinstance(role, str) or role not in ROLES:
        raise _RowProblem(f"{at}.role", f"must be one of {', '.join(ROLES)}, got {repr(role)[:40]}")
    out: dict[str, Any] = {"role": role}
    calls = message.get("tool_calls")
    if calls is not None and role != "assistant":
        raise _RowProblem(f"{at}.tool_calls", "only assistant messages make tool calls")
    # an assistant answer has text, or calls; a context turn (weight 0) may be empty
    trained_answer = role == "assistant" and message.get("weight", 1) != 0
    out["content"] = _content(message, at, required=role != "assistant" or not calls, non_empty=trained_answer)
    if message.get("name") is not None:
        out["name"] = _name(message, f"{at}.name")
    if "weight" in message:
        out["weight"] = _weight(message["weight"], role, f"{at}.weight")
    if calls is not None:
        out["tool_calls"] = _tool_calls(calls, f"{at}.tool_calls", tool_names)
    if role == "tool" and message.get("tool_call_id") is not None:
        if not isinstance(message["tool_call_id"], str) or not message["tool_call_id"]:
            raise _RowProblem(f"{at}.tool_call_id", "must be a non-empty string")
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _content(message: dict, at: str, *, required: bool, non_empty: bool) -> str:
    """A string, or OpenAI's list of text parts joined. An assistant message that only calls tools may have none."""
    content = message.get("content")
    if content is None:
        if "content" not in message and required:
            raise _RowProblem(f"{at}.content", "missing field")
        if required:
            raise _RowProblem(f"{at}.content", "must be a string, got null")
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            where = f"{at}.content[{j}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise _RowProblem(where, f"only text parts are supported, got {repr(kind)[:40]}")
            if not isinstance(part.get("text"), str):
                raise _RowProblem(f"{where}.text", "must be a string")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise _RowProblem(f"{at}.content", f"must be a string, got {_type_name(content)}")
    if non_empty and required and not content.strip():
        raise _RowProblem(f"{at}.content", "must not be empty")
    return content


def _name(holder: dict, at: str) -> str:
    name = holder.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _RowProblem(at, f"must be a non-empty string, got {_type_name(name)}")
    return name


def _weight(weight: Any, role: str, at: str) -> int:
    if role != "assistant":
        raise _RowProblem(at, "only assistant messages have a weight")
    if isinstance(weight, bool) or weight not in (0, 1):
        raise _RowProblem(at, f"must be 0 (context, not trained) or 1 (trained), got {repr(weight)[:40]}")
    return int(weight)


def _tool_calls(calls: Any, at: str, tool_names: set[str] | None) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        raise _RowProblem(at, f"must be a non-empty array of calls, got {_type_name(calls)}")
    out = []
    for j, call in enumerate(calls):
        where = f"{at}[{j}]"
        if not isinstance(call, dict):
            raise _RowProblem(where, f"must be an object, got {_type_name(call)}")
        if call.get("type", "function") != "function":
            raise _RowProblem(f"{where}.type", f"must be 'function', got {repr(call.get('type'))[:40]}")
        function = call.get("function")
        if not isinstance(function, dict):
            raise _RowProblem(
                f"{where}.function", f"must be an object with name and arguments, got {_type_name(function)}"
            )
        name = _name(function, f"{where}.function.name")
        if tool_names is not None and name not in tool_names:
            raise _RowProblem(f"{where}.function.name", f"calls {name!r}, which is not among the row's tools")
        normalized: dict[str, Any] = {
            "type": "function",
            "function": {"name": name, "arguments": _arguments(function, where)},
        }
        if call.get("id") is not None:
            if not isinstance(call["id"], str) or not call["id"]:
                raise _RowProblem(f"{where}.id", "must be a non-empty string")
            normalized["id"] = call["id"]
        out.append(normalized)
    return out


def _arguments(function: dict, where: str) -> dict:
    at = f"{where}.function.arguments"
    arguments = function.get("arguments")
    if isinstance(arguments, dict):  # already an object, as Hugging Face datasets often hold it
        return arguments
    if not isinstance(arguments, str):
        raise _RowProblem(at, f"must be a JSON text, got {_type_name(arguments)}")
    try:
        parsed = json.loads(arguments)
    except ValueError as e:
        raise _RowProblem(at, f"is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(parsed, dict):
        raise _RowProblem(at, f"must be a JSON object, got {_type_name(parsed)}")
    return parsed


def _check_answers_a_call(message: dict, open_calls: set[str] | None, at: str) -> None:
    if open_calls is None:
        raise _RowProblem(at, "a tool message must follow an assistant message with tool_calls")
    call_id = message.get("tool_call_id")
    if call_id is not None and open_calls and call_id not in open_calls:
        raise _RowProblem(
            f"{at}.tool_call_id",
            f"{call_id!r} answers no call of the assistant message before it ({sorted(open_calls)})",
        )
