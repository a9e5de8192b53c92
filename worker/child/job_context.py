"""The training child's link to its job row: identity, fenced writes, progress, the cancel check, the
shutdown signal, and surviving a database that goes away for a while. Torch-free."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.core.db import get_sessionmaker
from app.core.job_state import add_event, fenced, finish_job, update_job
from app.core.local_cache import LocalCache
from app.core.settings import get_settings
from app.core.storage import JobFiles
from app.core.tables import Job, JobStatus, utcnow
from worker.telemetry import JobFigures

log = logging.getLogger("ftaas.child")
T = TypeVar("T")

# Exit codes the parent task reads.
EXIT_DONE = 0  # the child wrote the job's final state itself (or the job is no longer ours)
EXIT_CRASH = 1  # unexpected error: the parent retries up to max_attempts
EXIT_INTERRUPTED = 75  # the worker is shutting down: stopped at a checkpoint; the parent queues the job again


class LostJob(Exception):
    """The job was cancelled, finished or claimed by another attempt: stop, write nothing more."""


class Interrupted(Exception):
    """SIGTERM (the worker is shutting down): stop; the next attempt resumes from the last checkpoint."""


class UserError(Exception):
    """A problem with the job's inputs; retrying cannot help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# Progress values the training loop reports that are columns of the job row.
PROGRESS_COLUMNS = frozenset({"step", "total_steps", "epoch", "train_loss", "eta_s", "phase", "trained_tokens"})


# The database is unreachable (a restart, a failover, the network): sqlalchemy wraps the driver's errors so.
DATABASE_AWAY = (OperationalError, InterfaceError)


