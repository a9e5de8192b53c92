"""What the API does for pollers and under pressure, in process: the status read's ETag and 304, a database pool
that has no connection to give (503 with Retry-After, not a hang), and how many processes `ftaas serve` runs."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.api.server import AUTO_WORKERS_MAX, web_workers
from app.core.settings import Settings
from app.core.tables import Job
from tests.helpers.factories import make_job


def test_the_status_read_carries_an_etag_and_answers_304_until_the_job_changes(
    client, db_session, auth, acme, train_file
):
    job = make_job(db_session, acme, train_file)
    url = f"/v1/fine_tuning/jobs/{job.id}"
    first = client.get(url, headers=auth)
    assert first.status_code == 200 and first.json()["status"] == "queued"
    etag = first.headers["ETag"]
    again = client.get(url, headers={**auth, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    assert client.get(url, headers={**auth, "If-None-Match": '"other"'}).status_code == 200

    # as the worker would, by statement (the read detached the test session's copy of the row)
    db_session.execute(update(Job).where(Job.id == job.id).values(status="running"))
    db_session.commit()
    changed = client.get(url, headers={**auth, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["status"] == "running" and changed.headers["ETag"] != etag


def test_a_pool_without_a_free_connection_is_a_503_with_retry_after(client, auth, monkeypatch):
    def no_connection(*_args, **_kwargs):
        raise PoolTimeout("QueuePool limit of size 10 overflow 5 reached, connection timed out, timeout 3.00")

    monkeypatch.setattr("app.api.deps.tenant_for_key", no_connection)
    r = client.get("/v1/files", headers=auth)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "server_busy"


def test_serve_runs_one_process_per_core_on_postgres_and_one_on_sqlite(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)))
    postgres = Settings(database_url="postgresql+psycopg://u@h/db")
    assert web_workers(postgres) == AUTO_WORKERS_MAX  # 16 cores, capped: each process keeps its own pool
    assert web_workers(Settings(database_url="sqlite:///x.db")) == 1
    assert web_workers(postgres, requested=6) == 6
    assert web_workers(Settings(database_url="sqlite:///x.db", web_workers=3)) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert web_workers(postgres) == 2
