"""The SQL graders: whether a model's text-to-SQL output runs, and whether it returns what the reference returns.

Each row is graded on its own database, built in memory from the CREATE TABLE and INSERT statements of the row
(app/core/sql_schema.py finds them):

* ``sql_valid``: 1.0 when the SQL in the output (``extract_sql``) is one read-only statement that prepares and
  runs to completion on that database within the limits below, else 0.0.
* ``sql_execution``: 1.0 when the output's result equals the reference's, else 0.0; no score (None) where the
  row cannot say: its database has no rows (every query returns nothing on empty tables), or the reference
  itself fails (a dataset problem, not the model's). Results compare as in the Spider benchmark's execution
  accuracy: as multisets of rows, unless the reference has a top-level ORDER BY (then as ordered lists); values
  as Python values (1 == 1.0); column names ignored.

The output is written by a model a tenant trained, so it is treated as hostile: whatever it holds, it must not
touch anything outside its own in-memory database, change that database, or hold the worker for more than about
ROW_TIMEOUT_S. The measures, each explained where it is set up:

* a fresh ``:memory:`` connection per row, never a file, with extension loading left off;
* ``sqlite3_limit`` bounds: no attached databases, values of at most 1 MB, statements of at most 100 KB, ...;
* an authorizer: while the schema is built, only what CREATE TABLE and INSERT need; while a query runs, only
  reading (SELECT, column reads, functions, recursive CTEs). Everything else (ATTACH, VACUUM INTO, PRAGMA, writes,
  DDL, transactions) is refused when the statement is prepared, before it can run;
* ``PRAGMA query_only`` once the schema is built, a second wall against writes;
* one statement: the output is cut after its first complete statement, and the driver refuses a second one;
* a wall-clock deadline, checked by a progress handler every PROGRESS_EVERY_OPS virtual machine instructions;
* the few built-in functions whose cost grows with the product of their arguments' lengths, where a single call
  (one VM instruction, out of the progress handler's reach) could run for minutes, are checked for size before
  SQLite runs them; printf/format ('%.*c' repeats a character 2e9 times in one call) and json_patch refused;
* at most MAX_RESULT_ROWS rows and MAX_RESULT_BYTES bytes of result are fetched; a larger result is refused.

Worker-only (nothing under app/ imports it); standard library only.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager

from app.core.sql_schema import SqlSchema, mask_literals

__all__ = ["extract_sql", "sql_execution", "sql_valid"]

# --- Time -------------------------------------------------------------------------------------------------------
# One query's wall-clock deadline: a text-to-SQL query on a database written into a prompt answers in
# milliseconds, so a second is generous for a right answer and cheap for a runaway one.
QUERY_TIMEOUT_S = 1.0
# Building the row's database from its statements: a schema of 200,000 characters builds in milliseconds; past
# this it is a hostile or broken schema, and what is built so far is what the row gets.
BUILD_TIMEOUT_S = 0.5
# Everything for one row, build and queries together: the bound the grader keeps however hostile the row.
ROW_TIMEOUT_S = 2.0
# How often SQLite calls the deadline check, in VM instructions: a Python call every 1,000 instructions costs
# about 1% of a query's time, and no one instruction runs past a few milliseconds (the value length limit, the
# size-checked and the denied functions below see to that), so 1,000 of them overrun the deadline by little.
PROGRESS_EVERY_OPS = 1_000

# --- Sizes ------------------------------------------------------------------------------------------------------
# Rows fetched from one result: a query that answers a question returns far fewer; more is a runaway join.
MAX_RESULT_ROWS = 10_000
# Bytes of result fetched (Python objects are built as rows come): 10,000 rows of ordinary values fit many
# times over, while 10,000 rows of 1 MB blobs would not fit in memory.
MAX_RESULT_BYTES = 16_000_000
# The largest string or blob (and table row): bounds every value a query can make, e.g. randomblob(1e9).
MAX_VALUE_BYTES = 1_000_000
# The longest query: generated SQL is a few hundred bytes; the bound keeps parsing and planning cheap.
MAX_QUERY_BYTES = 100_000
# The database's size (PRAGMA max_page_count): a schema written into a prompt of 200,000 characters makes a few
# MB at most, so INSERT ... SELECT statements that multiply rows stop at this instead of filling memory.
MAX_DATABASE_BYTES = 32_000_000
# instr, replace, trim(X, Y), LIKE and GLOB may compare every position of X with Y: len(X) x len(Y) steps in one
# call. Above this product (a millisecond or two) the call is refused; trim(name, ' '), replace(price, ',', '')
# or name LIKE '%smith%' stay far below on any real value.
MAX_PAIRWISE_WORK = 1_000_000

_LIMITS = {
    # ATTACH needs a slot: with none, no other database file can be opened or created (VACUUM INTO attaches too).
    sqlite3.SQLITE_LIMIT_ATTACHED: 0,
    sqlite3.SQLITE_LIMIT_LENGTH: MAX_VALUE_BYTES,
    sqlite3.SQLITE_LIMIT_SQL_LENGTH: MAX_QUERY_BYTES,
    # Columns of a table, a result, an index or an ORDER BY: schemas are rarely wider than a few dozen columns,
    # and it bounds one result row to 128 values of 1 MB before the result size check sees it.
    sqlite3.SQLITE_LIMIT_COLUMN: 128,
    # Terms of a UNION chain (multi-row VALUES are not counted): real queries have a handful.
    sqlite3.SQLITE_LIMIT_COMPOUND_SELECT: 50,
    sqlite3.SQLITE_LIMIT_FUNCTION_ARG: 32,
    # Real LIKE/GLOB patterns ('%smith%') are short; SQLite's matcher recurses on the pattern's wildcards.
    sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: 100,
    # Queries are run as text, never with parameters, and no triggers can exist.
    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER: 0,
    sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH: 0,
    # Sorting stays on the calling thread, where the deadline is checked.
    sqlite3.SQLITE_LIMIT_WORKER_THREADS: 0,
}
# The rest (expression depth, VDBE program size) keep SQLite's defaults: a 100 KB statement bounds them.

# Functions no grading needs and that reach past the database or run unbounded in one call: load_extension
# would load native code (it is also off on the connection); fts3_tokenizer hands out (and with two arguments
# takes) raw pointers; printf/format('%.*c', 2000000000, 'x') repeats a character 2e9 times inside one VM
# instruction, whatever the length limit (8 s with SQLite 3.40); json_patch compares every key of one object with
# every key of the other, also inside one instruction (minutes on two 1 MB objects).
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "printf", "format", "json_patch"})
# (name, number of arguments): built-ins whose worst case is len(arg 1) x len(arg 2) in one call. instr's and
# replace's search compare the needle at every position; trim's compares every character with the whole set;
# LIKE and GLOB (like(pattern, value[, escape]), glob(pattern, value)) may match the pattern at every position.
_SIZE_CHECKED_FUNCTIONS = (
    ("instr", 2),
    ("replace", 3),
    ("trim", 2),
    ("ltrim", 2),
    ("rtrim", 2),
    ("like", 2),
    ("like", 3),
    ("glob", 2),
)

# What a refused, failed or interrupted query raises: sqlite3.Error for SQLite's refusals (authorizer, limits,
# interrupt, syntax), sqlite3.Warning/ProgrammingError for a second statement, ValueError for a NUL character,
# MemoryError for SQLITE_NOMEM.
_QUERY_FAILURES = (sqlite3.Error, sqlite3.Warning, ValueError, MemoryError)

# A fenced block: its language (the word after the opening ```, maybe none) and its content; an unclosed fence (a
# generation cut short) runs to the end. Blocks are read in order, so a closing ``` never opens one.
_FENCED_BLOCK = re.compile(r"```([\w+-]*)(.*?)(?:```|\Z)", re.DOTALL)
_SQL_FENCE_LANGUAGES = frozenset({"", "sql", "sqlite"})
_MAX_SEMICOLONS_TRIED = 200  # ends tried for the output's first statement; each try reads it again
_EXPLAIN = re.compile(r"\s*EXPLAIN\b", re.IGNORECASE)
_PARENTHESIS_OR_ORDER_BY = re.compile(r"\(|\)|\bORDER\s+BY\b", re.IGNORECASE)


def extract_sql(output: str) -> str:
    """The SQL in a model's output: the first ```sql (or plain ```) fenced block's content when there is one,
    else the whole output; stripped, and cut after its first complete statement so that what follows it (an
    explanation, a second statement) is ignored. A trailing ';' is kept."""
    sql = next(
        (m.group(2) for m in _FENCED_BLOCK.finditer(output) if m.group(1).lower() in _SQL_FENCE_LANGUAGES), output
    ).strip()
    # One character past the longest query: a longer text still fails as too long rather than being cut short.
    return _first_statement(sql[: MAX_QUERY_BYTES + 1])


def sql_valid(output: str, schema: SqlSchema) -> float:
    """1.0 when the output's SQL is one read-only statement that runs to completion on the row's database within
    the limits, else 0.0."""
    with _row_database(schema) as database:
        return 0.0 if database.run(extract_sql(output)) is None else 1.0


def sql_execution(output: str, reference: str, schema: SqlSchema) -> float | None:
    """1.0 when the output's result set equals the reference's on the row's database, 0.0 when it differs or the
    output fails (error, timeout, refusal); None when the database has no rows or the reference fails."""
    if not schema.has_data:
        return None
    reference_sql = extract_sql(reference)
    with _row_database(schema) as database:
        expected = database.run(reference_sql)
        if expected is None:
            return None
        actual = database.run(extract_sql(output))
    if actual is None:
        return 0.0
    return 1.0 if _same_result(expected, actual, ordered=_has_top_level_order_by(reference_sql)) else 0.0


# --- Reading the SQL --------------------------------------------------------------------------------------------


def _first_statement(sql: str) -> str:
    """`sql` up to and including the first ';' that completes a statement (SQLite's own test, which skips a ';'
    in a string or comment); all of it when none does."""
    semicolons = (m.end() for m in re.finditer(";", sql))
    for _, end in zip(range(_MAX_SEMICOLONS_TRIED), semicolons):
        if sqlite3.complete_statement(sql[:end]):
            return sql[:end]
    return sql


def _has_top_level_order_by(sql: str) -> bool:
    """Whether the query's own result is ordered: an ORDER BY outside every parenthesis (not a subquery's, a
    CTE's or a window's), strings and comments aside."""
    depth = 0
    for match in _PARENTHESIS_OR_ORDER_BY.finditer(mask_literals(sql)):
        token = match.group(0)
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            return True
    return False


def _same_result(expected: list[tuple], actual: list[tuple], *, ordered: bool) -> bool:
    # Rows are tuples of Python values: 1 == 1.0 and they hash alike, so Counter compares them as multisets.
    return expected == actual if ordered else Counter(expected) == Counter(actual)


# --- The row's database -----------------------------------------------------------------------------------------


class _Deadline:
    """The progress handler: tells SQLite to interrupt the running statement once `until` has passed."""

    def __init__(self) -> None:
        self.until = math.inf  # the grader's own statements (PRAGMAs) are never interrupted

    def __call__(self) -> int:
        return 1 if time.monotonic() > self.until else 0


class _RowDatabase:
    """One row's database, built from its schema, then read-only for the queries run on it."""

    def __init__(self, connection: sqlite3.Connection, deadline: _Deadline, row_deadline: float) -> None:
        self._connection = connection
        self._deadline = deadline
        self._row_deadline = row_deadline

    def run(self, sql: str) -> list[tuple] | None:
        """The rows `sql` returns, or None when it is not a query, fails, runs past its deadline, or returns more
        than the result limits allow."""
        if not sql or _EXPLAIN.match(sql):
            return None  # EXPLAIN reads nothing but the query plan: not an answer to anything
        self._deadline.until = min(time.monotonic() + QUERY_TIMEOUT_S, self._row_deadline)
        try:
            with closing(self._connection.execute(sql)) as cursor:
                # a statement that returns no columns (REINDEX, say, if the authorizer ever let one through) is
                # no query
                return None if cursor.description is None else _fetch_bounded(cursor)
        except _QUERY_FAILURES:
            return None


