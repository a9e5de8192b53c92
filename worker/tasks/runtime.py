"""The worker process's Celery app and its process-wide hooks: the worker's name (host:pid, stored as a
job's holder), fresh database connections after a fork, a warm shutdown passed on to training children, the
/metrics port (worker/telemetry.py), JSON log lines when FTAAS_LOG_FORMAT=json, and the log context of a task.

`celery -A worker.tasks worker` imports worker.tasks, which imports every task module, so the app and its
tasks are registered together.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from contextlib import contextmanager, suppress

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutting_down,
)
from sqlalchemy import select

from app.core.celery_app import make_celery
from app.core.db import get_engine, get_sessionmaker
from app.core.logs import log_context, use_json
from app.core.settings import get_settings
from worker import telemetry
from worker.tasks.standby import keep_standby, release_standby
from worker.tasks.supervise import training_children

log = logging.getLogger("ftaas.worker")
celery = make_celery()


def worker_name() -> str:
    return f"{os.environ.get('FTAAS_WORKER_NAME') or socket.gethostname()}:{os.getpid()}"


@worker_shutting_down.connect
def _interrupt_training_children(sig=None, how=None, **_kwargs) -> None:
    """A warm shutdown (SIGTERM, or SIGINT once, to the worker's main process, as `docker stop` sends it)
    would wait for the running job to finish, hours on a GPU. Instead every training child under this
    worker is told to checkpoint and stop; the task then puts its job back in the queue for the next worker.
    A cold shutdown kills the pool: the job is then recovered from its lease like any crash."""
    import psutil

    for proc in training_children(psutil.Process()):
        log.info("worker shutting down (%s, %s): interrupting training child %s", sig, how, proc.pid)
        with suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs) -> None:
    """A forked pool child must not reuse the parent's pooled database connections (SQLAlchemy's rule for
    forks): drop the inherited pool without closing the parent's sockets."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


@worker_process_init.connect
def _standby_child(**_kwargs) -> None:
    """A pool process waits for its one task: a child starts importing for it meanwhile (worker/tasks/standby.py).
    Not in a solo pool's main process (the preview worker), which has no task to hand it."""
    from billiard.process import current_process

    if get_settings().standby_child and current_process().name != "MainProcess":
        try:
            keep_standby()
        except OSError:  # no standby: the task starts a fresh child, as it would anyway
            log.warning("could not start a standby child", exc_info=True)


@worker_process_shutdown.connect
def _no_standby_left(**_kwargs) -> None:
    """A pool process that ends with its standby unused (a task skipped, a worker stopping) lets it go."""
    release_standby()


@worker_init.connect
def _metrics_port(**_kwargs) -> None:
    """In the main process, before the pool starts, so that pool processes and training children inherit where
    to record (worker/telemetry.py)."""
    settings = get_settings()
    if settings.worker_metrics_port:
        telemetry.serve_metrics(settings.worker_metrics_port, settings.data_dir)
    else:
        telemetry.no_metrics()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_lines(logger=None, **_kwargs) -> None:
    """FTAAS_LOG_FORMAT=json: Celery's handlers (its own lines, ftaas', and redirected prints) write JSON lines with
    the task's request and job ids (app/core/logs.py); text keeps Celery's format."""
    if get_settings().log_format == "json":
        for handler in logger.handlers:
            use_json(handler, "worker")


@contextmanager
def logging_for(table, row_id: str):
    """Log lines of a task on `row_id` (a job, comparison or merged model) name it and the request that made it;
    so do its child's (spawn_child hands the context on)."""
    with get_sessionmaker()() as s:
        request_id = s.scalar(select(table.request_id).where(table.id == row_id))
    with log_context(request_id=request_id, job_id=row_id):
        yield
