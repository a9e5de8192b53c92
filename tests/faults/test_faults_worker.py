"""Faults of a whole worker and of the database under the real service (API, Celery worker on Redis,
Postgres), each printing its figure: a worker killed with its children, SIGTERM to a worker, and a Postgres
restart mid-training. The training child alone: test_faults_child.py.

Run alone with `scripts/test.sh -m faults`; they are part of the whole suite, so CI runs them.
"""

from __future__ import annotations

import time

from tests.conftest import DATASETS
from tests.helpers.e2e_service import child_pids, client_for, events_of, running_service, upload, wait_for_jobs

JOBS = "/v1/fine_tuning/jobs"


def worker_tree(pid: int) -> list:
    """A worker's processes: the Celery main process, its pool process, training children (psutil)."""
    import psutil

    main = psutil.Process(pid)
    return [main, *main.children(recursive=True)]


def wait_for_event(c, job_id: str, pattern: str, timeout: float = 180.0) -> tuple[str, float]:
    """The first event of the job matching `pattern` (a regex) and when it was seen (monotonic)."""
    import re

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events_of(c, job_id):
            if re.search(pattern, e):
                return e, time.monotonic()
        time.sleep(0.25)
    raise AssertionError(f"no event /{pattern}/ within {timeout:.0f}s: {events_of(c, job_id)}")


def wait_for_training_step(c, job_id: str, fraction: float, timeout: float = 300.0) -> dict:
    """The job's progress once its step reaches `fraction` of the total and a checkpoint exists."""
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"{JOBS}/{job_id}").json()
        p = job["progress"]
        if job["status"] == "running" and p["phase"] == "training" and p["total_steps"]:
            if p["step"] >= p["total_steps"] * fraction and c.get(f"{JOBS}/{job_id}/checkpoints").json()["data"]:
                return p
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.2)


# Jobs of 68 steps (600 rows less the 10% held out, batch 8) with a checkpoint every 3 s: long enough to be hit
# mid-training (about 0.5 s a step on one thread of these 2 cores: the 30% mark is some 10 s in, and 70% of the
# steps, some 25 s, are left for the 12 s database outage).
LONG_JOB_ROWS = 600
LONG_JOB = {
    "model": "stories260k",
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
    "adapter": {"type": "lora", "r": 8},
    "training": {"learning_rate": 0.005},
    "evaluation": {"metrics": ["perplexity"], "max_rows": 10},
}


def long_job_rows(folder):
    """The first LONG_JOB_ROWS rows of WikiSQL's training file, as a file to upload."""
    path = folder / "train.jsonl"
    with open(DATASETS / "wikisql" / "train.jsonl") as fh:
        path.write_text("".join(fh.readlines()[:LONG_JOB_ROWS]))
    return path


def test_a_killed_worker_s_job_resumes_on_the_next_worker_within_the_lease(tmp_path):
    """kill -9 of a whole worker (Celery main process, pool process, training child) at about half way, then
    a new worker on the host: the job resumes from its last complete checkpoint, and sooner than the lease
    (60 s) would let it. The broker's visibility timeout (hours) plays no part."""
    import re
    import signal

    env = {"FTAAS_TORCH_THREADS": "1", "FTAAS_CHECKPOINT_EVERY_S": "3", "FTAAS_LEASE_S": "60"}
    with running_service(extra_env=env) as svc, client_for(svc) as c:
        train = upload(c, long_job_rows(tmp_path), completion_separator="\nA: ")
        job_id = c.post(JOBS, json={**LONG_JOB, "training_file": train["id"]}).json()["id"]
        p = wait_for_training_step(c, job_id, 0.5)
        tree = worker_tree(svc["workers"][0].pid)
        assert len(tree) == 3, tree  # main, pool process, training child: all three go
        for proc in tree:
            proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        last_ckpt = max(ck["step_number"] for ck in c.get(f"{JOBS}/{job_id}/checkpoints").json()["data"])
        svc["start_worker"](0, "worker-restarted.log")
        _, resumed_at = wait_for_event(c, job_id, r"^Attempt 2 started")
        ((job, _),) = wait_for_jobs(c, [job_id], svc["logs"]).values()
        events = events_of(c, job_id)
        restarted_log = (svc["logs"] / "worker-restarted.log").read_text()
    resumed = [int(m.group(1)) for e in events if (m := re.search(r"^Resuming from the checkpoint of step (\d+)", e))]
    recovery = resumed_at - killed_at
    print(
        f"\n[faults] whole worker killed at step {p['step']} of {p['total_steps']} (last checkpoint {last_ckpt}): "
        f"the next worker started attempt 2 {recovery:.1f}s after the kill (lease 60 s), resumed at step "
        f"{resumed[0] if resumed else None}; job {job['status']}"
    )
    assert job["status"] == "succeeded" and job["attempt"] == 2, events
    assert resumed and resumed[0] >= last_ckpt  # the last complete checkpoint (or one finished at the kill)
    assert recovery < 60.0, restarted_log[-3000:]


