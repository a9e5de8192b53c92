"""The database a text-to-SQL row is graded on: the CREATE TABLE and INSERT INTO statements found in its text.

Two sides read it, so both must find the same statements: the API, at upload, to check that the rows of a file
the SQL graders will score carry a schema (refusing the job at creation rather than scoring nothing hours
later), and the worker (worker/evaluation/sql_grader.py), which builds each row's in-memory SQLite database from
it. Standard library only: the API imports it and never pulls the training stack.

The text is free: a prompt that mixes prose and SQL, often inside ``` or ```sql fences, or a `schema` column of
plain statements. Where a statement ends is SQLite's own answer (sqlite3.complete_statement, which knows quotes,
comments and a ';' inside a string), so a value such as 'a;b' does not cut a statement short. Only CREATE TABLE
and INSERT statements are taken: the rest (indexes, views, triggers, PRAGMAs, ATTACH) is nothing a grader needs
and everything it would have to defend against.

The scan's cost is bounded whatever the text: it reads at most MAX_TEXT_CHARS, keeps MAX_STATEMENTS of each
kind, tries at most MAX_SEMICOLONS_TRIED ends for one statement, and stops once SCAN_BUDGET_CHARS characters
have been handed to complete_statement.
"""

from __future__ import annotations

import bisect
import re
import sqlite3
from dataclasses import dataclass

__all__ = ["MAX_STATEMENTS", "MAX_TEXT_CHARS", "SqlSchema", "find_schema", "mask_literals"]

# Longer texts are read up to here: a prompt of 200,000 characters is far past any model's context, and the
# upload scans every row of a file with this.
MAX_TEXT_CHARS = 200_000
# CREATE TABLE statements, and INSERT statements, kept from one text: past this it is not one row's database.
MAX_STATEMENTS = 1_000
# The ';' tried as the end of one statement before giving up on it: each try reads the statement again, and a
# real statement rarely holds even one ';' inside a string.
MAX_SEMICOLONS_TRIED = 200
# Characters handed to complete_statement over one whole scan (tens of milliseconds): a hostile text, each of
# whose statement starts leads into an unclosed quote, stops here instead of costing starts x tries x length.
SCAN_BUDGET_CHARS = 50 * MAX_TEXT_CHARS

_CREATE, _INSERT = "create", "insert"
# Where a statement may start. INSERT OR REPLACE/IGNORE INTO is an INSERT too.
_STATEMENT_START = re.compile(
    r"\b(?:(?P<create>CREATE\s+TABLE)|(?P<insert>INSERT\s+(?:OR\s+[A-Za-z]+\s+)?INTO))\b", re.IGNORECASE
)
# A table name: quoted ("t", `t`, [t]) or bare, optionally schema-qualified.
_NAME = r"""(?:"[^"\n]*"|`[^`\n]*`|\[[^\]\n]*\]|[^\s(),;.'"`\[]+)"""
_TABLE = rf"{_NAME}(?:\s*\.\s*{_NAME})?"
# What follows the name in a real statement, so that prose ("write no CREATE TABLE statement") is no statement.
_STATEMENT_SHAPE = {
    _CREATE: re.compile(rf"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_TABLE}\s*(?:\(|AS\b)", re.IGNORECASE),
    _INSERT: re.compile(
        rf"INSERT\s+(?:OR\s+[A-Za-z]+\s+)?INTO\s+{_TABLE}\s*(?:\(|VALUES\b|SELECT\b|WITH\b|DEFAULT\b)", re.IGNORECASE
    ),
}
# The content of a fenced block (``` or ```sql ...): an unclosed fence runs to the end of the text.
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
# SQL string literals, quoted identifiers and comments, whose content is not SQL (parentheses, keywords, ';').
# Each alternative also ends at the end of the text, so an unclosed quote is masked to the end (as SQLite reads it)
# and the pattern never fails after a long scan: linear on any text.
_LITERAL = re.compile(
    r"""'(?:[^']|'')*(?:'|\Z)|"(?:[^"]|"")*(?:"|\Z)|`[^`]*(?:`|\Z)|\[[^\]]*(?:\]|\Z)|--[^\n]*|/\*.*?(?:\*/|\Z)""",
    re.DOTALL,
)


@dataclass(frozen=True)
class SqlSchema:
    """A row's database: its CREATE TABLE statements and its INSERT statements, each ending with ';', in the
    order the text gives them."""

    creates: tuple[str, ...]
    inserts: tuple[str, ...]

    @property
    def has_data(self) -> bool:
        """Whether any rows are inserted: on empty tables every query returns nothing, so results say little."""
        return bool(self.inserts)


def mask_literals(sql: str) -> str:
    """`sql` with every string literal, quoted identifier and comment blanked: each keeps its first character and
    the rest becomes spaces (same length, same positions), so that parentheses and keywords can be looked for in
    what is left."""
    return _LITERAL.sub(lambda m: m.group(0)[0] + " " * (len(m.group(0)) - 1), sql)


