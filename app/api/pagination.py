"""Keyset pages, newest first, in OpenAI's shape: `after` is the id of the last item already seen."""

from __future__ import annotations

from typing import Any

from fastapi import Query
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session


def limit_query(maximum: int, what: str = "items") -> Any:
    """A list's `limit` parameter. Its default is its example: the Swagger UI fills it in (an example of another
    value would show as "[Modified value]" beside the default)."""
    return Query(ge=1, le=maximum, description=f"{what} per page, 1 to {maximum}")


def after_query(id_example: str) -> Any:
    """A list's `after` cursor. Its example is documentation only (JSON Schema `examples`, which the Swagger UI
    shows but does not fill in): a filled-in cursor would make every first "Try it out" an empty page."""
    return Query(
        description="the `last_id` of the page already seen; the next page holds older items (an unknown id gives "
        "an empty page)",
        examples=[id_example],
    )


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
