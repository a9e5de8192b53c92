"""The real service for end-to-end tests: a database of its own, the API under uvicorn and N Celery
workers, started as `ftaas serve` / `ftaas worker` start them; plus small HTTP helpers and a job's training
children."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import (
    ARTIFACTS,
    PG_ADMIN_URL,
    ROOT,
    TEST_ENV,
    create_database,
    drop_database,
    migrate_database,
    pg_url,
)

JOB_TIMEOUT_S = 40 * 60


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_service(
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    pg_admin_url: str = PG_ADMIN_URL,
    preview_worker: bool = False,
    worker_env: Callable[[int], dict[str, str]] | None = None,
    api_loglevel: str = "warning",
):
    """pg_admin_url: the Postgres server to make the service's database on (a test's private one); preview_worker:
    start `ftaas preview-worker` too (file previews); worker_env: worker i's own settings over the service's (its
    host name, its private folders); api_loglevel: `ftaas serve --loglevel` (info: its lines of every request
    too)."""
    run = uuid.uuid4().hex[:8]
    db = f"ftaas_e2e_{run}"
    create_database(db, pg_admin_url)
    env = {
        **os.environ,
        **TEST_ENV,
        "FTAAS_DATABASE_URL": pg_url(db, pg_admin_url),
        "FTAAS_QUEUE_NAME": f"gpu-e2e-{run}",
        "FTAAS_PREVIEW_QUEUE_NAME": f"preview-e2e-{run}",
        "FTAAS_ARTIFACTS_DIR": str(ARTIFACTS / f"e2e-{run}"),
        "FTAAS_CACHE_DIR": str(ARTIFACTS / f"e2e-{run}-cache"),
        "FTAAS_DATA_DIR": str(ARTIFACTS / f"e2e-{run}-data"),
        "FTAAS_MAX_UPLOAD_BYTES": str(64 * 1024 * 1024),
        "FTAAS_PROGRESS_EVERY_S": "1",
        "FTAAS_CHECKPOINT_EVERY_S": "30",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    migrate_database(env["FTAAS_DATABASE_URL"])
    port = free_port()
    logs = ARTIFACTS / f"e2e-{run}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--loglevel", api_loglevel],
            cwd=ROOT,
            env=env,
            stdout=open(logs / "api.log", "w"),
            stderr=subprocess.STDOUT,
        )
    ]

    def start_worker(i: int, log_name: str | None = None) -> subprocess.Popen:
        """Worker i (FTAAS_WORKER_NAME worker-i), logging to worker.log for 0, else worker-i.log."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--loglevel", "info"],
            cwd=ROOT,
            env={**env, "FTAAS_WORKER_NAME": f"worker-{i}", **(worker_env(i) if worker_env else {})},
            stdout=open(logs / (log_name or ("worker.log" if i == 0 else f"worker-{i}.log")), "a"),
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    for i in range(workers):
        start_worker(i)
    if preview_worker:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "preview-worker", "--loglevel", "info"],
                cwd=ROOT,
                env=env,
                stdout=open(logs / "preview-worker.log", "a"),
                stderr=subprocess.STDOUT,
            )
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert procs[0].poll() is None, (logs / "api.log").read_text()
            assert time.monotonic() < deadline, "API did not become ready"
            time.sleep(0.5)
        key = subprocess.run(
            [sys.executable, "-m", "app.cli", "create-key", "--tenant", "e2e", "--quiet"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        yield {
            "base": base,
            "key": key,
            "logs": logs,
            "env": env,
            "api_pid": procs[0].pid,
            "workers": procs[1:],
            "start_worker": start_worker,  # a test that kills a worker starts the next one with this
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        drop_database(db, pg_admin_url)


def client_for(service) -> httpx.Client:
    return httpx.Client(base_url=service["base"], headers={"Authorization": f"Bearer {service['key']}"}, timeout=60)


def upload(c: httpx.Client, path: Path, **form) -> dict:
    with open(path, "rb") as fh:
        r = c.post("/v1/files", files={"file": (path.name, fh)}, data={"purpose": "fine-tune", **form})
    assert r.status_code == 200, r.text
    return r.json()


def worker_logs(service, chars: int = 5000) -> str:
    return "\n".join(p.read_text()[-chars:] for p in sorted(Path(service["logs"]).glob("worker*.log")))


def wait_for_jobs(c: httpx.Client, job_ids: list[str], logs) -> dict[str, tuple[dict, float]]:
    done: dict[str, tuple[dict, float]] = {}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while len(done) < len(job_ids):
        for jid in job_ids:
            if jid in done:
                continue
            job = c.get(f"/v1/fine_tuning/jobs/{jid}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                done[jid] = (job, time.time())
        assert time.monotonic() < deadline, "jobs did not finish in time:\n" + (logs / "worker.log").read_text()[-5000:]
        time.sleep(2)
    return done


def events_of(c, job_id: str) -> list[str]:
    """The job's event messages, oldest first (the newest 100)."""
    data = c.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
    return [e["message"] for e in reversed(data)]


def child_pids(job_id: str) -> list[int]:
    """Training children of a job (`python -m worker.child train <job_id> <attempt>`, and on several GPUs its
    torchrun and every rank), from /proc."""
    from worker.tasks.supervise import is_training_child

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if is_training_child([a.decode(errors="replace") for a in argv if a], job_id):
            pids.append(int(entry))
    return pids
