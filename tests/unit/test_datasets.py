"""Tests for app.datasets: formats, shapes, column mapping, completion separator, the shared real datasets
(error reporting: test_dataset_errors.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.datasets import (
    FORMATS,
    SHAPES,
    DatasetSummary,
    DatasetValidationError,
    RowError,
    check_column_mapping,
    detect_format,
    format_instruction,
    iter_records,
    validate_file,
)
from tests.conftest import DATASETS
from tests.helpers.datasets import errors_of, one_error, write_jsonl

SHARED = DATASETS


# --------------------------------------------------------------------------------------------------
# constants, helpers


def test_constants():
    assert SHAPES == ("preference", "chat", "prompt_completion", "instruction", "text")
    assert FORMATS == ("jsonl", "json", "csv", "parquet")


def test_row_error_as_dict():
    assert RowError(3, "text", "boom").as_dict() == {"line": 3, "field": "text", "message": "boom"}


def test_format_instruction_with_and_without_input():
    assert format_instruction("Add.", "1 and 2") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:\n"
    )
    assert format_instruction("Say hi.", "") == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay hi.\n\n### Response:\n"
    )


# --------------------------------------------------------------------------------------------------
# format detection


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("a.jsonl", "jsonl"),
        ("a.NDJSON", "jsonl"),
        ("a.json", "json"),
        ("a.csv", "csv"),
        ("a.tsv", "csv"),
        ("a.parquet", "parquet"),
        ("dir/sub/x.jsonl", "jsonl"),
        ("C:\\Users\\me\\x.csv", "csv"),
    ],
)
def test_detect_format_by_extension(name, fmt):
    assert detect_format(name, b"whatever") == fmt


@pytest.mark.parametrize(
    "head, fmt",
    [
        (b"PAR1\x15\x04", "parquet"),
        (b"  [\n {", "json"),
        (b'\xef\xbb\xbf{"text": "x"}\n', "jsonl"),
        (b"prompt,completion\nhi,there\n", "csv"),
        (b"prompt\tcompletion\nhi\tthere\n", "csv"),
    ],
)
def test_detect_format_by_sniffing(head, fmt):
    assert detect_format("upload", head) == fmt
    assert detect_format("upload.dat", head) == fmt


def test_detect_format_does_not_take_prose_for_csv():
    with pytest.raises(DatasetValidationError):
        detect_format("upload", b"Hello there, how are you, my friend?\nFine, thanks.\n")


def test_detect_format_unsupported():
    with pytest.raises(DatasetValidationError) as info:
        detect_format("notes.txt", b"Anarchism is a political philosophy, and a movement, that is sceptical.")
    [error] = info.value.errors
    assert (error.line, error.field) == (None, None)
    assert "unsupported file type" in error.message and "'.txt'" in error.message


def test_raw_text_file_is_not_supported():
    path = SHARED / "raw_text" / "wiki_demo.txt"
    if not path.exists():
        pytest.skip("shared datasets not present")
    assert "unsupported file type" in one_error(path)[2]


# --------------------------------------------------------------------------------------------------
# each format and shape, valid


def test_jsonl_prompt_completion(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Q: 2+2?", "completion": "4", "id": 7},
            "",
            {"prompt": "", "completion": "hello"},
        ],
    )
    summary = validate_file(path, "d.jsonl")
    # no row carries a CREATE TABLE: none would do for the SQL graders, the first at line 1
    assert summary == DatasetSummary(
        "jsonl", "prompt_completion", 2, summary.token_estimate, ["prompt", "completion", "id"], 0, 1
    )
    assert summary.token_estimate > 0
    assert list(iter_records(path, "jsonl")) == [
        {"prompt": "Q: 2+2?", "completion": "4"},
        {"prompt": "", "completion": "hello"},
    ]


def test_json_chat_keeps_what_templates_render_and_drops_the_rest(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "", "name": "s"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "weight": 1},
            ],
            "meta": {"x": 1},
        }
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows, indent=2), "utf-8")
    summary = validate_file(path, "chat.json")
    assert (summary.format, summary.shape, summary.num_rows, summary.columns) == (
        "json",
        "chat",
        1,
        ["messages", "meta"],
    )
    assert list(iter_records(path, "json")) == [
        {
            "messages": [
                {"role": "system", "content": "", "name": "s"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "weight": 1},
            ]
        }
    ]


def test_csv_instruction_formatted_with_alpaca_template(tmp_path):
    path = tmp_path / "inst.csv"
    path.write_text('instruction,input,output\nSay hi.,,Hi!\n"Add, please.","1\n2",3\n', "utf-8")
    summary = validate_file(path, "inst.csv")
    assert (summary.format, summary.shape, summary.num_rows) == ("csv", "instruction", 2)
    assert list(iter_records(path, "csv")) == [
        {"prompt": format_instruction("Say hi.", ""), "completion": "Hi!"},
        {"prompt": format_instruction("Add, please.", "1\n2"), "completion": "3"},
    ]


def test_instruction_input_is_optional_in_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "i.jsonl",
        [{"instruction": "Do it.", "output": "Done."}, {"instruction": "Do it.", "input": None, "output": "Done."}],
    )
    assert [r["prompt"] for r in iter_records(path, "jsonl")] == [format_instruction("Do it.", "")] * 2


def test_tsv_text(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tsource\nhello, world\twiki\nsecond, row\tweb\n", "utf-8")
    summary = validate_file(path, "t.tsv")
    assert (summary.format, summary.shape, summary.num_rows, summary.columns) == ("csv", "text", 2, ["text", "source"])
    assert list(iter_records(path, "csv")) == [{"text": "hello, world"}, {"text": "second, row"}]


def test_tsv_stored_without_extension_sniffs_tab(tmp_path):
    path = tmp_path / "stored-upload"
    path.write_text("text\tsource\nhello, world\twiki\n", "utf-8")
    assert validate_file(path, "t.tsv").num_rows == 1
    assert list(iter_records(path, "csv")) == [{"text": "hello, world"}]


def test_parquet_text(tmp_path):
    path = tmp_path / "t.parquet"
    table = pa.table({"text": [f"document {i}" for i in range(600)], "n": list(range(600))})
    pq.write_table(table, path, row_group_size=250)
    summary = validate_file(path, "t.parquet")
    assert (summary.format, summary.shape, summary.num_rows, summary.columns) == ("parquet", "text", 600, ["text", "n"])
    records = list(iter_records(path, "parquet"))
    assert len(records) == 600 and records[599] == {"text": "document 599"}


def test_parquet_chat_list_of_structs(tmp_path):
    path = tmp_path / "c.parquet"
    messages = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    pq.write_table(pa.table({"messages": messages}), path)
    assert validate_file(path, "c.parquet").shape == "chat"
    assert list(iter_records(path, "parquet")) == [{"messages": messages[0]}]


def test_parquet_null_and_non_string_values(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"], "completion": ["x", "y", None]}), path)
    errors = errors_of(path)
    assert [(e.line, e.field, e.message) for e in errors] == [
        (2, "prompt", "must be a string, got null"),
        (3, "completion", "must be a string, got null"),
    ]


def test_bom_is_accepted(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "hi"}\n')
    assert validate_file(path, "b.jsonl").num_rows == 1
    csv_path = tmp_path / "b.csv"
    csv_path.write_bytes(b"\xef\xbb\xbftext\nhi\n")
    assert validate_file(csv_path, "b.csv").columns == ["text"]


def test_csv_long_field_is_accepted(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text\n" + '"' + "x" * 300_000 + '"\n', "utf-8")
    assert validate_file(path, "long.csv").num_rows == 1


def test_token_estimate_is_ceil_of_utf8_bytes_over_four(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "abcde"}, {"text": "é" * 4}])  # 5 bytes, 8 bytes
    assert validate_file(path, "t.jsonl").token_estimate == 2 + 2


# --------------------------------------------------------------------------------------------------
# column mapping and completion separator


def test_column_mapping_renames_and_drops(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("question,sql,extra\nHow many?,SELECT COUNT(*) FROM t,zzz\n", "utf-8")
    mapping = {"question": "prompt", "sql": "completion"}
    summary = validate_file(path, "m.csv", column_mapping=mapping)
    assert (summary.shape, summary.columns) == ("prompt_completion", ["question", "sql", "extra"])
    assert list(iter_records(path, "csv", column_mapping=mapping)) == [
        {"prompt": "How many?", "completion": "SELECT COUNT(*) FROM t"}
    ]


def test_column_mapping_missing_source_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"question": "a", "sql": "b"}, {"question": "a"}])
    assert one_error(path, column_mapping={"question": "prompt", "sql": "completion"}) == (
        2,
        "sql",
        "missing column (mapped to 'completion')",
    )


def test_column_mapping_errors_name_the_source_column(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"q": "a", "a": 5}])
    assert one_error(path, column_mapping={"q": "prompt", "a": "completion"}) == (
        1,
        "a",
        "must be a string, got number",
    )
    path = write_jsonl(tmp_path / "c.jsonl", [{"conv": [{"role": "bot", "content": "x"}]}])
    line, field, message = one_error(path, column_mapping={"conv": "messages"})
    assert (line, field) == (1, "conv[0].role") and "got 'bot'" in message


@pytest.mark.parametrize(
    "mapping",
    [
        {"question": "query"},
        {1: "prompt"},
        {"q": 3},
        {"": "prompt"},
        {"a": "prompt", "b": "prompt"},
        ["prompt"],
    ],
)
def test_check_column_mapping_rejects(mapping):
    with pytest.raises(ValueError, match="column_mapping"):
        check_column_mapping(mapping)


def test_check_column_mapping_accepts_and_validate_file_checks(tmp_path):
    check_column_mapping(None)
    check_column_mapping({"q": "prompt", "a": "completion", "i": "input"})
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "hi"}])
    with pytest.raises(ValueError, match="'query'"):
        validate_file(path, "x.jsonl", column_mapping={"question": "query"})


def test_completion_separator_splits_at_last_occurrence(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": "Q: what is A: ?\nA: SELECT 1"}])
    summary = validate_file(path, "s.jsonl", completion_separator="\nA: ")
    assert summary.shape == "prompt_completion"
    assert list(iter_records(path, "jsonl", completion_separator="\nA: ")) == [
        {"prompt": "Q: what is A: ?\nA: ", "completion": "SELECT 1"}
    ]


def test_completion_separator_errors(tmp_path):
    rows = [{"text": "x\nA: y"}, {"text": "no separator"}, {"text": "z\nA:  "}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    errors = errors_of(path, completion_separator="\nA: ")
    assert [(e.line, e.field) for e in errors] == [(2, "text"), (3, "text")]
    assert "does not contain the completion separator" in errors[0].message
    assert "empty completion" in errors[1].message
    with pytest.raises(ValueError, match="completion_separator"):
        validate_file(path, "s.jsonl", completion_separator="")


def test_completion_separator_on_non_text_rows(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "a", "completion": "b"}])
    line, field, message = one_error(path, completion_separator="\nA: ")
    assert (line, field) == (1, None) and "only to text records" in message


def test_mapping_then_separator(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"body": "p ### c", "other": 1}])
    options = {"column_mapping": {"body": "text"}, "completion_separator": " ### "}
    assert validate_file(path, "s.jsonl", **options).shape == "prompt_completion"
    assert list(iter_records(path, "jsonl", **options)) == [{"prompt": "p ### ", "completion": "c"}]


# --------------------------------------------------------------------------------------------------
# the shared real datasets


def shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def test_wikisql_with_completion_separator():
    path = shared("wikisql/train.jsonl")
    summary = validate_file(path, "train.jsonl", completion_separator="\nA: ")
    assert (summary.format, summary.shape, summary.num_rows) == ("jsonl", "prompt_completion", 1000)
    assert summary.columns == ["text"] and summary.token_estimate > 1000
    records = list(iter_records(path, "jsonl", completion_separator="\nA: "))
    assert len(records) == 1000
    assert all(r["completion"].startswith("SELECT") and r["prompt"].endswith("\nA: ") for r in records)
    assert records[0]["prompt"].startswith("table: ")


def test_wikisql_without_separator_is_text():
    summary = validate_file(shared("wikisql/valid.jsonl"), "valid.jsonl")
    assert (summary.shape, summary.num_rows) == ("text", 100)


def test_alpaca_demo():
    path = shared("alpaca/alpaca_en_demo.json")
    summary = validate_file(path, "alpaca_en_demo.json")
    assert (summary.format, summary.shape, summary.num_rows) == ("json", "instruction", 999)
    assert summary.columns == ["instruction", "input", "output"] and summary.token_estimate > 0
    raw = json.loads(path.read_text("utf-8"))
    records = list(iter_records(path, "json"))
    assert len(records) == 999
    assert records[0] == {
        "prompt": format_instruction(raw[0]["instruction"], raw[0]["input"]),
        "completion": raw[0]["output"],
    }
    with_input = next(i for i, r in enumerate(raw) if r["input"])
    assert "### Input:\n" + raw[with_input]["input"] in records[with_input]["prompt"]


def test_rows_with_a_sql_schema_are_counted_and_keep_their_schema_column(tmp_path):
    schema = "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1);"
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": f"{schema}\nQ: a?\nSQL: ", "completion": "SELECT a FROM t"},
            {"prompt": "Q: how many?\nSQL: ", "completion": "SELECT count(*) FROM t", "schema": schema},
            {"prompt": "Q: no database here\nSQL: ", "completion": "SELECT 1"},
        ],
    )
    summary = validate_file(path, "d.jsonl")
    assert (summary.sql_schema_rows, summary.first_line_without_sql_schema) == (2, 3)
    records = list(iter_records(path, "jsonl"))
    assert records[1]["schema"] == schema and "schema" not in records[0]
    # a `schema` that is not text (a JSON Schema object, say) is another kind of column: ignored, as before
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": "p", "completion": "c", "schema": {"type": "object"}}])
    assert validate_file(other, "other.jsonl").sql_schema_rows == 0
    assert list(iter_records(other, "jsonl")) == [{"prompt": "p", "completion": "c"}]
