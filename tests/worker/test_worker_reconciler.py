"""The reconciler inside a real Celery worker process: a running job whose lease expired (its worker died)
is sent to the broker again, claimed as a new attempt and run, with no API involved. The reconciler runs
on the worker's own timer (worker.tasks.Reconciler), not on a thread that could deadlock forked pool
children; the worker here forks a pool child per task, so a hang would show as a job that never moves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta

from sqlalchemy import select

from app.core.db import get_sessionmaker
from app.core.job_state import take_orphaned_jobs
from app.core.tables import Job, JobStatus, Worker, utcnow
from app.tenants.service import create_key
from tests.conftest import ARTIFACTS, ROOT, TEST_ENV
from tests.helpers.factories import make_file_row, make_job


def test_an_orphaned_job_is_taken_over_by_a_worker_on_its_own(database):
    Session = get_sessionmaker()
    with Session() as s:
        tenant, _ = create_key(s, f"reconcile-{uuid.uuid4().hex[:6]}")
        f = make_file_row(s, tenant, storage_name="gone.jsonl")  # its bytes are missing: the job fails fast
        job = make_job(
            s,
            tenant,
            f,
            status=JobStatus.running,
            attempt=1,
            lease_expires_at=utcnow() - timedelta(seconds=5),  # its worker stopped renewing: it died
        )
        job_id = job.id

    queue = f"gpu-reconcile-{uuid.uuid4().hex[:6]}"
    # a worker of two GPUs (as FTAAS_WORKER_GPUS says; this host has none): it advertises them and its queues
    env = {
        **os.environ,
        **TEST_ENV,
        "FTAAS_QUEUE_NAME": queue,
        "FTAAS_RECONCILE_EVERY_S": "1",
        "FTAAS_WORKER_GPUS": "2",
    }
    log = ARTIFACTS / f"{queue}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--loglevel", "info"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            with Session() as s:
                row = s.get(Job, job_id)
                status, attempt, error = row.status, row.attempt, row.error
            if status == JobStatus.failed or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    text = log.read_text()
    assert status == JobStatus.failed, text[-3000:]
    assert attempt == 2  # claimed again as the next attempt
    assert error["code"] == "file_missing"  # it really ran: the child found the file gone
    assert f"reconciler re-enqueued ['{job_id}']" in text
    with Session() as s:
        (advertised,) = [w for w in s.scalars(select(Worker)) if w.queues[-1] == queue]
    assert advertised.gpus == 2 and advertised.queues == [f"{queue}-2gpus", queue]
    assert advertised.name.endswith(f":{worker.pid}")  # host:pid of the worker's main process


def test_a_dead_predecessor_s_job_is_released_for_the_first_reconcile_pass(database, monkeypatch):
    """At worker start, a running job whose holder was a process of this host that no longer exists has its lease
    ended, committed, so the reconcile pass that follows (its own session) sends it again at once rather than
    after the lease (seen missing: the kill -9 fault test then waited the whole lease). A job whose holder still
    runs keeps its lease."""
    from worker.tasks import reconciler

    monkeypatch.setenv("FTAAS_WORKER_NAME", "reclaim-host")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that existed and is now gone
    Session = get_sessionmaker()
    lease = utcnow() + timedelta(hours=1)
    with Session() as s:
        tenant, _ = create_key(s, f"reclaim-{uuid.uuid4().hex[:6]}")
        f = make_file_row(s, tenant)
        dead = make_job(
            s,
            tenant,
            f,
            status=JobStatus.running,
            attempt=1,
            worker=f"reclaim-host:{gone.pid}",
            started_at=utcnow(),
            lease_expires_at=lease,
        )
        alive = make_job(
            s,
            tenant,
            f,
            status=JobStatus.running,
            attempt=1,
            worker=f"reclaim-host:{os.getpid()}",
            started_at=utcnow(),
            lease_expires_at=lease,
        )
        dead_id, alive_id = dead.id, alive.id

    assert reconciler.reclaim_jobs_of_dead_predecessors() == [dead_id]
    with Session() as s:
        orphaned = take_orphaned_jobs(s, queued_older_than_s=3600)
        assert dead_id in orphaned and alive_id not in orphaned
        assert s.get(Job, alive_id).lease_expires_at == lease
