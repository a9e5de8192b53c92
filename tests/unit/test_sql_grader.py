"""Tests for the SQL graders (worker/evaluation/sql_grader.py) and the schema finder they build each row's database
from (app/core/sql_schema.py): finding statements in prompts, extracting a model's SQL, scoring validity and
execution, and hostile queries and schemas, each shown refused without its side effect and within the time bound.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from app.core.sql_schema import SqlSchema, find_schema
from worker.evaluation import sql_grader
from worker.evaluation.sql_grader import extract_sql, sql_execution, sql_valid

SCHEMA_TEXT = """CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, country TEXT, age INTEGER);
INSERT INTO singer VALUES (1, 'Ann', 'France', 30);
INSERT INTO singer VALUES (2, 'Bob', 'Spain', 41), (3, 'Cid', 'France', 25);
INSERT INTO singer (name, country, age) VALUES ('Dee', 'Chile', 41);
"""
SCHEMA = find_schema(SCHEMA_TEXT)
SINGERS = 4
EMPTY_SCHEMA = find_schema("CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT);")
# 30 rows: a join of two copies has 900 rows, of three 27,000 (past MAX_RESULT_ROWS).
NUMBERS = find_schema(
    "CREATE TABLE n (x INTEGER);\nINSERT INTO n VALUES " + ", ".join(f"({i})" for i in range(30)) + ";"
)
# The bound a hostile row must keep (the grader's own is ROW_TIMEOUT_S, about 2 s), with room for a loaded machine.
ROW_BOUND_S = 3.0


def count_after(sql: str, schema: SqlSchema = SCHEMA) -> tuple[list[tuple] | None, list[tuple] | None]:
    """What `sql` returns on the row's database, then what a count of the singers returns on the same database
    afterwards: the grader's own path for both, so a write that got through would show in the count."""
    with sql_grader._row_database(schema) as database:
        return database.run(sql), database.run("SELECT count(*) FROM singer")


def timed(grade, *args) -> tuple[float | None, float]:
    started = time.monotonic()
    score = grade(*args)
    return score, time.monotonic() - started


# --------------------------------------------------------------------------------------------------
# find_schema


def test_find_schema_in_a_prompt_of_prose_and_sql():
    prompt = (
        "You are an expert in SQLite. Given the tables below, answer the question.\n"
        + SCHEMA_TEXT
        + "\nQuestion: how many singers are from France? Do not CREATE TABLE or INSERT INTO anything."
    )
    schema = find_schema(prompt)
    assert schema.creates == (
        "CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, country TEXT, age INTEGER);",
    )
    assert schema.inserts == (
        "INSERT INTO singer VALUES (1, 'Ann', 'France', 30);",
        "INSERT INTO singer VALUES (2, 'Bob', 'Spain', 41), (3, 'Cid', 'France', 25);",
        "INSERT INTO singer (name, country, age) VALUES ('Dee', 'Chile', 41);",
    )
    assert schema.has_data


def test_find_schema_in_fenced_blocks_with_and_without_semicolons():
    prompt = (
        "Schema:\n```sql\nCREATE TABLE a (x INTEGER)\nCREATE TABLE b (y TEXT);\n```\n"
        "Rows:\n```\nINSERT INTO a VALUES (1)\n```\nWhich x are there?"
    )
    schema = find_schema(prompt)
    assert schema.creates == ("CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y TEXT);")
    assert schema.inserts == ("INSERT INTO a VALUES (1);",)


def test_find_schema_statement_ended_by_a_blank_line_or_running_past_one():
    text = "CREATE TABLE a (x INTEGER)\n\nCREATE TABLE b (\n  y INTEGER,\n\n  z TEXT\n);\nWhat is in b?"
    assert find_schema(text).creates == (
        "CREATE TABLE a (x INTEGER);",
        "CREATE TABLE b (\n  y INTEGER,\n\n  z TEXT\n);",
    )


def test_find_schema_semicolon_inside_a_string_literal():
    text = "CREATE TABLE note (body TEXT DEFAULT 'a;b');\nINSERT INTO note VALUES ('one; two; CREATE TABLE x (y)');"
    schema = find_schema(text)
    assert schema.creates == ("CREATE TABLE note (body TEXT DEFAULT 'a;b');",)
    assert schema.inserts == ("INSERT INTO note VALUES ('one; two; CREATE TABLE x (y)');",)


@pytest.mark.parametrize(
    "text",
    ["", "What is the capital of France?", "Write no CREATE TABLE statement.", "INSERT INTO t VALUES (1);"],
)
def test_find_schema_none_without_a_create_table(text):
    assert find_schema(text) is None


