"""The task graders on fixed strings (worker/evaluation/graders.py) and the checks that refuse a grader before
anything runs (app/core/graders.py): what each scores, the documented exact_match normalization, and that a regular
expression or a JSON Schema cannot make matching slow."""

from __future__ import annotations

import time

import pytest
from pydantic import TypeAdapter, ValidationError

from app.core.graders import GRADER_NAMES, Grader
from app.core.job_spec import EvaluationSpec
from app.core.metrics import METRIC_NAMES, RankMetric, SelectionMetric
from worker.evaluation.graders import exact_match, grade, normalize_answer

GRADER = TypeAdapter(Grader)


def one(spec: dict, output: str, reference: str = "", record: dict | None = None) -> float | None:
    grading = grade([GRADER.validate_python(spec)], [output], [reference], [record or {}])
    return grading.rows[0].get(spec["type"])


# ------------------------------------------------------------------ exact_match


@pytest.mark.parametrize(
    ("output", "reference", "score"),
    [
        ("Paris", "Paris", 1.0),
        ("  paris.\n", "Paris", 1.0),  # whitespace, case, trailing punctuation
        ("SELECT  name\nFROM t;", "select name from t", 1.0),  # runs of whitespace are one space
        ("New York!?", "new york", 1.0),
        ("42", "42.0", 0.0),  # numbers are not parsed
        ("Paris, France", "Paris", 0.0),
        ("", "Paris", 0.0),
        ("", "", 1.0),
        ("a . b", "a b", 0.0),  # only trailing punctuation goes
    ],
)
def test_exact_match_normalizes_whitespace_case_and_trailing_punctuation(output, reference, score):
    assert exact_match(output, reference) == score
    assert one({"type": "exact_match"}, output, reference) == score


def test_normalize_answer_is_what_the_docs_say():
    assert normalize_answer("  The  ANSWER:\t42 ...  ") == "the answer: 42"


# ------------------------------------------------------------------ JSON


@pytest.mark.parametrize(
    ("output", "score"),
    [
        ('{"a": 1}', 1.0),
        ('```json\n{"a": [1, 2]}\n```\nThat is the object.', 1.0),  # the first fenced block
        ("[1, 2, 3]", 1.0),
        ("null", 1.0),
        ("{'a': 1}", 0.0),  # Python, not JSON
        ('{"a": 1', 0.0),
        ("Sure! Here it is", 0.0),
        ("", 0.0),
        ("[" * 100_000 + "]" * 100_000, 0.0),  # too deep for the parser: refused, not a crash
    ],
)
def test_json_valid(output, score):
    assert one({"type": "json_valid"}, output) == score


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("output", "score"),
    [
        ('{"name": "Ada", "age": 36}', 1.0),
        ('```\n{"name": "Ada", "age": 36}\n```', 1.0),
        ('{"name": "Ada"}', 0.0),  # missing field
        ('{"name": "Ada", "age": -1}', 0.0),
        ('{"name": "Ada", "age": 36, "x": 1}', 0.0),
        ("not json", 0.0),
    ],
)
def test_json_schema(output, score):
    assert one({"type": "json_schema", "json_schema": PERSON}, output) == score


def test_a_schema_pattern_runs_in_linear_time():
    # (a+)+$ backtracks exponentially in Python's re; the schema's patterns run on Rust's linear-time engine
    schema = {"type": "string", "pattern": "^(a+)+$"}
    t = time.monotonic()
    assert one({"type": "json_schema", "json_schema": schema}, '"' + "a" * 50_000 + '!"') == 0.0
    assert time.monotonic() - t < 1.0


# ------------------------------------------------------------------ regex


@pytest.mark.parametrize(
    ("spec", "output", "score"),
    [
        ({"pattern": r"^SELECT\b"}, "SELECT a FROM t", 1.0),
        ({"pattern": r"^SELECT\b"}, "select a FROM t", 0.0),
        ({"pattern": r"^SELECT\b", "ignore_case": True}, "select a FROM t", 1.0),
        ({"pattern": r"\d{3}-\d{4}"}, "call 555-1234 now", 1.0),  # search: anywhere in the output
        ({"pattern": r"^\d+$"}, "12 apples", 0.0),  # anchored: the whole output
    ],
)
def test_regex(spec, output, score):
    assert one({"type": "regex", **spec}, output) == score


