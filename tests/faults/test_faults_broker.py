"""Broker faults under the real service (API, Celery workers, Postgres), each on a PRIVATE redis-server: a short
visibility timeout would make every worker on a shared Redis re-deliver every other run's unacked messages, and a
restart must not touch anyone else's queues. Each test prints its `[faults] ...` figure line.

- a visibility timeout shorter than the jobs: re-deliveries happen, duplicate executions do not;
- Redis stopped losing every message, then started again: no job lost, recovery timed (worker/tasks/reconciler.py's
  broker-loss detector in reconcile_once), plus a fast test of that detector alone.

Run alone with `scripts/test.sh -m faults`.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.conftest import DATASETS
from tests.helpers.e2e_service import child_pids, client_for, free_port, running_service, upload

JOBS = "/v1/fine_tuning/jobs"
REDIS_SERVER = "/usr/bin/redis-server"


def job_body(epochs: int) -> dict:
    """A small job on the tiny model; its length is set by the epochs (about 100 rows each)."""
    return {
        "model": "stories260k",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 8}}},
        "adapter": {"type": "lora", "r": 8},
        "evaluation": {"metrics": ["perplexity"], "max_rows": 10},
    }


class PrivateRedis:
    """A redis-server of this test alone, on a free port, with no persistence at all: stopped with SHUTDOWN
    NOSAVE it forgets every queued and unacked message, as a production Redis without AOF/RDB would."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.proc = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=2, socket_timeout=5)

    def start(self) -> None:
        argv = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.folder)]
        log = open(self.folder / "redis.log", "a")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:  # not there: fail loudly, never skip
            assert self.proc.poll() is None, (self.folder / "redis.log").read_text()
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the private redis-server did not answer within 20 s"
                time.sleep(0.1)

    def stop_losing_everything(self) -> None:
        self.client().shutdown(nosave=True)  # redis-py takes the connection it closes as the answer
        self.proc.wait(timeout=20)


@contextmanager
def private_redis(folder: Path):
    server = PrivateRedis(folder)
    server.start()
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=20)


@contextmanager
def watching_children(ids: list[str]):
    """Samples /proc every 50 ms: `double` gets every job seen with two training children at once, `seen` the
    first and last moment each job had a child (its run time)."""
    double: set[str] = set()
    seen: dict[str, list[float]] = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for job_id in list(ids):
                pids = child_pids(job_id)
                if len(pids) > 1:
                    double.add(job_id)
                if pids:
                    seen.setdefault(job_id, [time.monotonic()] * 2)[1] = time.monotonic()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield double, seen
    finally:
        stop.set()
        watcher.join()


def wait_finished(c, ids: list[str], svc, within_s: float) -> dict[str, dict]:
    done: dict[str, dict] = {}
    deadline = time.monotonic() + within_s
    while len(done) < len(ids):
        for job_id in ids:
            r = c.get(f"{JOBS}/{job_id}")
            assert r.status_code == 200, r.text
            if r.json()["status"] in ("succeeded", "failed", "cancelled"):
                done[job_id] = r.json()
        assert time.monotonic() < deadline, f"jobs not finished after {within_s:.0f}s:\n{worker_logs(svc)[-6000:]}"
        time.sleep(0.5)
    return done


def worker_logs(svc) -> str:
    return "\n".join(p.read_text() for p in sorted(Path(svc["logs"]).glob("worker*.log")))


def deliveries_per_task(svc) -> dict[str, int]:
    """Celery logs `Task ftaas.train[<task id>] received` for every delivery. A broker re-delivery carries the
    same task id again; a reconciler's resend is a new task, so it is not counted as one."""
    counts: dict[str, int] = {}
    for task_id in re.findall(r"Task ftaas\.train\[([0-9a-f-]+)\] received", worker_logs(svc)):
        counts[task_id] = counts.get(task_id, 0) + 1
    return counts


