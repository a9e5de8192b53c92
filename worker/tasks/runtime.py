"""The worker process's Celery app and its process-wide hooks: the worker's name (host:pid, stored as a
job's holder), fresh database connections after a fork, and a warm shutdown passed on to training children.

`celery -A worker.tasks worker` imports worker.tasks, which imports every task module, so the app and its
tasks are registered together.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from contextlib import suppress

from celery.signals import worker_process_init, worker_shutting_down

from app.core.celery_app import make_celery
from app.core.db import get_engine
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
