"""X-Request-ID: every request has one, taken from the client (or a proxy in front) when it is a sane token, made
otherwise; it is in the answer's header and in every log line logged while the request runs (app/core/logs.py),
and a job, comparison or merge created by the request keeps it on its row, so the worker's and the training
child's lines name it too.

Not asgi-correlation-id, though it does the header part: its contextvar lives in a package that imports Starlette,
which the training child must never import (tests/unit/test_import_rules.py), so the worker and the child would
need a second one bridged to it; and its default check takes only UUID-shaped ids, where load balancers send
other forms. One context variable in app.core and this pure ASGI middleware are less.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import REQUEST_ID

HEADER = "X-Request-ID"
# What a client's id may be: safe in a header, a log line and a column (no spaces, quotes or control characters)
VALID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The client's id when it is VALID, else a new one (uuid4 hex)."""
    sent = MutableHeaders(scope=scope).get(HEADER)
    return sent if sent is not None and VALID.fullmatch(sent) else uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
