"""A job's events live, as server-sent events: GET /v1/fine_tuning/jobs/{id}/events?stream=true.

What the client reads, one SSE message per block:
- every event of the job after the resume point, oldest first, then new ones as they are written:
  `id: ftevent-N`, `event: message` or `event: metrics` (the event's `type`), `data:` the same JSON object
  as in the JSON list (EventPublic);
- `event: status`, `data:` the job (JobPublic, as GET /v1/fine_tuning/jobs/{id}), once caught up and again
  whenever its status or progress phase changes (queued -> running -> paused -> queued ...); no `id`, so a
  reconnect's Last-Event-ID stays the last event's;
- `event: end`, `data:` the job in its final status, after its last events: the stream then closes. A paused
  job is not ended (it may be resumed): its stream stays open;
- `: ping` comments while nothing happens, so proxies keep the connection; the stream also closes after
  FTAAS_EVENT_STREAM_MAX_S or when `ftaas serve` is stopped (with a comment saying so), and the client
  reconnects with `Last-Event-ID` (EventSource does it by itself).

Framing: FastAPI's own SSE support (fastapi.sse, FastAPI >= 0.135): its EventSourceResponse and the
`format_sse_event` encoder its generator routes use, so no new dependency. FastAPI's generator-route form
(`response_class=EventSourceResponse` and `yield`) does not fit, since this route answers the JSON list
without stream=true; sse-starlette would add a dependency for the same framing and a ping timer, which this
poll loop has anyway.

No database connection is held for the stream's life: every read is one short session (the job row, then
its events after the last one sent), run in the threadpool, and the request's own session is released
before the stream starts. A stream reads when its job changed: the process's one watcher (app/jobs/job_watch.py)
polls the change stamps of every streamed job in one query, so an idle stream costs no query.
Reading `id > last sent` in id order never skips nor repeats an event, because a
job's events become visible in id order: every writer of a job's events changes the job row in the same
transaction first (app/job_state.py, the cancel/pause/resume routes, the sweep cancel, the training child's
fenced transactions), so the row lock serializes them, and an id is drawn only after the previous writer
committed. Reading the job row before the events means that once the job reads as ended, the events written
with that status are in the same poll.

A client that leaves: Starlette's StreamingResponse listens for the disconnect and cancels this generator
(ASGI servers before spec 2.4, uvicorn included); on later ones the next write fails, a ping at the latest.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool

from app.api.admission import Refused, gate
from app.core.db import get_sessionmaker
from app.core.settings import get_settings
from app.core.tables import TERMINAL_STATUSES, Job, JobEvent
from app.jobs.job_watch import NO_POLL, UNREAD, JobWatch, SessionFactory, watch_for
from app.jobs.presenters import event_public, job_public
from app.jobs.schemas import EventPublic, JobPublic

log = logging.getLogger("ftaas.events")

KEEPALIVE_S = 15.0  # a comment after this long without a message; proxies commonly drop idle streams at 30-60 s
BATCH = 500  # events per read: a long backlog goes out in pieces, read back to back
MAX_EVENT_ID = 2**31 - 1  # event ids are 32-bit; a larger resume point comes after every event
EVENT_ID = re.compile(r"ftevent-[0-9]{1,12}", re.ASCII)  # bounded: int() of 5,000 digits is a ValueError
# Set by `ftaas serve` when the server is asked to stop (app/cli.py): every stream ends at its next poll.
SHUTTING_DOWN = threading.Event()


def stream_sessions() -> SessionFactory:
    """Where a stream's per-poll sessions come from: a dependency, so that tests can point them at theirs."""
    return get_sessionmaker()


StreamSessions = Annotated[SessionFactory, Depends(stream_sessions)]


def resume_point(after: str | None, last_event_id: str | None) -> int:
    """The id after which to start: Last-Event-ID (an EventSource reconnecting) over `after` (its first URL).
    `after` is validated by the route; a Last-Event-ID that is not one of our ids is ignored."""
    if last_event_id and EVENT_ID.fullmatch(last_event_id.strip()):
        seen = last_event_id.strip()
    else:
        seen = after
    return min(int(seen.removeprefix("ftevent-")), MAX_EVENT_ID) if seen else 0


@dataclass
class Poll:
    job: JobPublic | None  # None: the job row is gone
    events: list[EventPublic]
    last_id: int  # of the last event read, or the resume point when none
    caught_up: bool  # fewer than BATCH read: every event written so far is in this poll


def read_since(sessions: SessionFactory, job_id: str, after_id: int) -> Poll:
    with sessions() as session:
        # populate_existing: a session that outlives one poll (a test's) must not answer from its identity map
        job = session.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))
        if job is None:
            return Poll(None, [], after_id, True)
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id).order_by(JobEvent.id).limit(BATCH)
        ).all()
        last_id = rows[-1].id if rows else after_id
        return Poll(job_public(job), [event_public(r) for r in rows], last_id, len(rows) < BATCH)