def test_jobs_longer_than_the_visibility_timeout_are_redelivered_but_never_run_twice(tmp_path):
    """Visibility timeout 3 s, swept every second, jobs that run several times longer, 2 workers: Redis hands a
    running job's message again to the free worker, which finds the job claimed (the heartbeat holds its lease)
    and does nothing. The second job starts once the first one's re-delivery was seen, so each job has a free
    worker for a while. Re-deliveries > 0, duplicate executions 0, every job done on attempt 1."""
    with private_redis(tmp_path / "redis") as broker:
        env = {
            "FTAAS_BROKER_URL": broker.url,
            "FTAAS_VISIBILITY_TIMEOUT_S": "3",
            "FTAAS_BROKER_RESTORE_EVERY_S": "1",
            "FTAAS_TORCH_THREADS": "1",
            "FTAAS_RATE_LIMIT_PER_MINUTE": "0",  # polled twice a second
        }
        with running_service(workers=2, extra_env=env) as svc, client_for(svc) as c:
            data = upload(c, DATASETS / "wikisql" / "test.jsonl", completion_separator="\nA: ")
            body = {**job_body(epochs=2), "training_file": data["id"], "validation_file": data["id"]}
            ids = [c.post(JOBS, json=body).json()["id"]]
            with watching_children(ids) as (double, seen):
                wait_running(c, ids, 1, within_s=120)
                wait_for_log(svc, "is not claimable", within_s=60)  # the other worker got the re-delivery
                skipped_while_running = bool(child_pids(ids[0]))
                ids.append(c.post(JOBS, json=body).json()["id"])
                done = wait_finished(c, ids, svc, within_s=240)
            per_task = deliveries_per_task(svc)
            skipped = worker_logs(svc).count("is not claimable")
    redeliveries = sum(n - 1 for n in per_task.values())
    run_s = sorted(round(last - first, 1) for first, last in seen.values())
    print(
        f"\n[faults] visibility timeout 3 s, {len(ids)} jobs of {run_s} s on 2 workers: {redeliveries} re-deliveries "
        f"({skipped} run, each finding its job claimed or done), {len(double)} duplicate executions, "
        f"{sum(j['status'] == 'succeeded' and j['attempt'] == 1 for j in done.values())}/{len(ids)} jobs "
        f"succeeded on attempt 1"
    )
    assert all(j["status"] == "succeeded" for j in done.values()), done
    assert min(run_s) > 2 * 3, "a job did not outlast the visibility timeout"
    assert redeliveries > 0, per_task
    assert skipped_while_running, "the first re-delivery came only after its job had ended"
    assert not double
    assert all(j["attempt"] == 1 for j in done.values()), {k: j["attempt"] for k, j in done.items()}


