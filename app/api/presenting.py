"""What every presenter needs: timestamps as OpenAI sends them (Unix seconds)."""

from __future__ import annotations

from datetime import UTC, datetime


def unix(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())
