"""Every file OpenAI's fine-tuning accepts, and TRL's shapes, as the upload reads them: chat with weights, names,
the developer role, tools and tool calls; TRL's conversational prompt/completion; preference rows for DPO in
OpenAI's format and TRL's (explicit and implicit prompt). Each bad row is a 422 naming its line and field."""

from __future__ import annotations

import json

import pytest

from app.datasets import DatasetValidationError, iter_records, validate_file

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def errors_of(path) -> list[tuple[int | None, str | None, str]]:
    with pytest.raises(DatasetValidationError) as info:
        validate_file(path, path.name)
    return [(e.line, e.field, e.message) for e in info.value.errors]


def test_openai_chat_with_weights_names_developer_and_tools(tmp_path):
    row = {
        "messages": [
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "Weather in Paris?", "name": "ana"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "Draft.", "weight": 0},
            {"role": "user", "content": [{"type": "text", "text": "Again, "}, {"type": "text", "text": "better."}]},
            {"role": "assistant", "content": "21 °C and sunny.", "weight": 1},
        ],
        "tools": [WEATHER],
        "parallel_tool_calls": False,
    }
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    summary = validate_file(path, path.name)
    assert (summary.shape, summary.num_rows) == ("chat", 1)
    (record,) = iter_records(path, "jsonl")
    assert record["tools"] == [WEATHER]
    messages = record["messages"]
    assert messages[0] == {"role": "developer", "content": "Answer briefly."}
    assert messages[1] == {"role": "user", "content": "Weather in Paris?", "name": "ana"}
    # the call's arguments parsed into an object, as templates render them (| tojson)
    assert messages[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "call_1"}
        ],
    }
    assert messages[3] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"}
    assert messages[4]["weight"] == 0 and messages[6]["weight"] == 1
    assert messages[5]["content"] == "Again, better."


def test_trl_conversational_prompt_completion_is_chat_with_the_prompt_as_context(tmp_path):
    row = {
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "2+2?"},
        ],
        "completion": [{"role": "assistant", "content": "4"}],
    }
    path = write_jsonl(tmp_path / "pc.jsonl", [row, row])
    assert validate_file(path, path.name).shape == "chat"
    (record, _) = iter_records(path, "jsonl")
    assert record["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "weight": 0},  # the prompt's turns are context
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]


def test_preference_rows_in_openai_and_trl_formats(tmp_path):
    openai_row = {
        "input": {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]},
        "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [CALL]}],
        "non_preferred_output": [{"role": "assistant", "content": "I cannot know."}],
    }
    explicit = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    implicit = {
        "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
    }
    text = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
    path = write_jsonl(tmp_path / "pref.jsonl", [openai_row, explicit, implicit, text])
    summary = validate_file(path, path.name)
    assert (summary.shape, summary.num_rows) == ("preference", 4)
    first, second, third, fourth = iter_records(path, "jsonl")
    assert first["context"] == [{"role": "user", "content": "Weather in Paris?"}] and first["tools"] == [WEATHER]
    assert first["chosen"][0]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert first["rejected"] == [{"role": "assistant", "content": "I cannot know."}]
    expected = {
        "context": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    assert second == expected and third == expected  # the implicit prompt is the shared beginning
    assert fourth == text


def test_each_bad_row_names_its_line_and_field(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    rows = [
        good,
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
        {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{city: Paris"}}
                    ],
                },
                {"role": "assistant", "content": "a"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "tool", "content": "21"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_9", "content": "21"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
        {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": "a"},
            ]
        },
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [CALL]}],
            "tools": [{"type": "function", "function": {"name": "other"}}],
        },
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert errors_of(path) == [
        (2, "messages[1].weight", "must be 0 (context, not trained) or 1 (trained), got 2"),
        (
            3,
            "messages[1].tool_calls[0].function.arguments",
            "is not valid JSON (Expecting property name enclosed in double quotes at character 1)",
        ),
        (4, "messages[1]", "a tool message must follow an assistant message with tool_calls"),
        (5, "messages[2].tool_call_id", "'call_9' answers no call of the assistant message before it (['call_1'])"),
        (6, "messages", "every assistant message has weight 0: nothing would be trained"),
        (7, "messages[0].weight", "only assistant messages have a weight"),
        (8, "messages[0].content[0]", "only text parts are supported, got 'image_url'"),
        (9, "messages[1].tool_calls[0].function.name", "calls 'get_weather', which is not among the row's tools"),
    ]


def test_bad_preference_rows_name_their_line_and_field(tmp_path):
    answer = [{"role": "assistant", "content": "4"}]
    rows = [
        {"input": {"messages": [{"role": "user", "content": "2+2?"}]}, "preferred_output": answer},
        {
            "input": {"messages": [{"role": "user", "content": "2+2?"}]},
            "preferred_output": answer,
            "non_preferred_output": [{"role": "user", "content": "5"}],
        },
        {
            "input": {"messages": [{"role": "user", "content": "2+2?"}]},
            "preferred_output": answer,
            "non_preferred_output": answer,
        },
        {"input": "2+2?", "preferred_output": answer, "non_preferred_output": [{"role": "assistant", "content": "5"}]},
        {"prompt": "2+2=", "chosen": "4", "rejected": [{"role": "assistant", "content": "5"}]},
        {"chosen": "4", "rejected": "5"},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert errors_of(path) == [
        (1, "non_preferred_output", "missing field"),
        (2, "non_preferred_output[0].role", "must be 'assistant', got 'user'"),
        (3, "rejected", "is the same as chosen: the pair teaches nothing"),
        (4, "input", "must be an object with messages, got string"),
        (5, "rejected", "must be a string like the prompt, got array"),
        (6, "prompt", "missing field (text rows need a prompt; only conversations can share one)"),
    ]


def test_empty_tools_are_no_tools_and_a_conversational_prompt_needs_its_completion(tmp_path):
    rows = [
        {  # OpenAI's own DPO example row carries "tools": [] and parallel_tool_calls
            "input": {"messages": [{"role": "user", "content": "hi"}], "tools": [], "parallel_tool_calls": True},
            "preferred_output": [{"role": "assistant", "content": "hello"}],
            "non_preferred_output": [{"role": "assistant", "content": "go away"}],
        }
    ]
    path = write_jsonl(tmp_path / "pref.jsonl", rows)
    (record,) = iter_records(path, "jsonl")
    assert "tools" not in record
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": []}],
    )
    assert validate_file(chat, chat.name).shape == "chat"
    bad = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": [{"role": "user", "content": "q"}]}])
    assert errors_of(bad) == [(1, "completion", "missing field")]


def test_a_tool_message_after_a_plain_answer_answers_no_call_and_a_context_turn_may_be_empty(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21"},
                {"role": "assistant", "content": "a"},
                {"role": "tool", "tool_call_id": "call_1", "content": "22"},
                {"role": "assistant", "content": "b"},
            ]
        },
    ]
    assert errors_of(write_jsonl(tmp_path / "t.jsonl", rows)) == [
        (1, "messages[4]", "a tool message must follow an assistant message with tool_calls")
    ]
    ok = [
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "weight": 0},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a"},
            ]
        }
    ]
    assert validate_file(write_jsonl(tmp_path / "w.jsonl", ok), "w.jsonl").num_rows == 1
