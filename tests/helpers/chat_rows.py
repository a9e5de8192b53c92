"""An OpenAI-format chat row with everything the format has: a developer message, a tool call and its result, a
weight-0 turn and the trained answer (the preview tests' row)."""

from __future__ import annotations

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CHAT_ROW = {
    "messages": [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "Too hot.", "weight": 0},
        {"role": "user", "content": "Really?"},
        {"role": "assistant", "content": "21 degrees, sunny."},
    ],
    "tools": [WEATHER],
}