def test_sigterm_to_a_worker_checkpoints_its_job_and_the_next_worker_resumes_it_with_no_step_lost(tmp_path):
    """SIGTERM to the worker's main process (as `docker stop` sends it), then to every process of the worker
    at once (as systemd and Kubernetes do): each time the training child saves a checkpoint at the end of
    its step and stops, the worker puts the job back in the queue and exits, and the next worker resumes at
    exactly that step. Shutdowns are not failures: with max_attempts 1 the job still succeeds on attempt 3."""
    import re
    import signal

    env = {"FTAAS_TORCH_THREADS": "1", "FTAAS_CHECKPOINT_EVERY_S": "3", "FTAAS_MAX_ATTEMPTS": "1"}
    report = []
    with running_service(extra_env=env) as svc, client_for(svc) as c:
        train = upload(c, long_job_rows(tmp_path), completion_separator="\nA: ")
        job_id = c.post(JOBS, json={**LONG_JOB, "training_file": train["id"]}).json()["id"]
        worker = svc["workers"][0]
        for attempt, (fraction, whole_tree) in enumerate([(0.3, False), (0.6, True)], start=1):
            p = wait_for_training_step(c, job_id, fraction)
            t = time.monotonic()
            for proc in worker_tree(worker.pid) if whole_tree else [worker]:
                proc.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=60)
            exited = time.monotonic() - t
            saved, _ = wait_for_event(c, job_id, rf"^Attempt {attempt} interrupted .* checkpoint saved at step", 5)
            saved_step = int(saved.rsplit(" ", 1)[1])
            assert c.get(f"{JOBS}/{job_id}").json()["status"] == "queued"
            worker = svc["start_worker"](0, f"worker-after-{attempt}.log")
            resumed, _ = wait_for_event(c, job_id, rf"^Attempt {attempt + 1} started")
            report.append((whole_tree, p["step"], saved_step, exited, code))
        ((job, _),) = wait_for_jobs(c, [job_id], svc["logs"]).values()
        events = events_of(c, job_id)
    resumed = [int(m.group(1)) for e in events if (m := re.search(r"^Resuming from the checkpoint of step (\d+)", e))]
    print(
        "\n[faults] SIGTERM: "
        + "; ".join(
            f"{'every process' if whole else 'main process'} at step {at}: checkpoint at step {saved}, worker "
            f"exited {exited:.1f}s later (code {code})"
            for whole, at, saved, exited, code in report
        )
        + f"; resumed at steps {resumed}; job {job['status']} on attempt {job['attempt']}"
    )
    assert job["status"] == "succeeded" and job["attempt"] == 3, events
    # resumed from the last steps, so: 0 steps lost; and no step before the signal was lost either
    assert resumed == [saved for _, _, saved, _, _ in report], events
    assert all(saved >= at for _, at, saved, _, _ in report)
    assert all(code == 0 for *_, code in report)


