"""Refuse oversize uploads while they stream in, before the multipart parser spools them.

The route checks the exact file size too; this middleware stops a body that is already past the cap
(with or without Content-Length), so a client cannot fill the disk with one request.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response

# Multipart framing and the small form fields around the file.
MULTIPART_SLACK = 64 * 1024


class _TooLarge(HTTPException):
    """An HTTPException, so FastAPI's form parsing re-raises it instead of turning it into a 400."""

    param, code = "file", "file_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Upload is larger than the {limit}-byte limit")


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, path: str = "/v1/files") -> None:
        self.app, self.limit, self.path = app, max_bytes + MULTIPART_SLACK, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != self.path:
            await self.app(scope, receive, send)
            return
        too_large = error_response(
            413,
            f"Upload is larger than the {self.limit - MULTIPART_SLACK}-byte limit",
            param="file",
            code="file_too_large",
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await too_large(scope, receive, send)
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit - MULTIPART_SLACK)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await too_large(scope, receive, send)
