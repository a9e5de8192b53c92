"""The background work of every API process, run while it serves (the app's lifespan): the webhook dispatcher,
and the pass that decides sweeps whose last candidate has ended.

Deciding a sweep ranks its candidates (the leaderboard, NumPy bootstrap intervals): API code, which the training
child never imports. A job's end is written by whoever ends it (the child, the task, a cancel); within about
FTAAS_WEBHOOK_POLL_S an API process names the sweep's winner, selects it and writes its webhook events. Reading
the sweep (GET /v1/sweeps/{id}) decides it at once too. Several API processes are safe: the decision is a
conditional update, made once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

from app.api.server import serving_process_set_up
from app.core.db import get_sessionmaker
from app.core.settings import get_settings
from app.sweeps.service import finalize_open_sweeps
from app.webhooks.dispatch import Dispatcher

log = logging.getLogger("ftaas.background")


class Periodic:
    """fn() every `every_s` seconds in a daemon thread; a failing pass (the database away) is logged once per
    outage and tried again next time."""

    def __init__(self, name: str, fn: Callable[[], object], every_s: float) -> None:
        self.name, self.fn, self.every_s = name, fn, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._failing = False

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.fn()
                if self._failing:
                    log.info("%s works again", self.name)
                self._failing = False
            except Exception:  # noqa: BLE001 - the database may be away for a while
                if not self._failing:
                    log.warning("%s pass failed; retrying every %ss", self.name, self.every_s, exc_info=True)
                self._failing = True


def decide_finished_sweeps() -> int:
    with get_sessionmaker()() as session:
        return finalize_open_sweeps(session)


@asynccontextmanager
async def background_lifespan(_app):
    settings = get_settings()
    serving_process_set_up()  # a served process: streams end on its stop signal, and the GC stays out of the way
    running = [Periodic("sweep-decider", decide_finished_sweeps, settings.webhook_poll_s).start()]
    if settings.webhook_dispatcher:  # FTAAS_WEBHOOK_DISPATCHER=false leaves deliveries to other processes
        running.append(Dispatcher().start())
    try:
        yield
    finally:
        for worker in running:
            worker.stop()