class JobContext:
    """The job's identity and every database access of the child.

    Writes are fenced, and survive the database going away for a while: during training, progress is
    skipped, the cancel check is skipped, and events and checkpoint rows are kept in order and written with
    the next write that goes through (each in its own transaction, so a restart never half-applies them);
    the other writes wait for the database up to database_wait_s."""

    def __init__(self, job_id: str, attempt: int) -> None:
        self.settings = get_settings()
        self.job_id, self.attempt = job_id, attempt
        self.Session = get_sessionmaker()
        self.parent = os.getppid()
        self.files = JobFiles(job_id, self.settings)
        self.files.root.mkdir(parents=True, exist_ok=True)
        self.cache = LocalCache.from_settings(self.settings)  # this host's copies; the store has the job's files
        self._held = self.cache.hold(self.cache.key_of(self.files.root))  # no trim of this host evicts it meanwhile
        self._last_progress = 0.0
        self._phase: str | None = None  # the phase last written
        self._wanted_phase: str | None = None  # the phase last reported, written or not
        self._last_check = 0.0
        self._deferred: list[Callable[[Session], None]] = []  # writes made while the database was away
        self._away_since: float | None = None
        self._last_try = 0.0
        self.interrupt_requested = False
        self.in_training = False  # in the loop, which saves a checkpoint before it stops
        self.figures = JobFigures(job_id)  # the worker's /metrics (worker/telemetry.py)

    def on_sigterm(self, _signum, _frame) -> None:
        """The worker passes its shutdown on. In the training loop, stop at the end of the step with a
        checkpoint; anywhere else (loading, evaluating, packaging) stopping at once loses nothing saved."""
        self.interrupt_requested = True
        if not self.in_training:
            raise Interrupted("stopped outside the training loop")

    @contextmanager
    def fenced_tx(self):
        """A transaction that commits only if the job is still ours."""
        with self.Session() as s:
            touched = s.execute(update(Job).where(fenced(self.job_id, self.attempt)).values(updated_at=utcnow()))
            if touched.rowcount != 1:
                s.rollback()
                raise LostJob
            yield s
            s.commit()

    def _away(self, exc: Exception) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            log.warning("database unreachable, training goes on: %s", str(exc).splitlines()[0][:200])

    def _back(self) -> None:
        if self._away_since is not None:
            log.info("database back after %.1fs", time.monotonic() - self._away_since)
            self._away_since = None

    def retrying(self, action: Callable[[], T]) -> T:
        """action(), again every second while the database is away, for up to database_wait_s."""
        deadline = time.monotonic() + self.settings.database_wait_s
        while True:
            try:
                result = action()
                self._back()
                return result
            except DATABASE_AWAY as exc:
                self._away(exc)
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _flush_deferred(self) -> None:
        while self._deferred:
            with self.fenced_tx() as s:
                self._deferred[0](s)
            self._deferred.pop(0)

    def write(self, change: Callable[[Session], None], *, defer: bool = False) -> None:
        """change(session) in a fenced transaction, after the writes deferred before it. With the database
        away: defer=True keeps it for the next write that goes through and returns at once (trying to
        connect at most once a second, so a step never stalls on it); otherwise waits (retrying)."""
        self._deferred.append(change)
        if not defer:
            self.retrying(self._flush_deferred)
            return
        if self._away_since is not None and time.monotonic() - self._last_try < 1.0:
            return
        self._last_try = time.monotonic()
        try:
            self._flush_deferred()
            self._back()
        except DATABASE_AWAY as exc:
            self._away(exc)

    def update(self, **values) -> None:
        def once() -> None:
            self._flush_deferred()
            with self.Session() as s:
                if not update_job(s, self.job_id, self.attempt, **values):
                    raise LostJob

        self.retrying(once)

    def finish(self, status: JobStatus, **values) -> bool:
        """The job's final state, after every deferred write; waits for the database if it is away."""

        def once() -> bool:
            self._flush_deferred()
            with self.Session() as s:
                return finish_job(s, self.job_id, self.attempt, status, **values)

        return self.retrying(once)

    def event(self, message: str, *, type: str = "message", data: dict | None = None, level: str = "info") -> None:
        at = utcnow()
        self.write(
            lambda s: add_event(s, self.job_id, message, type=type, data=data, level=level, created_at=at),
            defer=True,
        )

    def progress(self, values: dict, force: bool = False) -> None:
        """Progress columns, at most every progress_every_s; skipped while the database is away (the next
        write carries newer figures). Every call, throttled or not, updates the worker's /metrics."""
        self.figures.observe(values)
        now = time.monotonic()
        # A new phase is always written: a throttled "training" left the API showing "loading_model" for a whole
        # training that began within progress_every_s of the model's load (later writes carry no phase). One not
        # written yet (the database was away) goes with the next write.
        self._wanted_phase = values.get("phase", self._wanted_phase)
        phase = self._wanted_phase
        if phase != self._phase or force or now - self._last_progress >= self.settings.progress_every_s:
            values = {**values, "phase": phase} if phase is not None else values
            self._last_progress = now
            try:
                with self.Session() as s:
                    ours = update_job(
                        s, self.job_id, self.attempt, **{k: v for k, v in values.items() if k in PROGRESS_COLUMNS}
                    )
            except DATABASE_AWAY as exc:
                self._away(exc)
                return
            self._back()
            if not ours:
                raise LostJob
            self._phase = phase
            with suppress(*DATABASE_AWAY):
                self._flush_deferred()

    def should_stop(self) -> bool:
        """Checked between micro-batches; reads the database at most once a second (not at all while it is
        away: training goes on, and a cancel made meanwhile is seen when it is back)."""
        now = time.monotonic()
        if now - self._last_check < 1.0:
            return False
        self._last_check = now
        if os.getppid() != self.parent:  # the worker died: its lease will expire and another resumes
            raise LostJob
        try:
            with self.Session() as s:
                row = s.execute(
                    select(Job.status, Job.attempt, Job.cancel_requested, Job.pause_requested).where(
                        Job.id == self.job_id
                    )
                ).first()
        except DATABASE_AWAY as exc:
            self._away(exc)
            return False
        self._back()
        if row is None or row.status != JobStatus.running or row.attempt != self.attempt or row.cancel_requested:
            raise LostJob
        if row.pause_requested and not self.interrupt_requested:
            # POST .../pause: stop as a worker shutdown stops, with a checkpoint at the end of this step; the
            # task then marks the job paused instead of queueing it again
            log.info("pause requested: checkpointing at the end of the step")
            self.interrupt_requested = True
        return False


class FollowerContext(JobContext):
    """The context of a rank other than the main one of a job on several GPUs: it reads the job like the main rank,
    and writes nothing. The main rank alone reports, records and decides (stop, checkpoint, pause); the training
    loop broadcasts its decisions (worker/training/distributed.py)."""

    def write(self, change: Callable[[Session], None], *, defer: bool = False) -> None:
        pass

    def update(self, **values) -> None:
        pass

    def finish(self, status: JobStatus, **values) -> bool:
        return False

    def event(self, message: str, *, type: str = "message", data: dict | None = None, level: str = "info") -> None:
        pass

    def progress(self, values: dict, force: bool = False) -> None:
        pass

    def should_stop(self) -> bool:
        return False