def find_schema(text: str) -> SqlSchema | None:
    """The CREATE TABLE and INSERT statements in `text`; None when it holds no CREATE TABLE.

    A statement ends at the first ';' after which SQLite calls it complete. One without its ';' counts too when
    it ends a fenced block, the text, or a paragraph (a blank line), or stops where the next statement starts:
    prompts often list `CREATE TABLE ...` one after another with no ';'."""
    scan = _Scan(text[:MAX_TEXT_CHARS])
    found: dict[str, list[str]] = {_CREATE: [], _INSERT: []}
    position = 0
    for match in _STATEMENT_START.finditer(scan.text):
        if match.start() < position:
            continue  # inside the statement just taken (a string that mentions CREATE TABLE, say)
        kind = match.lastgroup
        if len(found[kind]) >= MAX_STATEMENTS or not _STATEMENT_SHAPE[kind].match(scan.text, match.start()):
            continue
        statement = scan.statement_at(match.start())
        if scan.exhausted:
            break
        if statement is not None:
            found[kind].append(statement[0])
            position = statement[1]
    if not found[_CREATE]:
        return None
    return SqlSchema(creates=tuple(found[_CREATE]), inserts=tuple(found[_INSERT]))


class _Scan:
    """One text being scanned: where its fenced blocks, blank lines, statement starts and ';' are (found once,
    so that each statement is then placed by bisection, never by reading the text again), and the
    complete_statement budget spent so far."""

    def __init__(self, text: str) -> None:
        self.text = text
        fences = [(m.start(), m.start(1), m.end(1)) for m in _FENCE.finditer(text)]
        self._fence_openers = [opener for opener, _, _ in fences]
        self._fence_ends = [end for _, _, end in fences]
        self._blank_lines = [m.start() for m in _BLANK_LINE.finditer(text)]
        self._starts = [m.start() for m in _STATEMENT_START.finditer(text)]
        self._semicolons = [m.start() for m in re.finditer(";", text)]
        self._spent = 0

    @property
    def exhausted(self) -> bool:
        return self._spent > SCAN_BUDGET_CHARS

    def statement_at(self, start: int) -> tuple[str, int] | None:
        """(the statement starting at `start`, ending with ';'; where the scan goes on), or None when no end
        makes it complete."""
        region_end = self._region_end(start)
        boundary = self._paragraph_end(start, region_end)
        # A statement that keeps to its paragraph, with its ';' or without; then one whose string or layout
        # holds a blank line or the words CREATE TABLE, ended by a ';' further on in its block.
        return (
            self._terminated(start, boundary)
            or self._unterminated(start, boundary)
            or (self._terminated(start, region_end) if boundary < region_end else None)
        )

    def _region_end(self, start: int) -> int:
        """The end of the fenced block holding `start`, else where the next block opens, else the text's end: a
        statement never runs across a fence. (A start on a fence's opening line belongs to that block.)"""
        i = bisect.bisect_right(self._fence_openers, start) - 1
        if i >= 0 and start < self._fence_ends[i]:
            return self._fence_ends[i]
        return self._fence_openers[i + 1] if i + 1 < len(self._fence_openers) else len(self.text)

    def _paragraph_end(self, start: int, region_end: int) -> int:
        """The first blank line after `start`, or the next statement's start, whichever comes first."""
        return min(region_end, _first_after(self._blank_lines, start), _first_after(self._starts, start))

    def _complete(self, candidate: str) -> bool:
        self._spent += len(candidate)
        return not self.exhausted and sqlite3.complete_statement(candidate)

    def _terminated(self, start: int, end: int) -> tuple[str, int] | None:
        first = bisect.bisect_left(self._semicolons, start)
        for semicolon in self._semicolons[first : first + MAX_SEMICOLONS_TRIED]:
            if semicolon >= end:
                return None
            candidate = self.text[start : semicolon + 1]
            if self._complete(candidate):
                return candidate.strip(), semicolon + 1
        return None

    def _unterminated(self, start: int, end: int) -> tuple[str, int] | None:
        """The text up to `end` with a ';' added, when that is a complete statement whose parentheses close: an
        open one means the statement goes on past a blank line."""
        body = self.text[start:end].rstrip()
        candidate = body + ";"
        if not self._complete(candidate) or not _parentheses_balance(body):
            return None
        return candidate, end


def _first_after(positions: list[int], start: int) -> int:
    """The first of the sorted `positions` past `start`; a large number when there is none."""
    i = bisect.bisect_right(positions, start)
    return positions[i] if i < len(positions) else MAX_TEXT_CHARS + 1


def _parentheses_balance(sql: str) -> bool:
    bare = mask_literals(sql)
    return bare.count("(") == bare.count(")")
