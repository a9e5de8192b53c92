"""Webhooks live: every job end and a sweep end of a running service reach a local receiver, signed so that the
openai client's own `webhooks.unwrap` accepts them, retried after a failure and delivered once."""

from __future__ import annotations

import json
import statistics
import time

from openai import OpenAI

from app.core.outbox import EVENT_TYPES
from tests.conftest import DATASETS
from tests.helpers.e2e_service import client_for, running_service, upload, wait_for_jobs
from tests.helpers.webhooks import Receiver


def _subset(src, dst, n: int):
    with open(src) as fh:
        dst.write_text("".join(fh.readlines()[:n]))
    return dst


def test_every_job_end_and_a_sweep_end_reach_the_receiver_signed_retried_and_once(tmp_path):
    """The real service (API with its dispatcher, a Celery worker): an endpoint registered with the openai
    client gets a succeeded, a failed and a cancelled job and a failed sweep; the receiver answers 500 to the
    first delivery of each event, the dispatcher retries after its backoff, and after the 2xx nothing more
    comes. Every request's signature passes openai's `webhooks.unwrap`."""
    env = {
        "FTAAS_WEBHOOK_ALLOW_PRIVATE_URLS": "true",  # the receiver is on 127.0.0.1
        "FTAAS_WEBHOOK_BACKOFF_BASE_S": "1",
        "FTAAS_WEBHOOK_MAX_ATTEMPTS": "5",
        "FTAAS_WEBHOOK_POLL_S": "0.2",
        "FTAAS_TORCH_THREADS": "2",
    }
    with Receiver(fail_first=True) as receiver, running_service(extra_env=env) as svc, client_for(svc) as c:
        oai = OpenAI(base_url=f"{svc['base']}/v1", api_key=svc["key"])
        everything = oai.webhooks.create(name="all ends", url=f"{receiver.url}/all", event_types=list(EVENT_TYPES))
        cancels = oai.webhooks.create(
            name="cancels only", url=f"{receiver.url}/cancels", event_types=["fine_tuning.job.cancelled"]
        )
        secrets = {"/all": everything.signing_secret, "/cancels": cancels.signing_secret}
        assert [e.id for e in oai.webhooks.list()] == [cancels.id, everything.id]
        tested = oai.webhooks.test(everything.id, event_type="fine_tuning.job.succeeded")
        assert tested.success is True and tested.status_code == 500  # the receiver's first answer to an event

        one_row = tmp_path / "one.jsonl"
        one_row.write_text(json.dumps({"prompt": "Q: a\nA:", "completion": " b"}) + "\n")
        tiny = upload(c, one_row)  # too few rows to hold one out: its jobs fail at once in the worker
        train = upload(
            c, _subset(DATASETS / "wikisql" / "train.jsonl", tmp_path / "t.jsonl", 40), completion_separator="\nA: "
        )
        job = {
            "model": "stories260k",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
            "evaluation": {"metrics": ["rouge"], "max_rows": 4, "max_new_tokens": 8, "num_samples": 1},
        }
        failed = c.post("/v1/fine_tuning/jobs", json={**job, "training_file": tiny["id"]}).json()["id"]
        r = c.post(
            "/v1/sweeps",
            json={"training_file": tiny["id"], "base": {"model": "stories260k"}, "candidates": [{"name": "only"}]},
        )
        assert r.status_code == 200, r.text
        sweep = r.json()["id"]
        (candidate,) = [cand["job_id"] for cand in r.json()["candidates"]]  # a job too: it fails, and says so
        succeeded = c.post("/v1/fine_tuning/jobs", json={**job, "training_file": train["id"]}).json()["id"]
        cancelled = c.post("/v1/fine_tuning/jobs", json={**job, "training_file": train["id"]}).json()["id"]
        assert c.post(f"/v1/fine_tuning/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
        ends = wait_for_jobs(c, [failed, candidate, succeeded, cancelled], svc["logs"])
        assert {jid: j["status"] for jid, (j, _) in ends.items()} == {
            failed: "failed",
            candidate: "failed",
            succeeded: "succeeded",
            cancelled: "cancelled",
        }, ends
        expected = {
            ("/all", "fine_tuning.job.failed", failed),
            ("/all", "fine_tuning.job.failed", candidate),
            ("/all", "fine_tuning.job.succeeded", succeeded),
            ("/all", "fine_tuning.job.cancelled", cancelled),
            ("/all", "sweep.failed", sweep),
            ("/cancels", "fine_tuning.job.cancelled", cancelled),
        }
        deadline = time.monotonic() + 60
        while True:
            received = receiver.snapshot()
            done = {
                (r["path"], (e := json.loads(r["body"]))["type"], e["data"]["id"])
                for r in received
                if r["answered"] == 200
            }
            if expected <= done:
                break
            assert time.monotonic() < deadline, f"not delivered: {expected - done}\n{received}"
            time.sleep(0.2)
        time.sleep(3)  # room for a duplicate, should the dispatcher send one
        received = receiver.snapshot()
        assert oai.webhooks.retrieve(everything.id).signing_secret_hint == f"whsec_...{everything.signing_secret[-4:]}"
        delivery_rows = c.get(f"/v1/webhook_endpoints/{everything.id}/deliveries").json()["data"]
        job_ends = {jid: j["finished_at"] for jid, (j, _) in ends.items()}

    events, retry_gaps, first_latency, delivered_latency = {}, [], [], []
    for request in received:
        if json.loads(request["body"])["data"]["id"] == "ftjob-test":
            continue  # the test event: sent once, answered 500, never retried
        event = oai.webhooks.unwrap(request["body"], request["headers"], secret=secrets[request["path"]])
        assert event.id == request["id"] and event.object == "event"
        events.setdefault((request["path"], event.id), []).append(request)
    for (path, event_id), attempts in events.items():
        answers = [a["answered"] for a in attempts]
        assert answers == [500, 200], (path, event_id, answers)  # one retry, and nothing after the 2xx
        retry_gaps.append(attempts[1]["at"] - attempts[0]["at"])
        subject = json.loads(attempts[0]["body"])["data"]["id"]
        if subject in job_ends:
            first_latency.append(attempts[0]["at"] - job_ends[subject])
            delivered_latency.append(attempts[1]["at"] - job_ends[subject])
    assert len(events) == len(expected) and {a["answered"] for r in events.values() for a in r} == {500, 200}
    assert all(gap >= 0.5 for gap in retry_gaps), retry_gaps  # backoff base 1 s, equal jitter: 0.5 to 1 s
    assert all(d["status"] == "delivered" and d["attempts"] == 2 for d in delivery_rows), delivery_rows
    print(
        f"\n[webhooks] {len(events)} deliveries (4 job ends, 1 sweep end; 2 endpoints) in "
        f"{sum(len(a) for a in events.values())} signed POSTs: each answered 500 once, retried after "
        f"{min(retry_gaps):.2f}-{max(retry_gaps):.2f}s, then 200 and never again; all verified by "
        f"openai.webhooks.unwrap; job end -> first attempt median {statistics.median(first_latency):.1f}s, "
        f"-> delivered median {statistics.median(delivered_latency):.1f}s (end times in whole seconds)"
    )
