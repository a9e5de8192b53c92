"""WikiSQL as preference rows, for the DPO tests and the benchmark: the right SQL is preferred, a corrupted one is
not. The corruption moves the WHERE clause before FROM (same tokens, same length, wrong SQL), so a model cannot
prefer either answer for its length or its words, only for its order: a base model trained on stories has no
reason to prefer the right one, a tuned one learns to."""

from __future__ import annotations

import json
from pathlib import Path

SEPARATOR = "\nA: "


def corrupt(sql: str) -> str | None:
    """SELECT c FROM t WHERE w -> SELECT c WHERE w FROM t; None for SQL without both clauses."""
    select, sep, rest = sql.partition(" FROM ")
    table, sep2, where = rest.partition(" WHERE ")
    if not sep or not sep2:
        return None
    return f"{select} WHERE {where} FROM {table}"


def sql_pairs(path: Path, n: int) -> list[tuple[str, str, str]]:
    """(prompt, right SQL, corrupted SQL) of the first n WikiSQL rows that have a WHERE clause."""
    out = []
    for line in path.read_text("utf-8").splitlines():
        prompt, sep, sql = json.loads(line)["text"].partition(SEPARATOR)
        wrong = corrupt(sql) if sep else None
        if wrong is not None and wrong != sql:
            out.append((prompt + SEPARATOR.rstrip(" "), " " + sql, " " + wrong))
        if len(out) == n:
            break
    return out


def openai_preference_rows(path: Path, n: int) -> list[dict]:
    """OpenAI's preference format, as a user of its DPO fine-tuning holds it."""
    return [
        {
            "input": {"messages": [{"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": right.strip()}],
            "non_preferred_output": [{"role": "assistant", "content": wrong.strip()}],
        }
        for prompt, right, wrong in sql_pairs(path, n)
    ]


def trl_preference_rows(path: Path, n: int) -> list[dict]:
    """TRL's explicit-prompt preference format: prompt, chosen, rejected text."""
    return [{"prompt": p, "chosen": right, "rejected": wrong} for p, right, wrong in sql_pairs(path, n)]