@contextmanager
def _row_database(schema: SqlSchema) -> Iterator[_RowDatabase]:
    row_deadline = time.monotonic() + ROW_TIMEOUT_S
    # A fresh in-memory database per row: nothing on disk to reach, nothing left over from another row.
    # isolation_level=None: autocommit, so the driver never issues BEGIN (a transaction the authorizer refuses).
    # check_same_thread=False: the connection never outlives this call, whichever thread grades the row.
    # enable_load_extension is never called: native extensions stay off.
    connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    native = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        _apply_limits(connection)
        _check_sizes_before(connection, native)
        deadline = _Deadline()
        connection.set_progress_handler(deadline, PROGRESS_EVERY_OPS)
        _build(connection, schema, deadline, min(time.monotonic() + BUILD_TIMEOUT_S, row_deadline))
        _make_read_only(connection)
        yield _RowDatabase(connection, deadline, row_deadline)
    finally:
        connection.close()
        native.close()


def _apply_limits(connection: sqlite3.Connection) -> None:
    for limit, value in _LIMITS.items():
        connection.setlimit(limit, value)


def _check_sizes_before(connection: sqlite3.Connection, native: sqlite3.Connection) -> None:
    """Replace the built-ins of _SIZE_CHECKED_FUNCTIONS (that name and number of arguments only) with a check of
    their arguments' sizes, after which the same built-in runs, on a second connection that holds no data, with
    the same values: results and errors are SQLite's own, only the hour-long calls are refused."""
    for limit in (sqlite3.SQLITE_LIMIT_LENGTH, sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH):
        native.setlimit(limit, _LIMITS[limit])  # what fails here (too long a result or pattern) fails there too
    for name, arity in _SIZE_CHECKED_FUNCTIONS:
        connection.create_function(name, arity, _size_checked(native, name, arity), deterministic=True)


