"""Keyset pages, newest first, in OpenAI's shape: `after` is the id of the last item already seen."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session


def page_of(session: Session, model: Any, filters: list[Any], after: str | None, limit: int) -> tuple[list[Any], bool]:
    """Rows of `model` matching `filters`, ordered by (created_at, id) descending, starting after `after`.

    An unknown `after` id gives an empty page rather than an error, as OpenAI does.
    """
    stmt = select(model).where(*filters)
    if after is not None:
        anchor = session.execute(select(model.created_at, model.id).where(model.id == after, *filters)).first()
        if anchor is None:
            return [], False
        stmt = stmt.where(tuple_(model.created_at, model.id) < tuple_(anchor[0], anchor[1]))
    rows = session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)).all()
    return list(rows[:limit]), len(rows) > limit


def list_page(items: list[Any], has_more: bool) -> dict[str, Any]:
    """The fields of a list response for already-presented items (each with a public `id`)."""
    return {
        "data": items,
        "has_more": has_more,
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
    }