def event_message(event: EventPublic) -> bytes:
    return format_sse_event(data_str=event.model_dump_json(), event=event.type, id=event.id)


def job_message(name: str, job: JobPublic) -> bytes:
    return format_sse_event(data_str=job.model_dump_json(), event=name)


async def job_events(sessions: SessionFactory, job_id: str, after_id: int) -> AsyncIterator[bytes]:
    settings = get_settings()  # read per stream, so a changed setting applies to the next stream
    watch = watch_for(sessions, settings.event_stream_poll_s)
    watch.follow(job_id)
    try:
        async for message in _messages(sessions, watch, job_id, after_id, settings.event_stream_max_s):
            yield message
    finally:
        watch.leave(job_id)


async def _messages(
    sessions: SessionFactory, watch: JobWatch, job_id: str, after_id: int, max_s: float
) -> AsyncIterator[bytes]:
    started = last_sent = time.monotonic()
    shown: tuple[str, str | None] | None = None  # the (status, phase) last sent
    away = False  # the database was unreachable at the last read
    read_now, stamp = True, None  # read at once; then whenever the watcher's stamp of the job moves
    while True:
        poll, refused = None, False
        if read_now:
            try:
                async with gate().turn():  # a read like a request's: it waits its turn (app/api/admission.py)
                    poll = await run_in_threadpool(read_since, sessions, job_id, after_id)
            except Refused:  # the process is full: this stream reads at the next poll
                refused = True
            except (OperationalError, InterfaceError) as exc:  # the database is away: keep the stream, read again
                if not away:
                    log.warning("event stream of %s: database unreachable: %s", job_id, str(exc).splitlines()[0][:200])
                away = True
        if poll is not None:
            away = False
            if poll.job is None:
                return
            for event in poll.events:
                yield event_message(event)
            after_id = poll.last_id
            if poll.events:
                last_sent = time.monotonic()
            if poll.caught_up:
                if poll.job.status in TERMINAL_STATUSES:
                    yield job_message("end", poll.job)
                    return
                state = (poll.job.status, poll.job.progress.phase)
                if state != shown:
                    yield job_message("status", poll.job)
                    shown, last_sent = state, time.monotonic()
        now = time.monotonic()
        left = started + max_s - now
        if left <= 0 or SHUTTING_DOWN.is_set():
            why = "stream lifetime reached" if left <= 0 else "server shutting down"
            yield format_sse_event(comment=f"{why}; reconnect with Last-Event-ID")
            return
        if now - last_sent >= KEEPALIVE_S:
            yield KEEPALIVE_COMMENT
            last_sent = now
        if poll is not None and not poll.caught_up:
            continue  # a backlog: the next batch at once
        seen = await watch.next_stamp(job_id, timeout=min(left, KEEPALIVE_S))
        # read when the job changed since the last poll, or when the watcher could not tell (or is behind)
        read_now = away or refused or seen in (UNREAD, NO_POLL) or seen != stamp
        stamp = seen


def event_stream_response(sessions: SessionFactory, job_id: str, after_id: int) -> EventSourceResponse:
    return EventSourceResponse(
        job_events(sessions, job_id, after_id),
        # what FastAPI's own SSE routes send: no caching, and nginx must not buffer the stream
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _data(schema: str) -> dict[str, Any]:
    return {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"$ref": f"#/components/schemas/{schema}"},
    }


# The 200 response's second media type. One schema per SSE message, as FastAPI documents its own SSE routes
# (OpenAPI 3.2's `itemSchema`, each `data` a JSON string described by `contentSchema`); Schemathesis
# validates every message of a stream against it.
STREAM_RESPONSE: dict[str, Any] = {
    "description": "The events as a JSON list (EventList), or with stream=true as server-sent events",
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "oneOf": [
                    {
                        "type": "object",
                        "description": "an event, oldest first: `data` is the same object as in the list",
                        "required": ["event", "id", "data"],
                        "properties": {
                            "event": {"type": "string", "enum": ["message", "metrics"]},
                            "id": {"type": "string", "pattern": r"^ftevent-[0-9]+$"},
                            "data": _data("EventPublic"),
                        },
                    },
                    {
                        "type": "object",
                        "description": "the job: `status` when its status or phase changed, `end` when it ended "
                        "(then the stream closes)",
                        "required": ["event", "data"],
                        "properties": {
                            "event": {"type": "string", "enum": ["status", "end"]},
                            "id": {"type": "string"},
                            "data": _data("JobPublic"),
                        },
                    },
                ]
            }
        }
    },
}