def test_find_schema_without_inserts_has_no_data():
    assert EMPTY_SCHEMA.creates and not EMPTY_SCHEMA.has_data


def test_find_schema_hostile_text_is_fast():
    texts = ["CREATE TABLE t('" + ";" * 50] * 4000, ["CREATE TABLE t(a " + "x" * 199_000], ["[" * 200_000]
    for text in texts:
        started = time.monotonic()
        find_schema("".join(text))
        assert time.monotonic() - started < 1.0


# --------------------------------------------------------------------------------------------------
# extract_sql


@pytest.mark.parametrize(
    ("output", "sql"),
    [
        ("Here you go:\n```sql\nSELECT name FROM singer;\n```\nIt lists the names.", "SELECT name FROM singer;"),
        ("```\nSELECT 1\n```", "SELECT 1"),
        ("```sql SELECT 1```", "SELECT 1"),
        ("```sql\nSELECT 1 FROM singer", "SELECT 1 FROM singer"),  # a generation cut short inside its block
        ("```python\nprint(1)\n```\n```sql\nSELECT 2;\n```", "SELECT 2;"),
        ("SELECT name FROM singer; This returns every name.", "SELECT name FROM singer;"),
        ("SELECT 'a;b' FROM singer; -- the ';' in the string is no end", "SELECT 'a;b' FROM singer;"),
        ("  SELECT count(*) FROM singer  \n", "SELECT count(*) FROM singer"),
        ("", ""),
    ],
)
def test_extract_sql(output, sql):
    assert extract_sql(output) == sql


# --------------------------------------------------------------------------------------------------
# sql_valid


def test_sql_valid_good_query():
    assert sql_valid("```sql\nSELECT name FROM singer WHERE country = 'France';\n```", SCHEMA) == 1.0


def test_sql_valid_on_empty_tables():
    assert sql_valid("SELECT name FROM singer", EMPTY_SCHEMA) == 1.0


@pytest.mark.parametrize(
    "output",
    ["SELECT height FROM singer", "SELEC name FROM singer", "SELECT name FROM nobody", "", "   ", "-- nothing"],
)
def test_sql_valid_refuses_what_does_not_run(output):
    assert sql_valid(output, SCHEMA) == 0.0


def test_sql_valid_refuses_explain():
    assert sql_valid("EXPLAIN SELECT name FROM singer", SCHEMA) == 0.0


# --------------------------------------------------------------------------------------------------
# sql_execution


def test_sql_execution_same_rows_in_another_order():
    reference = "SELECT name, age FROM singer WHERE age > 26"
    assert sql_execution("SELECT name, age FROM singer WHERE age >= 30 ORDER BY name DESC", reference, SCHEMA) == 1.0


def test_sql_execution_rows_are_a_multiset():
    reference = "SELECT country FROM singer"  # France twice
    assert sql_execution("SELECT DISTINCT country FROM singer", reference, SCHEMA) == 0.0


def test_sql_execution_order_counts_when_the_reference_orders():
    reference = "SELECT name FROM singer ORDER BY age, name;"
    assert sql_execution("SELECT name FROM singer ORDER BY age, name", reference, SCHEMA) == 1.0
    assert sql_execution("SELECT name FROM singer ORDER BY name", reference, SCHEMA) == 0.0


def test_sql_execution_order_by_inside_a_subquery_does_not_order_the_result():
    reference = "SELECT name FROM (SELECT name FROM singer ORDER BY name) WHERE name <> 'x'"
    assert sql_execution("SELECT name FROM singer ORDER BY name DESC", reference, SCHEMA) == 1.0


def test_sql_execution_values_compare_as_python_values_and_names_do_not_count():
    assert sql_execution("SELECT count(*) AS n FROM singer", f"SELECT {SINGERS}.0 AS total", SCHEMA) == 1.0


def test_sql_execution_different_result():
    assert sql_execution("SELECT name FROM singer WHERE age > 40", "SELECT name FROM singer", SCHEMA) == 0.0


def test_sql_execution_output_that_fails_scores_zero():
    assert sql_execution("SELECT height FROM singer", "SELECT name FROM singer", SCHEMA) == 0.0


def test_sql_execution_none_without_data():
    assert sql_execution("SELECT name FROM singer", "SELECT name FROM singer", EMPTY_SCHEMA) is None


def test_sql_execution_none_when_the_reference_fails():
    assert sql_execution("SELECT name FROM singer", "SELECT height FROM singer", SCHEMA) is None


