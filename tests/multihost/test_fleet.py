"""A fleet on one machine: a real S3-protocol server (moto's standalone server, from the package registry), the API,
and workers that share no folder, each with its own private cache and its own host name; every file goes through
the store. Each test prints its figure:

- a running job's worker killed with kill -9: another host resumes it from the last stored checkpoint;
- 10 jobs over two hosts: none lost, none run twice, every adapter the API serves is the one its worker made;
- the store unreachable for 10 s during training: the job trains on and stores its checkpoints once it is back;
- a host that lost its cache (a new disk) still resumes.

The store is reached through a TCP relay (tests/helpers/tcp_proxy.py) that the outage test switches off: moto keeps
its buckets in memory, so stopping moto itself would lose them. Run alone with `scripts/test.sh -m multihost`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import time
import uuid
from contextlib import contextmanager

import pytest

from tests.conftest import ARTIFACTS, REPORT
from tests.faults.test_faults_worker import LONG_JOB, long_job_rows, wait_for_training_step, worker_tree
from tests.helpers.e2e_service import client_for, events_of, running_service, upload, wait_for_jobs
from tests.helpers.s3_server import S3Server
from tests.helpers.tcp_proxy import TcpProxy

JOBS = "/v1/fine_tuning/jobs"
HOSTS = ("host-a", "host-b")
# one thread a training child, a checkpoint every 3 s, a dead worker's lease gone in 15 s and noticed within 3
FLEET_ENV = {
    "FTAAS_TORCH_THREADS": "1",
    "FTAAS_CHECKPOINT_EVERY_S": "3",
    "FTAAS_LEASE_S": "15",
    "FTAAS_HEARTBEAT_S": "2",
    "FTAAS_RECONCILE_EVERY_S": "3",
    "FTAAS_PROGRESS_EVERY_S": "0.5",
    "FTAAS_STORE_RETRY_S": "60",
}


class Store:
    """The S3 server behind its relay, and a look at what it holds (boto3, as an operator would look)."""

    def __init__(self, server: S3Server, proxy: TcpProxy) -> None:
        self.server, self.proxy = server, proxy
        self.endpoint = f"http://127.0.0.1:{proxy.port}"

    def new_bucket(self) -> str:
        name = f"fleet-{uuid.uuid4().hex[:10]}"
        self.server.make_bucket(name)
        return name

    def env(self, bucket: str) -> dict[str, str]:
        return {**self.server.env(bucket), "FTAAS_S3_ENDPOINT": self.endpoint}

    def _client(self):
        import boto3

        from tests.helpers.s3_server import CREDENTIALS

        return boto3.client(
            "s3",
            endpoint_url=self.server.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, bucket: str, key: str) -> bytes:
        return self._client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def resumable_steps(self, bucket: str, job_id: str) -> list[int]:
        """Steps whose stored checkpoint is whole and holds its trainer state: what a host can resume from."""
        keys = set(self.keys(bucket, f"jobs/{job_id}/checkpoints/"))
        steps = {int(m.group(1)) for k in keys if (m := re.search(r"/step-(\d+)/COMPLETE$", k))}
        return sorted(s for s in steps if f"jobs/{job_id}/checkpoints/step-{s}/trainer_state.pt" in keys)


@pytest.fixture(scope="module")
def store():
    server = S3Server()
    server.start()
    proxy = TcpProxy(server.port)
    proxy.up()
    try:
        yield Store(server, proxy)
    finally:
        proxy.down()
        server.stop()


@contextmanager
def fleet(store: Store, bucket: str, workers: int = 2):
    """The API and `workers` workers on the bucket, each host with private folders: nothing on disk is shared.
    svc["cache"][i] is host i's cache folder."""
    run = uuid.uuid4().hex[:8]
    homes = [ARTIFACTS / f"fleet-{run}-{host}" for host in HOSTS]

    def private(i: int) -> dict[str, str]:
        home = homes[i]
        return {
            "FTAAS_WORKER_NAME": HOSTS[i],
            "FTAAS_CACHE_DIR": str(home / "cache"),
            "FTAAS_ARTIFACTS_DIR": str(home / "artifacts"),  # unused with a store_url: a worker must not need it
            "FTAAS_DATA_DIR": str(home / "data"),
        }

    api_home = ARTIFACTS / f"fleet-{run}-api"
    env = {
        **FLEET_ENV,
        **store.env(bucket),
        "FTAAS_CACHE_DIR": str(api_home / "cache"),
        "FTAAS_ARTIFACTS_DIR": str(api_home / "artifacts"),
    }
    with running_service(workers=workers, extra_env=env, worker_env=private) as svc:
        yield {**svc, "cache": [home / "cache" for home in homes]}


