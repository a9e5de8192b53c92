"""One reader per API process for every open live event stream: has a watched job changed?

Each live stream used to read its job and its new events every poll (FTAAS_EVENT_STREAM_POLL_S): two queries
per stream per half second, 800 a second for 200 idle streams, each a thread hop and a pooled connection.
Now one watcher per process and event loop asks, every poll, for the change stamps of all the jobs its streams
follow (status, phase, last write, last event id) in one query; a stream reads its job only when its stamp
moved. An idle stream costs an asyncio wake-up per poll. The watcher stops when its last stream has gone.

Polling, not Postgres LISTEN/NOTIFY or Redis pub/sub: the writers of events (the training child, the worker's
tasks, the API) would all have to notify, the embedded SQLite defaults have no notifications, and a notifier
lost at a reconnect would leave streams silent; one indexed query per poll per process is cheap (measured in
bench/load.py's streams phase) and cannot miss a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.admission import Refused, gate
from app.core.tables import Job, JobEvent

log = logging.getLogger("ftaas.events")

SessionFactory = Callable[[], AbstractContextManager[Session]]
Stamp = tuple[Any, ...]
GONE: Stamp = ("gone",)  # the job row no longer exists
UNREAD: Stamp = ("unread",)  # the last poll could not read the database
NO_POLL: Stamp = ("no poll",)  # no poll ended in the time given


def read_stamps(sessions: SessionFactory, job_ids: list[str]) -> dict[str, Stamp]:
    last_event = select(func.max(JobEvent.id)).where(JobEvent.job_id == Job.id).scalar_subquery()
    with sessions() as session:
        rows = session.execute(
            select(Job.id, Job.status, Job.phase, Job.updated_at, Job.pause_requested, last_event).where(
                Job.id.in_(job_ids)
            )
        ).all()
    stamps = {row[0]: tuple(row[1:]) for row in rows}
    return {job_id: stamps.get(job_id, GONE) for job_id in job_ids}


class JobWatch:
    def __init__(self, sessions: SessionFactory, poll_s: float, on_idle: Callable[[], None]) -> None:
        self.sessions, self.poll_s, self.on_idle = sessions, poll_s, on_idle
        self.followers: dict[str, int] = {}
        self.stamps: dict[str, Stamp] = {}
        self._tick: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._away = False

    @property
    def stopped(self) -> bool:
        return self._task.done()

    def follow(self, job_id: str) -> None:
        self.followers[job_id] = self.followers.get(job_id, 0) + 1

    def leave(self, job_id: str) -> None:
        self.followers[job_id] -= 1
        if not self.followers[job_id]:
            del self.followers[job_id]
            self.stamps.pop(job_id, None)

    async def next_stamp(self, job_id: str, timeout: float) -> Stamp | None:
        """The job's stamp after the next poll; UNREAD when the database could not be read; NO_POLL when no poll
        ended within `timeout`."""
        try:
            await asyncio.wait_for(asyncio.shield(self._tick), timeout)
        except TimeoutError:
            return NO_POLL
        return self.stamps.get(job_id, UNREAD)

    async def _run(self) -> None:
        while self.followers:
            await asyncio.sleep(self.poll_s)
            job_ids = list(self.followers)
            if not job_ids:
                break
            try:
                async with gate().turn():
                    stamps = await run_in_threadpool(read_stamps, self.sessions, job_ids)
                self.stamps.update({k: v for k, v in stamps.items() if k in self.followers})
                self._away = False
            except Refused:  # the process is full: the stamps stay as they were, and streams wait a poll more
                pass
            except (OperationalError, InterfaceError) as exc:  # the database is away: streams wait, and so do we
                if not self._away:
                    log.warning("event streams' watcher: database unreachable: %s", str(exc).splitlines()[0][:200])
                self._away = True
                for job_id in job_ids:
                    self.stamps.pop(job_id, None)
            tick, self._tick = self._tick, asyncio.get_running_loop().create_future()
            tick.set_result(None)
        self.on_idle()


_watches: dict[tuple[asyncio.AbstractEventLoop, Hashable], JobWatch] = {}


def watch_for(sessions: SessionFactory, poll_s: float) -> JobWatch:
    """This event loop's watcher of streams reading through `sessions` (one in a server; tests bring their own)."""
    key = (asyncio.get_running_loop(), sessions)
    watch = _watches.get(key)
    if watch is None or watch.stopped:
        watch = _watches[key] = JobWatch(sessions, poll_s, on_idle=lambda: _watches.pop(key, None))
    return watch