def test_size_checked_functions_answer_as_sqlite_does():
    """instr, replace, trim, LIKE and GLOB run behind a size check: on ordinary values, SQLite's own results."""
    query = (
        "SELECT replace(name, 'n', 'N'), instr(country, 'a'), trim('xxAnnxx', 'x'), ltrim(age, '4'),"
        " rtrim(1.50, '0'), replace(age * 1.5, '.', ','), name LIKE 'a%', name GLOB 'A*', 'a_c' LIKE 'a!_c' ESCAPE '!'"
        " FROM singer ORDER BY id"
    )
    plain = sqlite3.connect(":memory:")
    plain.executescript(SCHEMA_TEXT)
    with sql_grader._row_database(SCHEMA) as database:
        assert database.run(query) == plain.execute(query).fetchall()
    plain.close()


# --------------------------------------------------------------------------------------------------
# hostile queries: refused, without their side effect


def test_attach_refused_and_no_file(tmp_path: Path):
    target = tmp_path / "x.db"
    assert sql_valid(f"ATTACH DATABASE '{target}' AS x", SCHEMA) == 0.0
    assert sql_execution(f"ATTACH DATABASE '{target}' AS x", "SELECT 1", SCHEMA) == 0.0
    assert not target.exists()


def test_vacuum_into_refused_and_no_file(tmp_path: Path):
    target = tmp_path / "y.db"
    assert sql_valid(f"VACUUM INTO '{target}'", SCHEMA) == 0.0
    assert not target.exists()


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO singer (name) VALUES ('Eve')",
        "UPDATE singer SET name = 'Zed'",
        "DELETE FROM singer",
        "DROP TABLE singer",
        "ALTER TABLE singer RENAME TO s",
        "CREATE TABLE other (x)",
        "CREATE TEMP TABLE other (x)",
        "REPLACE INTO singer (id, name) VALUES (1, 'Zed')",
        "WITH d AS (SELECT 1) DELETE FROM singer",
        "BEGIN",
        "PRAGMA query_only = OFF",
    ],
)
def test_writes_refused_and_the_data_unchanged(statement):
    assert sql_valid(statement, SCHEMA) == 0.0
    result, count = count_after(statement)
    assert result is None
    assert count == [(SINGERS,)]


def test_writes_refused_even_after_turning_query_only_off_is_tried():
    with sql_grader._row_database(SCHEMA) as database:
        assert database.run("PRAGMA query_only = OFF") is None
        assert database.run("DELETE FROM singer") is None
        assert database.run("SELECT count(*) FROM singer") == [(SINGERS,)]


def test_pragma_writable_schema_refused():
    assert sql_valid("PRAGMA writable_schema = 1", SCHEMA) == 0.0
    assert sql_valid("SELECT * FROM pragma_table_info('singer')", SCHEMA) == 0.0


@pytest.mark.parametrize(
    "query", ["SELECT load_extension('x')", "SELECT fts3_tokenizer('simple')", "SELECT printf('%d', 1)"]
)
def test_denied_functions(query):
    assert sql_valid(query, SCHEMA) == 0.0


def test_only_the_first_statement_counts():
    output = "SELECT 1; DROP TABLE singer"
    assert extract_sql(output) == "SELECT 1;"
    assert sql_valid(output, SCHEMA) == 1.0
    result, count = count_after(extract_sql(output))
    assert result == [(1,)]
    assert count == [(SINGERS,)]
    # handed both statements at once, the driver refuses the second (and with it the whole text)
    result, count = count_after(output)
    assert result is None
    assert count == [(SINGERS,)]


def test_endless_recursive_cte_stopped_by_the_deadline():
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    score, elapsed = timed(sql_valid, endless, SCHEMA)
    assert score == 0.0
    assert elapsed < ROW_BOUND_S
    score, elapsed = timed(sql_execution, endless, "SELECT count(*) FROM singer", SCHEMA)
    assert score == 0.0
    assert elapsed < ROW_BOUND_S


@pytest.mark.parametrize(
    "query",
    [
        "SELECT randomblob(1000000000)",
        "SELECT zeroblob(1000000000)",
        "SELECT length(hex(zeroblob(600000)))",  # 1.2 MB of text: past the length limit too
        "SELECT length(printf('%.*c', 2000000000, 'x'))",  # 2**31 loops in one call, were it run
    ],
)
def test_huge_values_refused_quickly(query):
    score, elapsed = timed(sql_valid, query, SCHEMA)
    assert score == 0.0
    assert elapsed < 0.5