def test_a_pattern_that_backtracks_catastrophically_elsewhere_is_linear_here():
    t = time.monotonic()
    assert one({"type": "regex", "pattern": "^(a+)+$"}, "a" * 200_000 + "!") == 0.0
    assert one({"type": "regex", "pattern": "(x+x+)+y"}, "x" * 200_000) == 0.0
    assert time.monotonic() - t < 1.0


# ------------------------------------------------------------------ refused before anything runs


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"type": "regex", "pattern": r"(\w)\1"}, "backreferences"),  # backreference: RE2 has none
        ({"type": "regex", "pattern": "(?=a)b"}, "lookaround"),
        ({"type": "regex", "pattern": "[a-"}, "does not compile"),
        ({"type": "regex", "pattern": "((a{100}){100}){100}"}, "does not compile"),  # a program too large
        ({"type": "regex", "pattern": "x" * 1001}, "at most 1000"),
        ({"type": "json_schema", "json_schema": {"type": "strin"}}, "does not compile"),
        ({"type": "json_schema", "json_schema": {"$ref": "https://example.com/s.json"}}, "does not compile"),
        ({"type": "json_schema", "json_schema": {"$ref": "#/$defs/missing"}}, "does not compile"),
        ({"type": "json_schema", "json_schema": {"pattern": r"(a)\1"}}, "does not compile"),
        ({"type": "json_schema"}, "Field required"),
        ({"type": "bleu"}, "does not match any of the expected tags"),
        ({"type": "exact_match", "normalize": False}, "Extra inputs are not permitted"),
    ],
)
def test_bad_graders_are_refused_with_the_reason(spec, words):
    with pytest.raises(ValidationError) as info:
        GRADER.validate_python(spec)
    assert words in str(info.value)


def test_a_grader_may_appear_once():
    with pytest.raises(ValidationError, match="exact_match appears more than once"):
        EvaluationSpec.model_validate({"graders": [{"type": "exact_match"}, {"type": "exact_match"}]})


def test_every_grader_is_a_metric_to_rank_and_select_by():
    for name in GRADER_NAMES:
        assert name in METRIC_NAMES
        assert name in RankMetric.__args__
        assert name in SelectionMetric.__args__


def test_rows_a_grader_cannot_score_are_left_out_and_said_why():
    spec = GRADER.validate_python({"type": "sql_valid"})
    grading = grade([spec], ["SELECT 1", "SELECT a FROM t"], ["", ""], [{"prompt": "no schema"}, {"prompt": "x"}])
    assert grading.rows == [{}, {}]
    assert "2 of 2 rows not scored" in grading.skipped["sql_valid"]


def test_the_model_card_reports_graders_and_test_rows_beside_the_validation_rows():
    from huggingface_hub import ModelCard

    from tests.helpers.factories import job_spec
    from worker.evaluation.model_card import model_card

    spec = job_spec(evaluation={"metrics": ["rouge"], "graders": [{"type": "exact_match"}]})
    job = {"id": "ftjob-x", "model": "stories260k", "fine_tuned_model": "ft:x", "seed": 1, "test_file": "file-t"}
    val, test = {"rougeL": 0.5, "exact_match": 0.25}, {"rougeL": 0.4, "exact_match": 0.125}
    text = model_card(job, spec, {"rougeL": 0.1}, val, (10, 100), test=({"exact_match": 0.0}, test))
    card = ModelCard(text)
    assert "exact_match" in card.data.metrics
    splits = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert splits[("test", "exact_match")] == 0.125 and splits[("held-out", "exact_match")] == 0.25
    assert "## Test rows (no decision saw them" in text and "| exact_match | 0.0000 | 0.1250 |" in text
