"""Refuse NUL characters anywhere in a request's path, query or JSON body, with a 400 that names where; and JSON
bodies no route should parse: past 4 MiB (413), nested past 64 levels, or holding a number past Python's
integer-string limit (400; left to the route, json.loads raised RecursionError or ValueError: a 500).

No field of this API can hold a NUL, and PostgreSQL text cannot store one: left to the database, a `%00` in an
id or a `\\u0000` in a suffix surfaced as a 500 from the driver. Checked once, here, for every route, on every
body FastAPI parses as JSON (no Content-Type, application/json or application/<x>+json, in any letter case: a
check by prefix was bypassed by `Application/JSON` or `+json`). Uploaded files are not JSON and are validated
by the dataset readers instead.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response

MAX_JSON_BODY = 4 * 1024 * 1024  # JSON requests of this API are small: a sweep of 64 candidates is a few KB
MAX_JSON_DEPTH = 64  # the deepest body a route takes is about 5 levels (a sweep's candidates' adapter fields)


class BodyRefused(Exception):
    def __init__(self, param: str, message: str, status: int = 400) -> None:
        self.param, self.message, self.status = param, message, status


def has_body(scope: Scope) -> bool:
    """Whether the request says it has a body (Content-Length above 0, or chunked): a GET poll has none."""
    headers = dict(scope.get("headers", ()))
    return headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers


def parses_as_json(content_type: bytes | None) -> bool:
    """Whether FastAPI parses this body as JSON: no Content-Type, or application/json or application/<x>+json,
    in any letter case and with any parameters (as fastapi.routing does it)."""
    if not content_type:
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def check_json(body: bytes) -> None:
    """Raise BodyRefused for a body no route should see: nested past MAX_JSON_DEPTH, a number past Python's
    integer-string limit, a NUL in any key or string. Malformed JSON is left to the route's own 400."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BodyRefused("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError:
        return
    except UnicodeDecodeError:
        return
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise BodyRefused("body", f"a number in the JSON body is too large: {exc}") from None
    # iterative: a recursive walk would itself overflow on the deepest bodies json.loads accepts
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BodyRefused(path or "body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, str):
            if "\x00" in node:
                raise BodyRefused(path or "body", "NUL characters are not allowed")
        elif isinstance(node, dict):
            for k, v in reversed(list(node.items())):
                here = f"{path}.{k}" if path else str(k)
                if "\x00" in k:
                    raise BodyRefused(here.replace("\x00", ""), "NUL characters are not allowed")
                stack.append((v, here, depth + 1))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], f"{path}.{i}" if path else str(i), depth + 1))


def _refusal(param: str, message: str = "NUL characters are not allowed", status: int = 400):
    return error_response(
        status,
        f"Invalid value for '{param}': {message}",
        param=param,
        code="invalid_value" if status == 400 else "request_too_large",
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
        if not has_body(scope) or not parses_as_json(headers.get(b"content-type")):
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
                await _refusal("body", f"JSON bodies are limited to {MAX_JSON_BODY} bytes", 413)(scope, receive, send)
                return
        body = b"".join(chunks)
        if body:
            try:
                check_json(body)
            except BodyRefused as refused:
                await _refusal(refused.param, refused.message, refused.status)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        await self.app(scope, replay, send)
