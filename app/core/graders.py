"""Task graders a job or sweep asks for in `evaluation.graders`: whether an output is *right* for the task, where
ROUGE and BERTScore only say how much it overlaps the reference. Each grader scores every generated row 1 or 0
(or no score, where it cannot apply to that row), stored per row like the other metrics, so the leaderboard
recomputes and bootstraps it and a sweep can select on it. Its metric name is its type.

The request's shape and the checks that refuse a grader before anything runs (a JSON Schema that does not
compile, a regular expression outside RE2's linear-time syntax) live here, in the core, so the API validates with
the same compilers the worker scores with (worker/evaluation/graders.py):

- JSON Schema by jsonschema-rs (Rust), offline (a `$ref` to a URL is an error, never a request from the server) and
  with Rust's linear-time regex crate for `pattern` keywords, so a schema cannot hide a catastrophic pattern;
- regular expressions by RE2 (google-re2), whose matching time is linear in the output by construction: the
  patterns that can backtrack catastrophically (backreferences, lookaround) do not compile and are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

GraderName = Literal["exact_match", "json_valid", "json_schema", "regex", "sql_valid", "sql_execution"]
GRADER_NAMES: tuple[str, ...] = get_args(GraderName)
SQL_GRADERS = frozenset({"sql_valid", "sql_execution"})
MAX_PATTERN_CHARS = 1000
RE2_MAX_MEM = 8 << 20  # bytes for one compiled pattern: RE2 refuses a pattern whose program needs more


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExactMatch(_Grader):
    """1 when the output equals the reference after normalization: both stripped, runs of whitespace made one
    space, case folded, and trailing punctuation (. , ; : ! ?) removed."""

    type: Literal["exact_match"]


class JsonValid(_Grader):
    """1 when the output (or the first ``` fenced block in it) parses as JSON."""

    type: Literal["json_valid"]


class JsonSchema(_Grader):
    """1 when the output parses as JSON and the value matches `json_schema`."""

    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(
        ...,
        description="a JSON Schema (draft 4 to 2020-12, by its $schema; default 2020-12). Checked when the job is "
        "created: it must compile offline ($ref only within the schema) and its patterns must be linear-time",
    )

    @field_validator("json_schema")
    @classmethod
    def _compiles(cls, schema: dict[str, Any]) -> dict[str, Any]:
        compile_json_schema(schema)
        return schema


class Regex(_Grader):
    """1 when `pattern` matches somewhere in the output (re.search semantics: anchor with ^ and $ to demand the
    whole output)."""

    type: Literal["regex"]
    pattern: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PATTERN_CHARS,
        description="an RE2 regular expression (Python syntax without backreferences or lookaround, which RE2 "
        "refuses: its matching time is linear, so no pattern can hang the evaluation)",
    )
    ignore_case: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        compile_regex(pattern, False)
        return pattern


class SqlValid(_Grader):
    """Text-to-SQL: 1 when the output is one read-only SQL statement that runs on the row's database (the
    CREATE TABLE statements in its prompt or its `schema` column, and its INSERTs), in SQLite."""

    type: Literal["sql_valid"]


class SqlExecution(_Grader):
    """Text-to-SQL: 1 when the output returns the same result set as the reference SQL on the row's data (the
    INSERT statements in its prompt or `schema` column); rows without data are not scored."""

    type: Literal["sql_execution"]


Grader = Annotated[ExactMatch | JsonValid | JsonSchema | Regex | SqlValid | SqlExecution, Field(discriminator="type")]


def compile_json_schema(schema: dict[str, Any]):
    """A jsonschema-rs validator for `schema`, or ValueError saying why it does not compile."""
    import jsonschema_rs

    try:
        return jsonschema_rs.validator_for(schema, pattern_options=jsonschema_rs.RegexOptions(), offline=True)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        first = str(exc).split("\n", 1)[0]
        raise ValueError(f"the JSON Schema does not compile: {first}") from None


def compile_regex(pattern: str, ignore_case: bool):
    """The RE2 pattern, or ValueError saying why it does not compile."""
    import re2

    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.case_sensitive = not ignore_case
    options.log_errors = False  # the error is the caller's to report, not a line on the server's stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"the pattern does not compile in RE2 ({why}); RE2 has no backreferences or lookaround, "
            "the constructs whose matching time can explode"
        ) from None
