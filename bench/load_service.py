"""The service a load benchmark drives: `ftaas serve` on a database of its own (bench/load.py, tests/load/)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL_DIR = SHARED / "models" / "stories260k"
TRAIN_ROWS = SHARED / "datasets" / "wikisql" / "train.jsonl"
PG_ADMIN_URL = os.environ.get("FTAAS_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FTAAS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_sql(sql: str, admin_url: str = PG_ADMIN_URL):
    from sqlalchemy import create_engine, text

    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql))
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


@dataclass
class Target:
    url: str
    key: str
    job_id: str
    file_id: str
    database: str | None = None  # for the idle-in-transaction count, when we made it
    pids: list[int] = field(default_factory=list)  # the server's processes, for their CPU time
    admin: str = PG_ADMIN_URL


@contextmanager
def own_service(extra_env: dict[str, str], log_dir: Path, pg_admin_url: str = PG_ADMIN_URL, redis_url: str = REDIS_URL):
    """`ftaas serve` on a database of its own, with a tenant, a file and a queued job to read."""
    import httpx

    run = uuid.uuid4().hex[:8]
    db = f"ftaas_load_{run}"
    admin_sql(f'CREATE DATABASE "{db}"', pg_admin_url)
    env = {
        **os.environ,
        "FTAAS_DATABASE_URL": pg_admin_url.rsplit("/", 1)[0] + "/" + db,
        "FTAAS_BROKER_URL": redis_url,
        "FTAAS_QUEUE_NAME": f"gpu-load-{run}",
        "FTAAS_ARTIFACTS_DIR": str(log_dir / "artifacts"),
        "FTAAS_DATA_DIR": str(log_dir / "data"),
        "FTAAS_ALLOWED_MODELS": str(MODEL_DIR),
        "FTAAS_RATE_LIMIT_PER_MINUTE": "0",
        "FTAAS_MAX_ACTIVE_JOBS_PER_TENANT": "0",
        "FTAAS_HF_OFFLINE": "true",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    key = subprocess.run(
        [*cli, "create-key", "--tenant", "load", "--quiet"],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = free_port()
    log = open(log_dir / "api.log", "w")
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port), "--loglevel", "warning"], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: see {log_dir / 'api.log'}")
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {key}"}
        rows = "".join(TRAIN_ROWS.read_text().splitlines(keepends=True)[:200])
        f = httpx.post(
            f"{url}/v1/files",
            headers=auth,
            files={"file": ("train.jsonl", rows.encode())},
            data={"purpose": "fine-tune"},
        )
        if f.status_code != 200:
            raise RuntimeError(f"could not upload the file to train on: {f.status_code} {f.text}")
        # the model by its folder name, as the API names a local directory (its path may be a symlink's)
        body = {"model": MODEL_DIR.name, "training_file": f.json()["id"]}
        job = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=auth, json=body)
        if job.status_code != 200:
            raise RuntimeError(f"could not create the job to poll: {job.status_code} {job.text}")
        yield Target(
            url, key, job.json()["id"], f.json()["id"], database=db, pids=server_pids(server.pid), admin=pg_admin_url
        )
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        admin_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', pg_admin_url)


def server_pids(pid: int) -> list[int]:
    import psutil

    proc = psutil.Process(pid)
    return [pid, *(c.pid for c in proc.children(recursive=True))]


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def idle_in_transaction(target: Target) -> int | None:
    """Connections of the service's database idle in an open transaction, after a second to settle (a request
    that is just finishing is not a leak)."""
    if target.database is None:
        return None
    time.sleep(1.0)
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = '%s' AND state LIKE 'idle in transaction%%'"
    return int(admin_sql(sql % target.database, target.admin)[0][0])
