"""Errors that know nothing of the web framework: services and the worker raise them; app/api/errors.py maps
them to HTTP responses."""

from __future__ import annotations

from typing import Any

from app.core.graders import GRADER_NAMES


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.errors, self.headers = errors, headers


def not_found(kind: str, object_id: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(404, f"No {kind} with id '{object_id}'", param=param, code=code or f"{kind}_not_found")


def loc_to_param(loc: tuple[Any, ...]) -> str:
    """("body", "adapter", "r") -> "adapter.r"; ("query", "limit") -> "limit"; ("body", "evaluation", "graders", 1,
    "regex", "pattern") -> "evaluation.graders.1.pattern"."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header", "form") else list(loc)
    out: list[str] = []
    for i, p in enumerate(map(str, parts)):
        # pydantic puts the union member tried ("int", "literal['auto']") in the path, and after a list index the
        # tag of a discriminated union's member (a grader's type): drop those
        tried = p.startswith(("literal[", "function-", "constrained-", "list[")) or p in ("int", "float", "str")
        tag = i > 0 and isinstance(parts[i - 1], int) and p in GRADER_NAMES
        if not (tried or tag):
            out.append(p)
    return ".".join(out) or "body"


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The stored error of a failed job or comparison, as the API returns it: {code, message, param}."""
    return {"code": code, "message": message[:2000], "param": param}
