"""The `ftaas` command: serve, worker, migrate, create-key, revoke-key, reconcile.

argparse rather than a CLI framework: six subcommands do not need another dependency.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def migrate() -> None:
    from alembic import command
    from alembic.config import Config

    import migrations

    # Configured in code, not from alembic.ini, so it works from an installed package too.
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    command.upgrade(cfg, "head")


def cmd_migrate(_args: argparse.Namespace) -> int:
    migrate()
    print("database schema is up to date")
    return 0


def cmd_create_key(args: argparse.Namespace) -> int:
    from app.core.db import get_sessionmaker
    from app.tenants.service import create_key

    with get_sessionmaker()() as session:
        tenant, key = create_key(session, args.tenant)
    if args.quiet:
        print(key)
    else:
        print(f"tenant: {tenant.name} ({tenant.id})\napi key (shown once, stored hashed): {key}")
    return 0


def cmd_revoke_key(args: argparse.Namespace) -> int:
    from app.core.db import get_sessionmaker
    from app.tenants.service import revoke_key

    with get_sessionmaker()() as session:
        n = revoke_key(session, args.key)
    print(f"revoked {n} key(s)")
    return 0 if n else 1


def celery_worker_argv(queue: str, hostname: str, loglevel: str, *pool: str) -> list[str]:
    """`celery -A worker.tasks worker` on one queue, with the pool options given."""
    celery = [sys.executable, "-m", "celery", "-A", "worker.tasks", "worker"]
    return [*celery, "-Q", queue, *pool, "--hostname", hostname, "--loglevel", loglevel]


def worker_argv(gpu: str | None, loglevel: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """The training worker (`env`: its environment): one job at a time, from the queues of the job sizes its GPUs
    can take, largest first (app/core/queue.py worker_queues)."""
    from app.core.fleet import owned_gpus
    from app.core.queue import worker_queues
    from app.core.settings import get_settings

    name = f"gpu{gpu.replace(',', '-')}@%h" if gpu is not None else "worker@%h"
    one_at_a_time = ["--concurrency", "1", "--prefetch-multiplier", "1", "--max-tasks-per-child", "1"]
    queues = ",".join(worker_queues(owned_gpus(get_settings(), env)))
    return celery_worker_argv(queues, name, loglevel, *one_at_a_time)


def preview_worker_argv(loglevel: str) -> list[str]:
    """The preview worker: the preview queue only, one task at a time in its own process (`solo`: it keeps the
    tokenizers it loaded for the next previews), no GPU. Previews take seconds; one per deployment is enough."""
    from app.core.settings import get_settings

    return celery_worker_argv(get_settings().preview_queue_name, "preview@%h", loglevel, "--pool", "solo")


def preview_worker_env() -> dict[str, str]:
    # a tokenizer needs no GPU; no /metrics port (FTAAS_WORKER_METRICS_PORT is the training worker's); and no standby
    # child, which only training and comparison children use
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "FTAAS_WORKER_METRICS_PORT": "0", "FTAAS_STANDBY_CHILD": "false"}


def worker_env(gpu: str | None, metrics_port: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if gpu is not None:
        # The GPUs this worker owns (one, or a list for jobs on several): its children see only those.
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if metrics_port is not None:  # each worker of a host its own port (worker/telemetry.py)
        env["FTAAS_WORKER_METRICS_PORT"] = str(metrics_port)
    return env


def cmd_preview_worker(args: argparse.Namespace) -> int:
    os.execvpe(sys.executable, preview_worker_argv(args.loglevel), preview_worker_env())
    return 0  # not reached


def cmd_worker(args: argparse.Namespace) -> int:
    env = worker_env(args.gpu, args.metrics_port)
    os.execvpe(sys.executable, worker_argv(args.gpu, args.loglevel, env), env)
    return 0  # not reached


def _stopped_with_this_process() -> None:
    """Run in a child between fork and exec (Linux): the kernel sends it SIGTERM when `serve` dies, however it
    dies (kill -9 included), so an embedded worker never outlives its server re-parented to init. SIGTERM is
    a worker's warm shutdown: its running job checkpoints and goes back to the queue."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_on_sigterm(signum, _frame) -> None:
    # uvicorn takes SIGTERM for its graceful shutdown, then raises it again under the handler it found: this
    # one, which unwinds into cmd_serve's `finally` (stopping the embedded workers) where Python's default
    # would end the process on the spot.
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    from app.core.settings import get_settings

    settings = get_settings()
    embedded = args.embedded or settings.database_url.startswith("sqlite")
    worker = preview_worker = None
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if embedded:
        migrate()
        if not args.no_worker:
            tied = {"preexec_fn": _stopped_with_this_process} if sys.platform.startswith("linux") else {}
            worker = subprocess.Popen(worker_argv(None, "warning"), env=worker_env(None, None), **tied)
            preview_worker = subprocess.Popen(preview_worker_argv("warning"), env=preview_worker_env(), **tied)
    host = "localhost" if args.host in ("0.0.0.0", "127.0.0.1") else args.host
    print(f"ftaas API on http://{host}:{args.port} — Swagger UI: http://{host}:{args.port}/docs", flush=True)
    if worker is not None:
        print(
            f"embedded worker pid {worker.pid}, preview worker pid {preview_worker.pid} "
            f"(database {settings.database_url}, broker {settings.broker_url})",
            flush=True,
        )
    try:
        from app.api.server import run, web_workers

        workers = web_workers(settings, args.workers)
        if workers > 1:
            print(f"{workers} API processes (FTAAS_WEB_WORKERS or --workers to change)", flush=True)
        if not run(args.host, args.port, args.loglevel, workers):
            sys.exit(3)  # as uvicorn.run: the port was taken, or the app did not start
    finally:
        for process in (preview_worker, worker):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    return 0


def cmd_reconcile(_args: argparse.Namespace) -> int:
    from worker.tasks.reconciler import reconcile_once

    print(f"re-enqueued {reconcile_once()} job(s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftaas", description="fine-tuning as a service")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve", help="run the API (embedded mode also migrates and starts a worker and a preview worker)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--embedded", action="store_true", help="migrate and start a worker alongside (default on SQLite)")
    p.add_argument("--no-worker", action="store_true", help="embedded mode without the worker")
    p.add_argument("--loglevel", default="info")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes (default: FTAAS_WEB_WORKERS, else one per core on Postgres)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run one Celery training worker (one per GPU)")
    p.add_argument(
        "--gpu",
        default=None,
        help="GPU index this worker owns, or indices (0,1) for jobs on several GPUs (sets CUDA_VISIBLE_DEVICES)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of this worker's Prometheus /metrics (default: FTAAS_WORKER_METRICS_PORT; 0: none)",
    )
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("preview-worker", help="run the preview worker (file previews: CPU, tokenizers only)")
    p.add_argument("--loglevel", default="info")
    p.set_defaults(func=cmd_preview_worker)

    p = sub.add_parser("migrate", help="create or upgrade the database schema (Alembic)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("create-key", help="create an API key for a tenant (created if new)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--quiet", action="store_true", help="print only the key")
    p.set_defaults(func=cmd_create_key)

    p = sub.add_parser("revoke-key", help="revoke an API key (the key itself or its displayed prefix)")
    p.add_argument("key")
    p.set_defaults(func=cmd_revoke_key)

    p = sub.add_parser("reconcile", help="re-enqueue jobs whose lease expired or whose message was lost")
    p.set_defaults(func=cmd_reconcile)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
