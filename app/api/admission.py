"""Admission: how many requests an API process works on at once, and how many of them one tenant may have.

Why: a request holds a database connection from its first query to its end, and between its steps it waits
for a thread (sync routes and dependencies run in AnyIO's 40-thread pool). With more requests in flight than
connections, threads block on the pool while the requests that hold the connections wait for a thread: the
API stops until the pool's timeout, and a burst of pollers kept it stopped for minutes (issue 13). Letting in
no more requests than there are connections breaks that cycle: an admitted request always gets a connection
and a thread; the others wait here, on the event loop, holding neither, for up to admission_wait_s, and then
answer 503 (the process is full) or 429 (the tenant's own requests fill its share), both with Retry-After.

A turn ends when the response starts: by then the route and its session (closed right after the route,
app/api/deps.py) are done with the database. So a live event stream or a long download holds a turn only
until its first byte. The tenant is known from the API key before any query: a key seen before maps to its
tenant (remembered at authentication, app/api/deps.py); a new or unknown key is its own share until then.
/healthz and the OpenAPI pages touch no database and are never held.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNHELD_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
RETRY_AFTER_S = 1
KNOWN_KEYS_MAX = 10_000


class KeyTenants:
    """API key hash -> tenant id, remembered at authentication (a key never changes tenant; revocation is
    still checked by every request's own lookup). Bounded, least recently used out first."""

    def __init__(self, size: int = KNOWN_KEYS_MAX) -> None:
        self._map: OrderedDict[str, str] = OrderedDict()
        self._size = size

    def remember(self, key_hash: str, tenant_id: str) -> None:
        self._map[key_hash] = tenant_id
        self._map.move_to_end(key_hash)
        while len(self._map) > self._size:
            self._map.popitem(last=False)

    def share_of(self, key_hash: str) -> str:
        return self._map.get(key_hash) or f"key:{key_hash}"


KEY_TENANTS = KeyTenants()


def bearer_hash(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return hashlib.sha256(key.strip().encode()).hexdigest()
    return None


class Shares:
    """One semaphore per share, dropped when nobody holds or waits for it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._sems: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    async def acquire(self, share: str, timeout: float) -> bool:
        sem, users = self._sems.setdefault(share, (asyncio.Semaphore(self.size), [0]))
        users[0] += 1
        if await acquire_within(sem, timeout):
            return True
        self._leave(share)
        return False

    def release(self, share: str) -> None:
        self._sems[share][0].release()
        self._leave(share)

    def _leave(self, share: str) -> None:
        users = self._sems[share][1]
        users[0] -= 1
        if users[0] == 0:
            del self._sems[share]


async def acquire_within(sem: asyncio.Semaphore, timeout: float) -> bool:
    try:
        async with asyncio.timeout(max(timeout, 0.001)):  # a cancelled acquire gives its grant back
            await sem.acquire()
        return True
    except TimeoutError:
        return False


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, capacity: int, per_tenant: int, wait_s: float) -> None:
        self.app = app
        self.capacity_size, self.per_tenant, self.wait_s = capacity, per_tenant, wait_s
        self._loop: asyncio.AbstractEventLoop | None = None

    def _state_for(self, loop: asyncio.AbstractEventLoop) -> None:
        # asyncio primitives belong to one event loop; a server has one, tests start several in turn
        if loop is not self._loop:
            self._loop = loop
            self.capacity = asyncio.Semaphore(self.capacity_size)
            self.tenants = Shares(self.per_tenant)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNHELD_PATHS:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        self._state_for(loop)
        deadline = loop.time() + self.wait_s
        key = bearer_hash(scope)
        share = KEY_TENANTS.share_of(key) if key else None
        if share is not None and not await self.tenants.acquire(share, self.wait_s):
            await refuse(send, 429, "too_many_concurrent_requests", "Too many requests of this tenant at once")
            return
        if not await acquire_within(self.capacity, deadline - loop.time()):
            if share is not None:
                self.tenants.release(share)
            await refuse(send, 503, "server_busy", "The server is at capacity")
            return
        turn = Turn(self, share)

        async def send_and_end_turn(message: Message) -> None:
            if message["type"] == "http.response.start":
                turn.end()
            await send(message)

        try:
            await self.app(scope, receive, send_and_end_turn)
        finally:
            turn.end()


class Turn:
    """An admitted request's place, given back once: at its response's start, or when it ends without one."""

    def __init__(self, admission: AdmissionMiddleware, share: str | None) -> None:
        self.admission, self.share, self.held = admission, share, True

    def end(self) -> None:
        if self.held:
            self.held = False
            self.admission.capacity.release()
            if self.share is not None:
                self.admission.tenants.release(self.share)


async def refuse(send: Send, status: int, code: str, message: str) -> None:
    """The error body of app/api/errors.py, written here since this runs outside FastAPI's handlers."""
    kind = "rate_limit_error" if status == 429 else "service_unavailable"
    body = json.dumps(
        {"error": {"message": f"{message}; retry in {RETRY_AFTER_S} s", "type": kind, "param": None, "code": code}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(RETRY_AFTER_S).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
