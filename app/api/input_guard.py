"""Refuse NUL characters anywhere in a request's path, query or JSON body, with a 400 that names where.

No field of this API can hold one, and PostgreSQL text cannot store one: left to the database, a `%00` in an
id or a `\\u0000` in a suffix surfaced as a 500 from the driver. Checked once, here, for every route (uploaded
files are not JSON and are validated by the dataset readers instead).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response

MAX_JSON_BODY = 4 * 1024 * 1024  # JSON requests of this API are small; larger ones are checked by their route


def _nul_in(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) in `value` holding a NUL, or None."""
    if isinstance(value, str):
        return path or "body" if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{path}.{k}" if path else str(k)
            if "\x00" in str(k):
                return here
            found = _nul_in(v, here)
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _nul_in(v, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def _refusal(param: str):
    return error_response(
        400,
        f"Invalid value for '{param}': NUL characters are not allowed",
        param=param,
        code="invalid_value",
    )


class NulGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            await _refusal("path")(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        for key, value in parse_qsl(query, keep_blank_values=True):
            if "\x00" in key or "\x00" in value:
                await _refusal(key.replace("\x00", "") or "query")(scope, receive, send)
                return
        headers = dict(scope.get("headers") or [])
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        # Read the (small) JSON body, check it, and hand the same bytes on.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_JSON_BODY:
                break
        body = b"".join(chunks)
        if not more:
            try:
                param = _nul_in(json.loads(body), "")
            except (ValueError, UnicodeDecodeError):
                param = None  # not JSON: the route answers that itself
            if param:
                await _refusal(param)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        await self.app(scope, replay, send)
