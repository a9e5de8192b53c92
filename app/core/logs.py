"""Log lines of every ftaas process (API, worker, training child), as text or as JSON (FTAAS_LOG_FORMAT), and the
request id that follows a job from its HTTP request into the worker's and the training child's lines.

The request id and job id live in two context variables, set by whoever knows them: the API's middleware
(app/api/request_id.py) for one request; the worker's tasks for one job, from the job's row (`request_id`,
written when the request created it, so a retry or a reconciler's resend hours later carries it too); a child
from its parent, through LOG_CONTEXT_ENV (spawn_child passes `child_env()`). A filter on the handler copies them
onto every record, so a JSON line names them without any call site passing them.

JSON through python-json-logger, a logging.Formatter: Celery, uvicorn and ftaas all log through the standard
library, which it formats as it is, exceptions included. Text keeps each process's plain lines, as before.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("ftaas_request_id", default=None)
JOB_ID: ContextVar[str | None] = ContextVar("ftaas_job_id", default=None)
# Not a setting: how a worker hands its log context to the child it starts (worker/tasks/supervise.py).
LOG_CONTEXT_ENV = "FTAAS_LOG_CONTEXT"
JSON_FIELDS = "%(levelname)s %(name)s %(message)s %(request_id)s %(job_id)s"
RENAMED = {"levelname": "level", "name": "logger"}


class ContextFilter(logging.Filter):
    """Adds request_id and job_id to each record (a record's own `extra` wins), for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        if getattr(record, "job_id", None) is None:
            record.job_id = JOB_ID.get()
        return True


def json_formatter(component: str) -> logging.Formatter:
    """One JSON object per line: level, logger, message, request_id, job_id, component (api, worker, child...) and
    time (ISO 8601, UTC)."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(JSON_FIELDS, rename_fields=RENAMED, static_fields={"component": component}, timestamp="time")


def configure_logging(
    log_format: str, component: str, level: int | str = logging.INFO, text: str | None = None
) -> None:
    """The process's root handler on stderr: JSON lines, or `text` (logging's format string) as the process wrote
    them before."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter(component) if log_format == "json" else logging.Formatter(text))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def use_json(handler: logging.Handler, component: str) -> None:
    """A handler someone else made (Celery's), switched to JSON lines with the context."""
    handler.addFilter(ContextFilter())
    handler.setFormatter(json_formatter(component))


@contextmanager
def log_context(*, request_id: str | None = None, job_id: str | None = None):
    """Lines logged inside name this request and job; the previous context comes back after."""
    tokens = [REQUEST_ID.set(request_id), JOB_ID.set(job_id)]
    try:
        yield
    finally:
        JOB_ID.reset(tokens[1])
        REQUEST_ID.reset(tokens[0])


def child_env() -> dict[str, str]:
    """The current context, for the environment of a child process (adopt_parent_context reads it there)."""
    return {LOG_CONTEXT_ENV: json.dumps({"request_id": REQUEST_ID.get(), "job_id": JOB_ID.get()})}


def adopt_parent_context() -> None:
    """In a child: the context its parent had when it started it, for the child's whole life."""
    try:
        context = json.loads(os.environ.get(LOG_CONTEXT_ENV) or "{}")
    except ValueError:
        return
    REQUEST_ID.set(context.get("request_id"))
    JOB_ID.set(context.get("job_id"))