def holder(c, job_id: str, attempt: int, timeout: float = 120.0) -> int:
    """The index of the host that started `attempt` of the job (from its "Attempt N started on host:pid")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in events_of(c, job_id):
            if m := re.match(rf"Attempt {attempt} started on ([\w-]+):", e):
                return HOSTS.index(m.group(1))
        time.sleep(0.25)
    raise AssertionError(f"attempt {attempt} of {job_id} did not start: {events_of(c, job_id)}")


def checkpoint_interval(c, job_id: str) -> int:
    """The largest gap, in steps, between two checkpoints the job saved."""
    steps = sorted(ck["step_number"] for ck in c.get(f"{JOBS}/{job_id}/checkpoints").json()["data"])
    return max((b - a for a, b in zip(steps, steps[1:], strict=False)), default=steps[0] if steps else 0)


def downloaded_matches(c, store: Store, bucket: str, job: dict) -> bool:
    """The adapter the API serves is byte for byte the object the worker stored, whose SHA-256 it recorded."""
    r = c.get(f"{JOBS}/{job['id']}/adapter")
    assert r.status_code == 200, r.text
    digest = hashlib.sha256(r.content).hexdigest()
    stored = store.read(bucket, f"jobs/{job['id']}/adapter.tar.gz")
    return digest == r.headers["X-Checksum-SHA256"] == hashlib.sha256(stored).hexdigest()


def test_a_job_whose_host_is_killed_resumes_on_the_other_host_from_the_last_stored_checkpoint(store, tmp_path):
    bucket = store.new_bucket()
    with fleet(store, bucket) as svc, client_for(svc) as c:
        train = upload(c, long_job_rows(tmp_path), completion_separator="\nA: ")
        job_id = c.post(JOBS, json={**LONG_JOB, "training_file": train["id"]}).json()["id"]
        first = holder(c, job_id, 1)
        wait_for_training_step(c, job_id, 0.4)
        at_kill = c.get(f"{JOBS}/{job_id}").json()["progress"]["step"]
        for proc in worker_tree(svc["workers"][first].pid):
            proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        stored = store.resumable_steps(bucket, job_id)
        second = holder(c, job_id, 2)
        resumed_at = time.monotonic()
        ((job, _),) = wait_for_jobs(c, [job_id], svc["logs"]).values()
        events = events_of(c, job_id)
        interval = checkpoint_interval(c, job_id)
        same = downloaded_matches(c, store, bucket, job)
    resumed = [int(m.group(1)) for e in events if (m := re.match(r"Resuming from the checkpoint of step (\d+)", e))]
    redone = at_kill - resumed[0] if resumed else None
    figure = (
        f"[multihost] kill -9 of {HOSTS[first]} at step {at_kill} (last stored checkpoint "
        f"{stored[-1] if stored else None}): {HOSTS[second]} started attempt 2 {resumed_at - killed_at:.1f}s later "
        "(lease 15 s), resumed at step "
        f"{resumed[0] if resumed else None}, {redone} steps redone (checkpoint interval {interval} steps); "
        f"job {job['status']}, adapter checksum {'equal' if same else 'DIFFERENT'}"
    )
    REPORT.append(figure)
    print("\n" + figure)
    assert job["status"] == "succeeded" and job["attempt"] == 2 and second != first, events
    assert stored and resumed and resumed[0] == stored[-1], (stored, events)
    assert 0 <= redone <= interval
    assert same


def test_ten_jobs_over_two_hosts_none_lost_none_run_twice_every_adapter_as_stored(store, tmp_path):
    bucket = store.new_bucket()
    small = tmp_path / "small.jsonl"
    small.write_text("".join(long_job_rows(tmp_path).read_text().splitlines(keepends=True)[:48]))
    body = {**LONG_JOB, "evaluation": {"metrics": ["perplexity"], "max_rows": 4}}
    t = time.monotonic()
    with fleet(store, bucket) as svc, client_for(svc) as c:
        train = upload(c, small, completion_separator="\nA: ")
        ids = [c.post(JOBS, json={**body, "training_file": train["id"], "seed": i}).json()["id"] for i in range(10)]
        done = wait_for_jobs(c, ids, svc["logs"])
        starts = {jid: [e for e in events_of(c, jid) if re.match(r"Attempt \d+ started on", e)] for jid in ids}
        hosts = [holder(c, jid, 1) for jid in ids]
        same = [downloaded_matches(c, store, bucket, job) for job, _ in done.values()]
    statuses = [job["status"] for job, _ in done.values()]
    twice = [jid for jid, s in starts.items() if len(s) != 1]
    per_host = {h: hosts.count(i) for i, h in enumerate(HOSTS)}
    figure = (
        f"[multihost] 10 jobs over 2 hosts in {time.monotonic() - t:.0f}s: {statuses.count('succeeded')} succeeded, "
        f"{10 - len(done)} lost, {len(twice)} run twice, per host {per_host}, {sum(same)}/10 adapters downloaded "
        "from the API equal to what their worker stored (SHA-256)"
    )
    REPORT.append(figure)
    print("\n" + figure)
    assert statuses == ["succeeded"] * 10, [job.get("error") for job, _ in done.values()]
    assert not twice, starts
    assert all(same)
    assert min(per_host.values()) >= 1, per_host  # both hosts took jobs: neither needed the other's disk


def test_the_store_away_for_10_s_during_training_costs_nothing(store, tmp_path):
    bucket = store.new_bucket()
    with fleet(store, bucket) as svc, client_for(svc) as c:
        train = upload(c, long_job_rows(tmp_path), completion_separator="\nA: ")
        job_id = c.post(JOBS, json={**LONG_JOB, "training_file": train["id"]}).json()["id"]
        wait_for_training_step(c, job_id, 0.2)
        before = store.resumable_steps(bucket, job_id)
        store.proxy.down()
        down_at, down_step = time.monotonic(), c.get(f"{JOBS}/{job_id}").json()["progress"]["step"]
        time.sleep(10)
        up_step = c.get(f"{JOBS}/{job_id}").json()["progress"]["step"]
        store.proxy.up()
        up_at = time.monotonic()
        while (after := store.resumable_steps(bucket, job_id)) and max(after) <= down_step:
            assert time.monotonic() - up_at < 120, "no checkpoint stored after the store came back"
            time.sleep(0.5)
        stored_after = time.monotonic() - up_at
        ((job, _),) = wait_for_jobs(c, [job_id], svc["logs"]).values()
        same = downloaded_matches(c, store, bucket, job)
        events = events_of(c, job_id)
    figure = (
        f"[multihost] store unreachable {up_at - down_at:.0f}s from step {down_step}: training went on to step "
        f"{up_step} meanwhile; a checkpoint past step {down_step} was stored {stored_after:.1f}s after the store came "
        f"back (stored before: {before[-1] if before else None}); job {job['status']} on attempt {job['attempt']}, "
        f"adapter checksum {'equal' if same else 'DIFFERENT'}"
    )
    REPORT.append(figure)
    print("\n" + figure)
    assert up_step > down_step  # it trained on while the store was away
    assert job["status"] == "succeeded" and job["attempt"] == 1, events
    assert same


def test_a_host_that_lost_its_cache_still_resumes(store, tmp_path):
    bucket = store.new_bucket()
    with fleet(store, bucket, workers=1) as svc, client_for(svc) as c:
        train = upload(c, long_job_rows(tmp_path), completion_separator="\nA: ")
        job_id = c.post(JOBS, json={**LONG_JOB, "training_file": train["id"]}).json()["id"]
        wait_for_training_step(c, job_id, 0.4)
        for proc in worker_tree(svc["workers"][0].pid):
            proc.send_signal(signal.SIGKILL)
        stored = store.resumable_steps(bucket, job_id)
        cache_dir = svc["cache"][0]
        assert (cache_dir / "jobs" / job_id / "checkpoints").is_dir()
        lost = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        shutil.rmtree(cache_dir)
        svc["start_worker"](0, "worker-new-disk.log")  # the same host name, an empty disk: takes its job over
        ((job, _),) = wait_for_jobs(c, [job_id], svc["logs"]).values()
        events = events_of(c, job_id)
        same = downloaded_matches(c, store, bucket, job)
    resumed = [int(m.group(1)) for e in events if (m := re.match(r"Resuming from the checkpoint of step (\d+)", e))]
    figure = (
        f"[multihost] host-a killed and its cache ({lost / 1e6:.1f} MB) deleted: back with an empty disk, it resumed "
        f"at step {resumed[0] if resumed else None} (last stored checkpoint {stored[-1] if stored else None}); job "
        f"{job['status']}, adapter checksum {'equal' if same else 'DIFFERENT'}"
    )
    REPORT.append(figure)
    print("\n" + figure)
    assert job["status"] == "succeeded" and job["attempt"] == 2, events
    assert stored and resumed == [stored[-1]]
    assert same
