"""Where a text-to-SQL row keeps its database: a `schema` column of SQL statements, or the CREATE TABLE (and
INSERT) statements written into its prompt. Read by the upload (how many rows carry one, for the SQL graders'
check at job creation) and by the worker (each row's database), so both find the same schema."""

from __future__ import annotations

from app.core.sql_schema import SqlSchema, find_schema


def prompt_text(record: dict) -> str:
    """What the model is prompted with, as text: the prompt, or every message of the conversation (a preference
    row's shared context) that is not an assistant's answer; "" for raw text."""
    if isinstance(record.get("prompt"), str):
        return record["prompt"]
    messages = record.get("messages") or record.get("context") or []
    return "\n".join(m["content"] for m in messages if m["role"] != "assistant" and isinstance(m.get("content"), str))


def record_sql_schema(record: dict) -> SqlSchema | None:
    """The row's database: its `schema` column when it has one, else the statements in its prompt; None when
    neither holds a CREATE TABLE."""
    if isinstance(record.get("schema"), str):
        return find_schema(record["schema"])
    return find_schema(prompt_text(record))