@pytest.mark.parametrize(
    "query",
    [
        # each a single call that SQLite would run for seconds to minutes, out of the deadline's reach
        "SELECT instr(hex(zeroblob(400000)), hex(zeroblob(200000)) || '1')",
        "SELECT replace(hex(zeroblob(400000)), hex(zeroblob(200000)) || '1', '')",
        "SELECT ltrim(hex(zeroblob(400000)), hex(randomblob(50000)))",
        "SELECT hex(zeroblob(400000)) GLOB '*[' || hex(randomblob(45)) || ']*'",
        "SELECT json_patch('{\"a\":1}', '{\"b\":2}')",
    ],
)
def test_quadratic_calls_refused_quickly(query):
    score, elapsed = timed(sql_valid, query, SCHEMA)
    assert score == 0.0
    assert elapsed < 0.5


def test_result_of_more_than_the_row_limit_refused():
    assert sql_valid("SELECT a.x, b.x FROM n a, n b", NUMBERS) == 1.0  # 900 rows
    assert sql_valid("SELECT a.x, b.x, c.x FROM n a, n b, n c", NUMBERS) == 0.0  # 27,000 rows
    reference = "SELECT a.x FROM n a, n b, n c"
    assert sql_execution("SELECT 1", reference, NUMBERS) is None  # a reference past the limit says nothing


def test_result_of_more_than_the_byte_limit_refused():
    wide = "SELECT " + ", ".join(["zeroblob(900000)"] * 20) + " FROM n"  # 18 MB a row
    assert sql_valid(wide, NUMBERS) == 0.0


# --------------------------------------------------------------------------------------------------
# hostile row schemas: skipped statements, nothing reached, no hang


def test_schema_with_attach_does_not_escape(tmp_path: Path):
    target = tmp_path / "x.db"
    text = f"CREATE TABLE t (a);\nATTACH DATABASE '{target}' AS x;\nCREATE TABLE x.u (b);\nINSERT INTO t VALUES (1);"
    schema = find_schema(text)
    assert schema.creates == ("CREATE TABLE t (a);", "CREATE TABLE x.u (b);")
    assert sql_valid("SELECT count(*) FROM t", schema) == 1.0
    # handed to the grader as a schema statement (not through find_schema), ATTACH and VACUUM INTO are refused
    hostile = SqlSchema(
        creates=("CREATE TABLE t (a);", f"ATTACH DATABASE '{target}' AS x;", f"VACUUM INTO '{tmp_path / 'y.db'}';"),
        inserts=("INSERT INTO t VALUES (1);",),
    )
    assert sql_execution("SELECT a FROM t", "SELECT 1", hostile) == 1.0
    assert list(tmp_path.iterdir()) == []


def test_schema_with_other_statements_skips_them():
    schema = SqlSchema(
        creates=(
            "CREATE TABLE t (a);",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END;",
            "CREATE VIEW v AS SELECT 1;",
            "CREATE TEMP TABLE tt (a);",
            "PRAGMA writable_schema = 1;",
            "CREATE TABLE broken (;",
        ),
        inserts=("INSERT INTO t VALUES (1), (2);", "DELETE FROM t;", "INSERT INTO nowhere VALUES (1);"),
    )
    assert sql_execution("SELECT count(*) FROM t", "SELECT 2", schema) == 1.0
    assert sql_valid("SELECT * FROM v", schema) == 0.0
    assert sql_valid("SELECT * FROM tt", schema) == 0.0


def test_schema_with_an_endless_recursive_cte_does_not_hang():
    text = (
        "CREATE TABLE t (a);\nINSERT INTO t VALUES (1);\n"
        "CREATE TABLE big AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c;"
    )
    schema = find_schema(text)
    assert len(schema.creates) == 2
    score, elapsed = timed(sql_execution, "SELECT a FROM t", "SELECT 1", schema)
    assert score == 1.0
    assert elapsed < ROW_BOUND_S
    assert sql_valid("SELECT count(*) FROM big", schema) == 0.0  # refused at build: there is no table big


def test_schema_that_multiplies_rows_stops_at_the_build_deadline():
    text = (
        "CREATE TABLE t (a);\nINSERT INTO t VALUES " + ", ".join(f"({i})" for i in range(100)) + ";\n"
        "INSERT INTO t SELECT randomblob(1000) FROM t, t t2, t t3, t t4, t t5;\n"
        "INSERT INTO t SELECT 1 FROM t, t t2, t t3, t t4, t t5, t t6;"
    )
    score, elapsed = timed(sql_valid, "SELECT count(*) FROM t", find_schema(text))
    assert score == 1.0
    assert elapsed < ROW_BOUND_S