def _size_checked(native: sqlite3.Connection, name: str, arity: int) -> Callable[..., object]:
    statement = f"SELECT {name}({', '.join('?' * arity)})"

    def call(*args: object) -> object:
        if _value_size(args[0]) * _value_size(args[1]) > MAX_PAIRWISE_WORK:
            # raised inside a function, it fails the statement ("user-defined function raised exception")
            raise ValueError(f"{name}() arguments too large")
        return native.execute(statement, args).fetchone()[0]

    return call


def _value_size(value: object) -> int:
    return len(value) if isinstance(value, str | bytes) else 32  # a number's text is at most a few dozen chars


def _build(connection: sqlite3.Connection, schema: SqlSchema, deadline: _Deadline, until: float) -> None:
    """Create the tables and insert the rows, each statement on its own. A statement that fails or is refused
    is skipped: the row's schema is data, and a bad one must not stop the grader (its queries fail instead)."""
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {MAX_DATABASE_BYTES // page_size}")
    # Statements of the schema may be longer than a query (an INSERT of many rows): the text's own cap bounds them.
    connection.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_VALUE_BYTES)
    connection.set_authorizer(_authorize_build)
    deadline.until = until
    try:
        for statement in schema.creates + schema.inserts:
            if time.monotonic() > until:
                break
            try:
                connection.execute(statement)
            except _QUERY_FAILURES:
                continue
    finally:
        deadline.until = math.inf
        connection.set_authorizer(None)
        connection.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_QUERY_BYTES)


