"""The production HTTP server: uvicorn with one or several processes, whose stop also ends the live event streams.

Several processes: uvicorn's own supervisor (`workers=N`: one listening socket, N spawned processes, a dead one
replaced), not gunicorn, since uvicorn already is a dependency and its supervisor does here what gunicorn's
would. Each process has its own database pool, admission turns (app/api/admission.py) and background work
(webhooks, sweep decisions), which are safe to run several times.

uvicorn's graceful shutdown waits for every open response, and a live event stream is open until its job ends
or FTAAS_EVENT_STREAM_MAX_S. So each process, once serving, chains its own step onto uvicorn's SIGINT/SIGTERM
handler: set SHUTTING_DOWN, and every stream ends at its next poll (its client reconnects, with Last-Event-ID,
to a server still up). Done from the app's lifespan, which runs in every process, since uvicorn's supervisor
builds the processes' servers itself.
"""

from __future__ import annotations

import gc
import os
import signal
import threading

from app.core.settings import Settings, get_settings
from app.jobs.event_stream import SHUTTING_DOWN


def run(host: str, port: int, loglevel: str, workers: int) -> bool:
    """What uvicorn.run does; False when a single process could not start (the port taken, the app failing)."""
    import uvicorn

    log_config = json_log_config(loglevel) if get_settings().log_format == "json" else uvicorn.config.LOGGING_CONFIG
    config = uvicorn.Config(
        "app.main:app", host=host, port=port, log_level=loglevel, workers=workers, log_config=log_config
    )
    if workers > 1:
        prometheus_files(get_settings())  # before the processes start: they inherit where to count
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return True
    server = uvicorn.Server(config)
    server.run()
    return server.started


def json_log_config(loglevel: str) -> dict:
    """FTAAS_LOG_FORMAT=json: every line of an API process (uvicorn's access and error lines, ftaas' own) one JSON
    object with its request id (app/core/logs.py). A logging dictConfig, since uvicorn applies it in each of its
    processes."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "app.core.logs.ContextFilter"}},
        "formatters": {"json": {"()": "app.core.logs.json_formatter", "component": "api"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "filters": ["context"], "formatter": "json"},
        },
        "root": {"handlers": ["stderr"], "level": loglevel.upper()},
        # uvicorn's own loggers pass their lines to the root's handler (uvicorn sets their levels)
        "loggers": {
            name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def prometheus_files(settings: Settings) -> None:
    """An empty folder of this server's own for prometheus-client's multiprocess mode (app/api/telemetry.py): every
    API process counts into its files, a scrape sums them. Emptied at each start, so a dead server's counts go."""
    import shutil

    folder = settings.data_dir / "prometheus" / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())


# gen0 collections every 50,000 allocations instead of 700 (generations 1 and 2 as CPython's defaults): a status
# read allocates thousands of objects, and each collection is a pause of every request on the loop.
GC_THRESHOLDS = (50_000, 10, 10)


def serving_process_set_up() -> None:
    """Run once the process serves (the app's lifespan under uvicorn; not a test client's app, whose lifespan runs
    off the main thread): end streams on the stop signal, and keep the garbage collector's pauses short.

    The GC: CPython's full collections walk every tracked object, and a served process holds about a million
    (FastAPI, pydantic, SQLAlchemy, the app): under 200 pollers /healthz took 60-125 ms every 2.5 s, each time
    a full collection (bench/load.py's healthz_slow). gc.freeze() moves what start-up made to a generation no
    collection walks (it is never garbage: modules, classes, the app), and a larger gen0 threshold makes the
    young collections rarer. Measured on 2 cores, 200 pollers for 20 s: /healthz max 125.5 ms -> 13.6 ms,
    status reads 724 -> 784 per second."""
    if threading.current_thread() is not threading.main_thread():
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    end_streams_on_exit_signal()


def end_streams_on_exit_signal() -> None:
    """Chain SHUTTING_DOWN.set() before the process's SIGINT/SIGTERM handlers (uvicorn's, when it serves)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if getattr(previous, "ends_streams", False):
            continue

        def handler(signum, frame, previous=previous):
            SHUTTING_DOWN.set()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        handler.ends_streams = True
        signal.signal(sig, handler)


# The most processes the default gives: each holds up to db_pool_size + db_pool_overflow connections, and
# Postgres allows 100 by default; a larger host sets FTAAS_WEB_WORKERS (and max_connections) deliberately.
AUTO_WORKERS_MAX = 4


def web_workers(settings: Settings, requested: int | None = None) -> int:
    """--workers, else FTAAS_WEB_WORKERS, else one per usable core (at most AUTO_WORKERS_MAX) on Postgres, and one
    on the embedded SQLite defaults (one database file, with the embedded worker beside it)."""
    if requested or settings.web_workers:
        return requested or settings.web_workers
    if settings.database_url.startswith("sqlite"):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(cores, AUTO_WORKERS_MAX)
