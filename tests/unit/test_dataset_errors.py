"""Tests for app.datasets' error reporting: malformed and mistyped rows, rows of no shape or of mixed shapes,
bad encodings, empty files, the formats' own errors, caps on lines and on the error list (formats, shapes and
mapping: test_datasets.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.datasets import DatasetValidationError, RowError, iter_records, validate_file
from tests.helpers.datasets import errors_of, one_error, write_jsonl

# --------------------------------------------------------------------------------------------------
# errors


def test_malformed_json_line_and_non_object(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"text": "ok"}, "", '{"text": "x",}', "[1, 2]", '"str"'])
    errors = errors_of(path)
    assert [(e.line, e.field) for e in errors] == [(3, None), (4, None), (5, None)]
    assert errors[0].message.startswith("malformed JSON: ") and "(column 14)" in errors[0].message
    assert errors[1].message == "expected a JSON object, got array"
    assert errors[2].message == "expected a JSON object, got string"


def test_wrong_types_and_summary_message(tmp_path):
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {"prompt": "a", "completion": "b"},
            {"prompt": "a", "completion": 3},
            {"prompt": ["x"], "completion": "b"},
            {"prompt": "a", "completion": True},
        ],
    )
    with pytest.raises(DatasetValidationError) as info:
        validate_file(path, "e.jsonl")
    assert [e.as_dict() for e in info.value.errors] == [
        {"line": 2, "field": "completion", "message": "must be a string, got number"},
        {"line": 3, "field": "prompt", "message": "must be a string, got array"},
        {"line": 4, "field": "completion", "message": "must be a string, got boolean"},
    ]
    assert str(info.value) == ("3 invalid rows; first: line 2, field 'completion': must be a string, got number")


def test_missing_and_empty_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {"prompt": "a"},
            {"prompt": "a", "completion": " "},
            {"instruction": "i", "output": ""},
            {"instruction": "", "output": "o"},
            {"text": ""},
        ],
    )
    got = [(e.line, e.field, e.message) for e in errors_of(path)]
    assert got[:2] == [(1, "completion", "missing field"), (2, "completion", "must not be empty")]
    # line 2 fixed nothing: the file's shape is still undecided, so each row is judged on its own keys
    assert got[2:] == [
        (3, "output", "must not be empty"),
        (4, "instruction", "must not be empty"),
        (5, "text", "must not be empty"),
    ]


def test_chat_errors(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": []},
            {"messages": "nope"},
            {"messages": [{"role": "robot", "content": "x"}]},
            {"messages": [{"content": "x"}]},
            {"messages": [{"role": "user", "content": 1}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            {"messages": ["hi"]},
        ],
    )
    got = [(e.line, e.field, e.message) for e in errors_of(path)]
    assert got == [
        (2, "messages", "must contain at least one assistant message"),
        (3, "messages", "must contain at least one message"),
        (4, "messages", "must be an array of messages, got string"),
        (5, "messages[0].role", "must be one of system, developer, user, assistant, tool, got 'robot'"),
        (6, "messages[0].role", "missing field"),
        (7, "messages[0].content", "must be a string, got number"),
        (8, "messages[1].content", "must not be empty"),
        (9, "messages[0]", "must be an object with role and content, got string"),
    ]


def test_row_matching_no_shape(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"question": "a", "answer": "b"}])
    line, field, message = one_error(path)
    assert (line, field) == (1, None)
    assert "matches no known shape" in message and "'question', 'answer'" in message and "chat" in message


def test_mixed_shapes(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"prompt": 1, "completion": "b"},
            {"text": "first valid row decides"},
            {"prompt": "a", "completion": "b"},
            {"text": "ok", "prompt": "ignored"},
        ],
    )
    got = [(e.line, e.field, e.message) for e in errors_of(path)]
    assert got[0] == (1, "prompt", "must be a string, got number")
    assert got[1][:2] == (3, None)
    assert "shape 'prompt_completion'" in got[1][2] and "'text'" in got[1][2] and "line 2" in got[1][2]
    assert len(got) == 2


def test_invalid_utf8_jsonl(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n{"text": "ok"}\n')
    line, field, message = one_error(path)
    assert (line, field) == (2, None) and message.startswith("invalid UTF-8")


def test_invalid_utf8_csv(tmp_path):
    path = tmp_path / "u.csv"
    path.write_bytes(b'text\n"multi\nline"\ncaf\xe9\nok\n')
    line, field, message = one_error(path)
    assert (line, field) == (4, None) and message.startswith("invalid UTF-8")


def test_invalid_utf8_json(tmp_path):
    path = tmp_path / "u.json"
    path.write_bytes(b'[\n{"text": "ok"},\n{"text": "caf\xe9"}\n]')
    line, field, message = one_error(path)
    assert (line, field) == (None, None) and message == "invalid UTF-8 on line 3"


@pytest.mark.parametrize(
    "name, content",
    [
        ("e.jsonl", b""),
        ("e.jsonl", b"\n  \n\n"),
        ("e.json", b"  \n"),
        ("e.csv", b""),
        ("e.csv", b"\r\n\r\n"),
        ("e.parquet", b""),
        ("e.jsonl", b"\xef\xbb\xbf"),
    ],
)
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    assert one_error(path) == (None, None, "file is empty")
    with pytest.raises(DatasetValidationError, match="^file is empty$"):
        validate_file(path, name)


def test_no_records(tmp_path):
    (tmp_path / "a.json").write_text("[]", "utf-8")
    (tmp_path / "h.csv").write_text("prompt,completion\n", "utf-8")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "z.parquet")
    for name in ("a.json", "h.csv", "z.parquet"):
        assert one_error(tmp_path / name) == (None, None, "no records")


def test_json_not_an_array_and_element_errors(tmp_path):
    path = tmp_path / "o.json"
    path.write_text('{"data": [{"text": "x"}]}', "utf-8")
    line, field, message = one_error(path)
    assert (line, field) == (None, None) and message.startswith("expected a JSON array of objects")
    path.write_text('[{"text": "x"}, 5, {"text": 2}]', "utf-8")
    assert [(e.line, e.field, e.message) for e in errors_of(path)] == [
        (2, None, "expected a JSON object, got number"),
        (3, "text", "must be a string, got number"),
    ]
    path.write_text('[{"text": "x"},\n {"text": "y"]', "utf-8")
    line, field, message = one_error(path)
    assert (line, field) == (None, None) and message.startswith("malformed JSON") and "line 2" in message


def test_csv_field_count_and_multiline_line_numbers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text(
        "prompt,completion\n"  # line 1
        '"multi\nline\nprompt",ok\n'  # lines 2-4
        "a,b,EXTRA\n"  # line 5: more fields than the header
        "\n"  # line 6: blank, skipped
        "only-one\n"  # line 7: fewer fields
        'a,""\n',  # line 8: "" is a value (empty completion), not missing
        "utf-8",
    )
    got = [(e.line, e.field, e.message) for e in errors_of(path)]
    assert got == [
        (5, None, "row has 3 fields but the header has 2"),
        (7, None, "row has 1 fields but the header has 2"),
        (8, "completion", "must not be empty"),
    ]


def test_csv_duplicate_header_and_malformed(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,text\na,b\n", "utf-8")
    assert one_error(path) == (1, "text", "duplicate column name in the header")
    path.write_text('text\nok\n"unterminated\nmore\n', "utf-8")
    line, field, message = one_error(path)
    assert (line, field) == (4, None) and message.startswith("malformed CSV")
    path.write_text('text\n"quoted" then more\n', "utf-8")
    assert one_error(path)[:2] == (2, None)


def test_csv_empty_string_is_a_value(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("prompt,completion\n,answer\n", "utf-8")
    assert list(iter_records(path, "csv")) == [{"prompt": "", "completion": "answer"}]


def test_corrupt_parquet_is_one_file_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not really parquet PAR1")
    line, field, message = one_error(path)
    assert (line, field) == (None, None) and message.startswith("not a readable Parquet file")
    with pytest.raises(DatasetValidationError):
        list(iter_records(path, "parquet"))


def test_line_exceeding_max_line_bytes(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [{"text": "ok"}, {"text": "x" * 5000}, {"text": "after"}])
    assert one_error(path, max_line_bytes=1000) == (2, None, "line exceeds 1000 bytes")
    with pytest.raises(DatasetValidationError, match="^1 invalid row; first: line 2: line exceeds"):
        validate_file(path, "l.jsonl", max_line_bytes=1000)
    assert validate_file(path, "l.jsonl", max_line_bytes=5100).num_rows == 3


def test_max_errors_caps_the_list_but_counts_all(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"text": 1}] * 30)
    with pytest.raises(DatasetValidationError) as info:
        validate_file(path, "m.jsonl", max_errors=5)
    assert len(info.value.errors) == 5 and info.value.total == 30
    assert [e.line for e in info.value.errors] == [1, 2, 3, 4, 5]
    assert str(info.value).startswith("30 invalid rows; first: line 1, field 'text'")


def test_iter_records_raises_on_first_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": "a"}, {"text": 2}, {"text": "c"}])
    records = iter_records(path, "jsonl")
    assert next(records) == {"text": "a"}
    with pytest.raises(DatasetValidationError) as info:
        next(records)
    assert info.value.errors == [RowError(2, "text", "must be a string, got number")]
    with pytest.raises(ValueError):
        list(iter_records(path, "txt"))


def test_a_json_array_over_its_size_cap_is_refused_unread(tmp_path, monkeypatch):
    from app.datasets import readers

    monkeypatch.setattr(readers, "MAX_JSON_ARRAY_BYTES", 1000)
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(100)]))
    with pytest.raises(DatasetValidationError) as exc:
        validate_file(path, "big.json")
    message = str(exc.value.errors[0])
    assert "1,000-byte limit" in message and ".jsonl" in message