def wait_for_log(svc, text: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while text not in worker_logs(svc):
        assert time.monotonic() < deadline, f"no {text!r} in the worker logs after {within_s:.0f}s"
        time.sleep(0.2)


def in_broker(broker: PrivateRedis, queue: str) -> set[str]:
    """Job ids with a task message in Redis: waiting in the queue's list, or delivered to a worker and not yet
    acknowledged (kombu's `unacked` hash). Messages are kombu's JSON envelope, the body in base64."""
    client = broker.client()
    envelopes = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    envelopes += [json.loads(raw)[0] for raw in client.hvals("unacked")]
    ids = set()
    for envelope in envelopes:
        args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        ids.add(args[0])
    return ids


def wait_running(c, ids: list[str], n: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while sum(bool(child_pids(job_id)) for job_id in ids) < n:
        assert time.monotonic() < deadline, f"{n} jobs did not start within {within_s:.0f}s"
        time.sleep(0.1)


def statuses(c, ids: list[str]) -> dict[str, str]:
    return {job_id: c.get(f"{JOBS}/{job_id}").json()["status"] for job_id in ids}


LOSS_LINE = "the broker lost its messages"


def test_a_redis_restart_that_forgets_every_message_loses_no_job(tmp_path):
    """2 jobs running, 2 queued, then Redis stopped with SHUTDOWN NOSAVE (every queued and unacked message gone),
    a job created while it is down, Redis started again, empty, 5 s after the stop. The running jobs run on
    through the outage (attempt 1: neither cancelled nor restarted); one worker finds the broker marker gone and
    sends every queued job again; all 5 succeed, none ever with two training children. Reports the time from the
    restart until every lost job was back in Redis (or started), until all had started, and until all were done."""
    with private_redis(tmp_path / "redis") as broker:
        env = {
            "FTAAS_BROKER_URL": broker.url,
            "FTAAS_RECONCILE_EVERY_S": "2",
            "FTAAS_TORCH_THREADS": "1",
            "FTAAS_RATE_LIMIT_PER_MINUTE": "0",
        }
        with running_service(workers=2, extra_env=env) as svc, client_for(svc) as c:
            data = upload(c, DATASETS / "wikisql" / "test.jsonl", completion_separator="\nA: ")
            files = {"training_file": data["id"], "validation_file": data["id"]}
            # the first two outlast the outage and the recovery; the queued ones are short
            ids = [c.post(JOBS, json={**job_body(epochs=3), **files}).json()["id"] for _ in range(2)]
            ids += [c.post(JOBS, json={**job_body(epochs=1), **files}).json()["id"] for _ in range(2)]
            with watching_children(ids) as (double, _seen):
                wait_running(c, ids, 2, within_s=120)
                queued_before = [job_id for job_id, status in statuses(c, ids).items() if status == "queued"]
                losses_before = worker_logs(svc).count(LOSS_LINE)
                out = outage(broker, c, {**job_body(epochs=1), **files}, down_s=5.0)
                ran_through = sum(bool(child_pids(job_id)) for job_id in ids[:2])
                ids.append(out["created"])
                lost = [*queued_before, out["created"]]
                recovered_s = wait_back_in_broker(c, broker, svc["env"]["FTAAS_QUEUE_NAME"], lost, out["up"], svc)
                started_s = wait_started(c, lost, out["up"], within_s=240)
                done = wait_finished(c, ids, svc, within_s=300)
                total_s = time.monotonic() - out["up"]
            losses = worker_logs(svc).count(LOSS_LINE) - losses_before
    succeeded = sum(j["status"] == "succeeded" for j in done.values())
    print(
        f"\n[faults] Redis down {out['down_s']:.1f}s (SHUTDOWN NOSAVE) with {ran_through} jobs running through it "
        f"and {len(queued_before)} queued, 1 created while down (API answered in {out['create_s']:.1f}s): "
        f"all {len(lost)} lost jobs back in Redis {recovered_s:.1f}s after the restart (resent by {losses} worker), "
        f"all started after {started_s:.0f}s, all {len(ids)} done after {total_s:.0f}s; {succeeded} succeeded, "
        f"{len(ids) - succeeded} lost, {len(double)} with two children at once, "
        f"attempts {sorted(j['attempt'] for j in done.values())}"
    )
    assert len(queued_before) == 2, queued_before
    assert ran_through == 2, "a running job did not outlast the outage"
    assert succeeded == len(ids), done
    assert not double
    assert all(j["attempt"] == 1 for j in done.values()), {k: j["attempt"] for k, j in done.items()}
    assert losses == 1, "exactly one worker resends per loss"
    # the consumer reconnects with back-off (2, 4, 6 s ... in kombu's ensure_connection), then a reconcile pass (2 s)
    assert recovered_s <= 30


def outage(broker: PrivateRedis, c, body: dict, down_s: float) -> dict:
    """Stops Redis losing everything, creates a job through the API meanwhile (it cannot be enqueued: the API
    logs it and answers anyway), starts Redis again down_s after the stop."""
    t_stop = time.monotonic()
    broker.stop_losing_everything()
    t_post = time.monotonic()
    r = c.post(JOBS, json=body)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    create_s = time.monotonic() - t_post
    time.sleep(max(0.0, down_s - (time.monotonic() - t_stop)))
    broker.start()
    t_up = time.monotonic()
    return {"created": r.json()["id"], "create_s": create_s, "up": t_up, "down_s": t_up - t_stop}


def wait_back_in_broker(c, broker: PrivateRedis, queue: str, lost: list[str], t_up: float, svc) -> float:
    """Seconds from t_up until every lost job has a message in Redis again or has left `queued`."""
    while True:
        try:
            back = in_broker(broker, queue)
        except redis.ConnectionError:
            back = set()
        pending = [j for j in lost if j not in back and statuses(c, [j])[j] == "queued"]
        if not pending:
            return time.monotonic() - t_up
        assert time.monotonic() - t_up < 120, f"{pending} never came back:\n{worker_logs(svc)[-6000:]}"
        time.sleep(0.2)


def wait_started(c, lost: list[str], t_up: float, within_s: float) -> float:
    """Seconds from t_up until no lost job is `queued` any more."""
    deadline = time.monotonic() + within_s
    while "queued" in statuses(c, lost).values():
        assert time.monotonic() < deadline, statuses(c, lost)
        time.sleep(0.5)
    return time.monotonic() - t_up


def test_after_a_broker_loss_exactly_one_pass_resends_every_queued_job(tmp_path, monkeypatch, database):
    """The broker-loss detector alone, on a private Redis: the first pass (marker missing) resends every queued job,
    the next does nothing, and after a flush one pass resends again; with the filesystem broker it never fires."""
    from app.core.celery_app import make_celery
    from app.core.settings import Settings, get_settings
    from worker.tasks import reconciler

    queue = get_settings().queue_name
    with queued_job_rows(2) as mine, private_redis(tmp_path / "redis") as broker:
        monkeypatch.setattr(reconciler, "celery", make_celery(Settings(broker_url=broker.url, queue_name=queue)))
        first, second = reconciler.resend_if_broker_lost(), reconciler.resend_if_broker_lost()
        waiting = in_broker(broker, queue)
        broker.client().flushall()  # what a restart without persistence leaves
        after_flush, again = reconciler.resend_if_broker_lost(), reconciler.resend_if_broker_lost()
    monkeypatch.setattr(
        reconciler, "celery", make_celery(Settings(broker_url="filesystem://", data_dir=tmp_path / "fs"))
    )
    print(
        f"\n[faults] broker-loss passes: resent {len(first)}, then {len(second)}; "
        f"after a flush {len(after_flush)}, then {len(again)}"
    )
    assert set(mine) <= set(first) and set(mine) <= waiting and second == []
    assert set(mine) <= set(after_flush) and again == []
    assert reconciler.resend_if_broker_lost() == []  # embedded broker: nothing to detect, nothing touched


@contextmanager
def queued_job_rows(n: int):
    """n queued job rows in the session's database, cancelled afterwards so that no other test's worker runs them."""
    from app.core.db import get_sessionmaker
    from app.core.tables import Job, JobStatus
    from app.tenants.service import create_key
    from tests.helpers.factories import make_file_row, make_job

    Session = get_sessionmaker()
    with Session() as s:
        tenant, _ = create_key(s, f"broker-loss-{time.monotonic_ns()}")
        f = make_file_row(s, tenant)
        jobs = [make_job(s, tenant, f, status=JobStatus.queued, commit=False) for _ in range(n)]
        s.commit()
        ids = [job.id for job in jobs]
    try:
        yield ids
    finally:
        with Session() as s:
            for job_id in ids:
                s.get(Job, job_id).status = JobStatus.cancelled
            s.commit()
