"""The task graders of `evaluation.graders` (app/core/graders.py) applied to generated outputs: each row scored 1.0
or 0.0 under the grader's name, or left without that score where the grader cannot apply to the row (sql_execution
on a row whose database has no data). Pure functions of the strings; no torch.

exact_match's normalization, the one documented in the API: both texts stripped, every run of whitespace made one
space, case folded (str.casefold), then trailing punctuation . , ; : ! ? removed (with any whitespace it leaves).
"SELECT name FROM t." equals "select  name from t", and "42" does not equal "42.0".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from app.core.graders import SQL_GRADERS, compile_json_schema, compile_regex
from app.datasets.sql_rows import record_sql_schema

_WHITESPACE = re.compile(r"\s+")
_TRAILING_PUNCTUATION = ".,;:!?"
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.DOTALL)


def normalize_answer(text: str) -> str:
    text = _WHITESPACE.sub(" ", text.strip()).casefold()
    return text.rstrip(_TRAILING_PUNCTUATION + " ")


def exact_match(output: str, reference: str) -> float:
    return float(normalize_answer(output) == normalize_answer(reference))


def fenced_or_whole(output: str) -> str:
    """The first ``` fenced block of an output, or the whole output: models often wrap JSON or SQL in a fence."""
    found = _FENCE.search(output)
    return (found.group(1) if found else output).strip()


_NOT_JSON = object()


def parse_json(output: str):
    try:
        return json.loads(fenced_or_whole(output))
    except (ValueError, RecursionError):  # RecursionError: a deeply nested output
        return _NOT_JSON


@dataclass
class Grading:
    """Per generation row, the graders' scores; and per grader that left rows unscored, why."""

    rows: list[dict[str, float]]
    skipped: dict[str, str] = field(default_factory=dict)


def grade(graders: list, outputs: list[str], references: list[str], records: list[dict]) -> Grading:
    """Every grader on every row. `records` are the rows as normalized (app/datasets), aligned with the outputs:
    the SQL graders find each row's database in them."""
    rows: list[dict[str, float]] = [{} for _ in outputs]
    skipped: dict[str, str] = {}
    schemas = [record_sql_schema(r) for r in records] if any(g.type in SQL_GRADERS for g in graders) else []
    for grader in graders:
        name = grader.type
        score = _scorer(grader)
        unscored = 0
        for i, (output, reference) in enumerate(zip(outputs, references)):
            value = score(output, reference, schemas[i] if schemas else None)
            if value is None:
                unscored += 1
            else:
                rows[i][name] = value
        if unscored:
            skipped[name] = f"{unscored} of {len(outputs)} rows not scored: {_WHY_UNSCORED[name]}"
    return Grading(rows, skipped)


_WHY_UNSCORED = {
    "sql_valid": "the row has no CREATE TABLE statements",
    "sql_execution": "the row has no database with data (no CREATE TABLE, or no INSERT), or its reference SQL "
    "does not run on it",
}


def _scorer(grader):
    """(output, reference, row's SqlSchema or None) -> 1.0, 0.0 or None, for one grader's settings."""
    if grader.type == "exact_match":
        return lambda output, reference, _schema: exact_match(output, reference)
    if grader.type == "json_valid":
        return lambda output, _reference, _schema: float(parse_json(output) is not _NOT_JSON)
    if grader.type == "json_schema":
        validator = compile_json_schema(grader.json_schema)

        def matches(output, _reference, _schema):
            value = parse_json(output)
            return float(value is not _NOT_JSON and validator.is_valid(value))

        return matches
    if grader.type == "regex":
        pattern = compile_regex(grader.pattern, grader.ignore_case)
        return lambda output, _reference, _schema: float(pattern.search(output) is not None)
    from worker.evaluation import sql_grader

    if grader.type == "sql_valid":
        return lambda output, _reference, schema: None if schema is None else sql_grader.sql_valid(output, schema)
    if grader.type == "sql_execution":
        return lambda output, reference, schema: (
            None if schema is None else sql_grader.sql_execution(output, reference, schema)
        )
    raise ValueError(f"unknown grader {grader.type!r}")
