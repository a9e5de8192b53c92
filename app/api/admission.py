"""Admission: how many requests an API process works on at once, and how many of them one tenant may have.

Why: a request holds a database connection from its first query to its end, and between its steps it waits
for a thread (sync routes and dependencies run in AnyIO's 40-thread pool). With more requests in flight than
connections, threads block on the pool while the requests that hold the connections wait for a thread: the
API stops until the pool's timeout, and a burst of pollers kept it stopped for minutes (issue 13). Letting in
no more requests than there are connections breaks that cycle: an admitted request always gets a connection
and a thread; the others wait here, on the event loop, holding neither, for up to admission_wait_s, and then
answer 503 (the process is full) or 429 (the tenant's own requests fill its share), both with Retry-After. A
tenant with tenant_waiting_requests already waiting is told 429 at once, so a flood queues no backlog that
would outlast it; a waiting request without a body whose client hangs up leaves the queue without running.

A turn ends when the response starts: by then the route and its session (closed right after the route,
app/api/deps.py) are done with the database. So a live event stream or a long download holds a turn only
until its first byte; a stream's later reads take a turn each (app/jobs/event_stream.py). The tenant is known
from the API key before any query: a key seen before maps to its tenant (remembered at authentication,
app/api/deps.py); a new or unknown key is its own share until then. /healthz and the OpenAPI pages touch no
database and are never held.

Hand-written rather than FastAPI's `Depends(max_concurrency=...)`: that one waits without a bound and knows no
tenants, and the wait must end in a 503 or 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.input_guard import has_body
from app.core.settings import get_settings
from app.tenants.service import hash_key

UNHELD_PATHS = frozenset({"/", "/healthz", "/docs", "/docs/init.js", "/openapi.json"})
UNHELD_PREFIXES = ("/docs/assets/",)  # Swagger UI's files
RETRY_AFTER_S = 1
END_TURN = "ftaas.end_turn"  # the scope key of the request's turn's release
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
                return hash_key(key.strip())
    return None


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


class Left(Exception):
    """The client hung up while its request waited: nothing to run, nobody to answer."""


class Gate:
    """One event loop's turns: `capacity` in all, `per_tenant` for each share, and at most `waiting` of a
    share waiting. asyncio primitives belong to one loop: a server has one, tests start several in turn."""

    def __init__(self, capacity: int, per_tenant: int, waiting: int, wait_s: float) -> None:
        self.capacity = asyncio.Semaphore(capacity)
        self.per_tenant, self.waiting, self.wait_s = per_tenant, waiting, wait_s
        self.shares: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # share -> (its turns, [holders+waiters])

    async def enter(self, share: str | None, client_left: asyncio.Future | None = None) -> Callable[[], None]:
        """Wait for a turn (the share's, then the process's); returns the function that gives it back (once,
        however often called). Raises Refused when none comes within wait_s, Left when `client_left` completes
        first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        if share is None:
            if not await _acquire(self.capacity, self.wait_s, client_left):
                raise Refused(503, "server_busy", "The server is at capacity")
            return _once(self.capacity.release)
        sem, users = self.shares.setdefault(share, (asyncio.Semaphore(self.per_tenant), [0]))
        if users[0] >= self.per_tenant + self.waiting:
            raise Refused(429, "too_many_concurrent_requests", "Too many requests of this tenant at once")
        users[0] += 1

        def leave_share() -> None:
            users[0] -= 1
            if users[0] == 0:
                del self.shares[share]

        try:
            if not await _acquire(sem, deadline - loop.time(), client_left):
                raise Refused(429, "too_many_concurrent_requests", "Too many requests of this tenant at once")
        except BaseException:
            leave_share()
            raise
        try:
            if not await _acquire(self.capacity, deadline - loop.time(), client_left):
                raise Refused(503, "server_busy", "The server is at capacity")
        except BaseException:
            sem.release()
            leave_share()
            raise

        def release() -> None:
            self.capacity.release()
            sem.release()
            leave_share()

        return _once(release)

    @asynccontextmanager
    async def turn(self, share: str | None = None) -> AsyncIterator[None]:
        release = await self.enter(share)
        try:
            yield
        finally:
            release()


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return once


async def _acquire(sem: asyncio.Semaphore, timeout: float, client_left: asyncio.Future | None) -> bool:
    """True once acquired; False after `timeout`; Left if the client hangs up first."""
    if not sem.locked():
        await sem.acquire()
        return True
    acquiring = asyncio.ensure_future(sem.acquire())
    waits = {acquiring} if client_left is None else {acquiring, client_left}
    done, _ = await asyncio.wait(waits, timeout=max(timeout, 0.001), return_when=asyncio.FIRST_COMPLETED)
    if acquiring in done:
        return True
    acquiring.cancel()  # asyncio's Semaphore passes a grant on when its waiter is cancelled
    try:
        await acquiring
        sem.release()  # granted just before the cancel took
    except asyncio.CancelledError:
        pass
    if client_left is not None and client_left in done:
        raise Left
    return False


_gates: dict[asyncio.AbstractEventLoop, Gate] = {}


def gate() -> Gate:
    """The running event loop's gate, sized by the settings."""
    loop = asyncio.get_running_loop()
    found = _gates.get(loop)
    if found is None:
        for old in [old for old in _gates if old.is_closed()]:
            del _gates[old]
        s = get_settings()
        found = _gates[loop] = Gate(
            s.max_concurrent_requests or s.db_pool_size,
            s.tenant_concurrent_requests,
            s.tenant_waiting_requests,
            s.admission_wait_s,
        )
    return found


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNHELD_PATHS or scope["path"].startswith(UNHELD_PREFIXES):
            await self.app(scope, receive, send)
            return
        key = bearer_hash(scope)
        share = KEY_TENANTS.share_of(key) if key else None
        watch = await DisconnectWatch.start(scope, receive)
        try:
            try:
                release = await gate().enter(share, watch.left if watch else None)
            except Refused as refused:
                await refuse(send, refused.status, refused.code, refused.message)
                return
            except Left:
                return

            async def send_and_end_turn(message: Message) -> None:
                if message["type"] == "http.response.start":
                    release()  # the route and its session are done: a stream or a download goes on unheld
                await send(message)

            # a route that waits on something else (a preview being made) ends its turn first, and reads with
            # turns of its own, as a stream does (app/files/preview_routes.py)
            scope[END_TURN] = release

            try:
                await self.app(scope, watch.receive if watch else receive, send_and_end_turn)
            finally:
                release()
        finally:
            if watch:
                watch.close()


class DisconnectWatch:
    """For a request without a body: its one body message read ahead, then the next receive() kept running
    while the request waits, which completes (http.disconnect) if the client hangs up. The app then reads the
    same messages through `receive`."""

    def __init__(self, first: Message | None, left: asyncio.Future) -> None:
        self.first, self.left = first, left

    @classmethod
    async def start(cls, scope: Scope, receive: Receive) -> DisconnectWatch | None:
        if has_body(scope):
            return None
        first = await receive()
        if first["type"] == "http.disconnect":  # gone already: a finished future says so
            left = asyncio.get_running_loop().create_future()
            left.set_result(first)
            return cls(None, left)
        if first.get("more_body"):
            return None
        return cls(first, asyncio.ensure_future(receive()))

    async def receive(self) -> Message:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        return await asyncio.shield(self.left)

    def close(self) -> None:
        self.left.cancel()


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