def _make_read_only(connection: sqlite3.Connection) -> None:
    # query_only makes SQLite refuse any write even if the authorizer let one through; the authorizer, set after
    # it, refuses PRAGMA, so a query cannot turn it off again.
    connection.execute("PRAGMA query_only = ON")
    connection.set_authorizer(_authorize_query)


# --- Authorizers: called while a statement is prepared, once per action it would take ------------------------------

_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema"})  # the name SQLite reports varies by version
_AUTOINDEX_PREFIX = "sqlite_autoindex_"  # the indexes behind PRIMARY KEY and UNIQUE constraints
_QUERY_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})


def _authorize_build(action: int, arg1: str | None, arg2: str | None, database: str | None, _trigger: object) -> int:
    """While the schema is built: CREATE TABLE and INSERT, what they do internally (a row in sqlite_master, its
    update, the automatic index of a UNIQUE or PRIMARY KEY constraint, reads for CHECK constraints and
    INSERT ... SELECT), in the main database only. Not views, triggers, other indexes, temporary or virtual
    tables, PRAGMA, ATTACH, recursive CTEs (rows are data, not generators), or any change after the insert."""
    if action == sqlite3.SQLITE_FUNCTION:
        return _authorize_function(arg2)
    if database not in (None, "main"):
        return sqlite3.SQLITE_DENY
    allowed = (
        action in (sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT)
        or (action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES)
        or (action == sqlite3.SQLITE_CREATE_INDEX and (arg1 or "").startswith(_AUTOINDEX_PREFIX))
    )
    return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY


def _authorize_query(action: int, _arg1: str | None, arg2: str | None, _database: str | None, _trigger: object) -> int:
    """While a query is prepared: reading only. ATTACH (and VACUUM INTO, which attaches its target), DETACH,
    PRAGMA, INSERT/UPDATE/DELETE, CREATE/DROP/ALTER, transactions and savepoints, ANALYZE are refused, and so are
    table-valued functions (json_each, pragma_table_info), which SQLite sets up as an update of its schema."""
    if action == sqlite3.SQLITE_FUNCTION:
        return _authorize_function(arg2)
    return sqlite3.SQLITE_OK if action in _QUERY_ACTIONS else sqlite3.SQLITE_DENY


def _authorize_function(name: str | None) -> int:
    return sqlite3.SQLITE_DENY if (name or "").lower() in DENIED_FUNCTIONS else sqlite3.SQLITE_OK


def _fetch_bounded(cursor: sqlite3.Cursor) -> list[tuple] | None:
    """All the rows, or None past MAX_RESULT_ROWS rows or MAX_RESULT_BYTES bytes. Rows come one at a time, so at
    most one row beyond the limits is ever held."""
    rows: list[tuple] = []
    size = 0
    for row in cursor:
        rows.append(row)
        size += sum(_value_size(value) for value in row)
        if len(rows) > MAX_RESULT_ROWS or size > MAX_RESULT_BYTES:
            return None
    return rows