def committed_ids(db_url: str) -> dict[str, set]:
    """Every row's id, per table of the schema (from app.models' metadata)."""
    from sqlalchemy import create_engine, select

    from app.core.tables import Base

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {
                name: set(conn.scalars(select(table.c.id)))
                for name, table in Base.metadata.tables.items()
                if "id" in table.c
            }
    finally:
        engine.dispose()


def test_a_database_restart_mid_training_loses_nothing_and_the_api_says_503_meanwhile(tmp_path):
    """Postgres (a private server) stopped the hard way (immediate: no shutdown checkpoint, as in a crash)
    mid-training for 12 s, then started again: the training child trains on through the outage and writes its
    events and checkpoint rows once the database is back, the API answers 503 with Retry-After while it is
    away and 200 again by itself, the job succeeds on its first attempt, and every row committed before the
    stop is still there."""
    from datetime import UTC, datetime

    from tests.helpers.private_postgres import PrivatePostgres

    pg = PrivatePostgres()
    pg.init()
    pg.start()
    env = {"FTAAS_TORCH_THREADS": "1", "FTAAS_CHECKPOINT_EVERY_S": "3"}
    try:
        with running_service(extra_env=env, pg_admin_url=pg.admin_url) as svc, client_for(svc) as c:
            train = upload(c, long_job_rows(tmp_path), completion_separator="\nA: ")
            job_id = c.post(JOBS, json={**LONG_JOB, "training_file": train["id"]}).json()["id"]
            p = wait_for_training_step(c, job_id, 0.3)
            db_url = svc["env"]["FTAAS_DATABASE_URL"]
            before = committed_ids(db_url)
            children = child_pids(job_id)
            pg.stop("immediate")
            stopped, down_at = time.monotonic(), datetime.now(UTC).timestamp()
            answers = []
            while time.monotonic() - stopped < 12:
                r = c.get(f"{JOBS}/{job_id}")
                answers.append((r.status_code, r.headers.get("retry-after"), r.json()["error"]["code"]))
                time.sleep(0.5)
            alive = child_pids(job_id) == children
            pg.start()
            restarted, up_at = time.monotonic(), datetime.now(UTC).timestamp()
            while (r := c.get(f"{JOBS}/{job_id}")).status_code != 200:
                assert time.monotonic() - restarted < 30, r.text
                time.sleep(0.1)
            api_back = time.monotonic() - restarted
            ((job, _),) = wait_for_jobs(c, [job_id], svc["logs"]).values()
            events = c.get(f"{JOBS}/{job_id}/events", params={"limit": 100}).json()["data"]
            checkpoints = c.get(f"{JOBS}/{job_id}/checkpoints", params={"limit": 100}).json()["data"]
            after = committed_ids(db_url)
    finally:
        pg.remove()
    lost = {table: len(ids - after[table]) for table, ids in before.items()}
    during = [e["message"] for e in events if down_at <= e["created_at"] < up_at]
    ckpts_during = [ck["step_number"] for ck in checkpoints if down_at <= ck["created_at"] < up_at]
    print(
        f"\n[faults] Postgres down 12 s at step {p['step']} of {p['total_steps']}: API answered "
        f"{sorted({a[:2] for a in answers})} x{len(answers)} meanwhile and 200 again {api_back:.1f}s after the "
        f"restart; the child trained on ({len(during)} events and checkpoints at steps {ckpts_during} made "
        f"during the outage, written after it); job {job['status']} on attempt {job['attempt']}; committed rows "
        f"lost: {sum(lost.values())} of {sum(len(ids) for ids in before.values())}"
    )
    assert answers and all(code == 503 and retry and err == "database_unavailable" for code, retry, err in answers)
    assert alive and children  # the same training child, through the outage
    assert job["status"] == "succeeded" and job["attempt"] == 1, events
    assert during and ckpts_during  # it trained on while the database was away
    assert not any(lost.values()), lost
