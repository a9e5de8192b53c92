"""What every presenter needs: timestamps as OpenAI sends them (Unix seconds)."""

from __future__ import annotations

from datetime import datetime

from app.core.tables import as_utc


def unix(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int(as_utc(value).timestamp())
