"""Webhook deliveries: the outbox rows written in the transaction that ends a job or a sweep, the dispatcher's
claims, retries and backoff, and the delivery list (endpoints: test_webhooks.py)."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext

import pytest
from sqlalchemy import select

from app.core.job_state import finish_job
from app.core.settings import get_settings
from app.core.tables import DeliveryStatus, Job, JobStatus, Sweep, SweepStatus, WebhookDelivery, utcnow
from app.sweeps.service import finalize_if_done
from app.webhooks.dispatch import claim_due, dispatch_once, record_attempt, retry_delay_s
from tests.helpers.factories import finished_job, make_endpoint, running_job
from tests.helpers.webhooks import Receiver, openai_client

ENDPOINTS = "/v1/webhook_endpoints"


# ------------------------------------------------------------------ the outbox


def deliveries(session, **where) -> list[WebhookDelivery]:
    stmt = select(WebhookDelivery).where(*[getattr(WebhookDelivery, k) == v for k, v in where.items()])
    return list(session.scalars(stmt.order_by(WebhookDelivery.created_at)))


def test_a_job_end_writes_one_delivery_per_subscribed_endpoint_in_its_transaction(
    db_session, acme, train_file, make_key
):
    from app.core.tables import Tenant

    make_key("globex")
    globex = db_session.scalar(select(Tenant).where(Tenant.name == "globex"))
    everything = make_endpoint(db_session, acme)
    failures_only = make_endpoint(db_session, acme, event_types=["fine_tuning.job.failed"])
    make_endpoint(db_session, acme, enabled=False)  # disabled: nothing new for it
    make_endpoint(db_session, globex)  # another tenant's: never
    job = running_job(db_session, acme, train_file)

    assert finish_job(db_session, job.id, 1, JobStatus.failed, error={"code": "x", "message": "boom", "param": None})
    rows = deliveries(db_session, subject_id=job.id)
    assert sorted(r.endpoint_id for r in rows) == sorted([everything.id, failures_only.id])
    assert {r.event_type for r in rows} == {"fine_tuning.job.failed"} and len({r.event_id for r in rows}) == 1
    event = json.loads(rows[0].body)
    assert event == {
        "id": rows[0].event_id,
        "object": "event",
        "created_at": event["created_at"],
        "type": "fine_tuning.job.failed",
        "data": {"id": job.id},
    }
    assert event["id"].startswith("evt_") and abs(event["created_at"] - time.time()) < 60
    assert all(r.status == DeliveryStatus.pending and r.attempts == 0 for r in rows)

    # a late write of the same attempt (or another end) changes nothing, and writes no second event
    assert not finish_job(db_session, job.id, 1, JobStatus.succeeded)
    assert len(deliveries(db_session, subject_id=job.id)) == 2


def test_a_job_end_and_its_deliveries_roll_back_together(db_session, acme, train_file, monkeypatch):
    """The transactional outbox: if the commit that ends the job fails, no event exists either (and if it
    succeeds, both exist), because both are the same transaction."""
    make_endpoint(db_session, acme)
    job = running_job(db_session, acme, train_file)

    def failing_commit():
        raise RuntimeError("the database went away at the commit")

    monkeypatch.setattr(db_session, "commit", failing_commit)
    with pytest.raises(RuntimeError):
        finish_job(db_session, job.id, 1, JobStatus.failed)
    monkeypatch.undo()
    db_session.rollback()
    db_session.expire_all()
    assert db_session.get(Job, job.id).status == JobStatus.running
    assert deliveries(db_session, subject_id=job.id) == []


def test_cancel_routes_and_a_sweeps_end_write_their_events(client, auth, db_session, acme, train_file):
    make_endpoint(db_session, acme)
    queued = finished_job(db_session, acme, train_file, status=JobStatus.queued)
    assert client.post(f"/v1/fine_tuning/jobs/{queued.id}/cancel", headers=auth).status_code == 200
    assert [r.event_type for r in deliveries(db_session, subject_id=queued.id)] == ["fine_tuning.job.cancelled"]
    client.post(f"/v1/fine_tuning/jobs/{queued.id}/cancel", headers=auth)  # a 409: nothing more
    assert len(deliveries(db_session, subject_id=queued.id)) == 1

    sweep = Sweep(tenant_id=acme.id, training_file_id=train_file.id, selection_metric="rougeL", seed=1, spec={})
    db_session.add(sweep)
    db_session.flush()
    ended = finished_job(db_session, acme, train_file, status=JobStatus.failed)
    candidate = finished_job(db_session, acme, train_file, status=JobStatus.queued)
    ended.sweep_id = candidate.sweep_id = sweep.id
    db_session.commit()
    r = client.post(f"/v1/sweeps/{sweep.id}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    assert [r.event_type for r in deliveries(db_session, subject_id=candidate.id)] == ["fine_tuning.job.cancelled"]
    assert deliveries(db_session, subject_id=ended.id) == []  # it had ended before: no second end
    (sweep_event,) = deliveries(db_session, subject_id=sweep.id)
    assert sweep_event.event_type == "sweep.cancelled"
    assert json.loads(sweep_event.body)["data"] == {"id": sweep.id, "status": "cancelled", "winner_job_id": None}
    assert finalize_if_done(db_session, sweep.id) is False  # decided once
    assert len(deliveries(db_session, subject_id=sweep.id)) == 1


def test_a_sweep_whose_candidates_all_failed_sends_sweep_failed(db_session, acme, train_file):
    make_endpoint(db_session, acme, event_types=["sweep.failed", "sweep.succeeded"])
    sweep = Sweep(tenant_id=acme.id, training_file_id=train_file.id, selection_metric="rougeL", seed=1, spec={})
    db_session.add(sweep)
    db_session.flush()
    finished_job(db_session, acme, train_file, status=JobStatus.failed).sweep_id = sweep.id
    db_session.commit()
    assert finalize_if_done(db_session, sweep.id)
    assert db_session.get(Sweep, sweep.id).status == SweepStatus.failed
    assert [r.event_type for r in deliveries(db_session, subject_id=sweep.id)] == ["sweep.failed"]


# ------------------------------------------------------------------ the dispatcher


def test_the_dispatcher_retries_with_backoff_and_stops_after_a_2xx(db_session, acme, train_file, fast_settings):
    sessions = lambda: nullcontext(db_session)  # noqa: E731 - the test's transaction for the dispatcher
    with Receiver(fail_first=True) as receiver:
        endpoint = make_endpoint(db_session, acme, url=receiver.url + "/hook")
        job = running_job(db_session, acme, train_file)
        finish_job(db_session, job.id, 1, JobStatus.cancelled)
        (row,) = deliveries(db_session, subject_id=job.id)

        assert dispatch_once(fast_settings, sessions) == 1
        db_session.refresh(row)
        assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("pending", 1, 500, "HTTP 500")
        wait = (row.next_attempt_at - utcnow()).total_seconds()
        assert 0 < wait <= 0.2  # base 0.2 s, equal jitter: between 0.1 and 0.2 s
        assert dispatch_once(fast_settings, sessions) == 0  # not due yet
        time.sleep(wait + 0.05)
        assert dispatch_once(fast_settings, sessions) == 1
        db_session.refresh(row)
        assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)
        assert row.delivered_at is not None and row.lease_expires_at is None
        time.sleep(0.3)
        assert dispatch_once(fast_settings, sessions) == 0  # delivered: never again
        received = receiver.snapshot()
    assert [r["answered"] for r in received] == [500, 200] and received[0]["id"] == received[1]["id"] == row.event_id
    for request in received:  # what the openai client's receivers run
        event = openai_client().webhooks.unwrap(request["body"], request["headers"], secret=endpoint.signing_secret)
        assert event.type == "fine_tuning.job.cancelled" and event.data.id == job.id
    assert received[0]["headers"]["content-type"] == "application/json"


def test_a_delivery_is_failed_after_max_attempts_with_its_last_error(db_session, acme, train_file, fast_settings):
    sessions = lambda: nullcontext(db_session)  # noqa: E731
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    make_endpoint(db_session, acme, url=f"http://127.0.0.1:{port}/")
    job = running_job(db_session, acme, train_file)
    finish_job(db_session, job.id, 1, JobStatus.failed)
    (row,) = deliveries(db_session, subject_id=job.id)
    for attempt in range(1, 4):
        row.next_attempt_at = utcnow()
        db_session.commit()
        assert dispatch_once(fast_settings, sessions) == 1
        db_session.refresh(row)
        assert row.attempts == attempt and "ConnectError" in row.last_error and row.last_status_code is None
    assert row.status == DeliveryStatus.failed
    row.next_attempt_at = utcnow()
    db_session.commit()
    assert dispatch_once(fast_settings, sessions) == 0


def test_two_dispatchers_never_hold_the_same_delivery(db_session, acme, train_file, fast_settings):
    make_endpoint(db_session, acme)
    job = running_job(db_session, acme, train_file)
    finish_job(db_session, job.id, 1, JobStatus.failed)
    (first,) = claim_due(db_session, fast_settings, 10)
    assert claim_due(db_session, fast_settings, 10) == []  # leased to the first
    (row,) = deliveries(db_session, subject_id=job.id)
    row.lease_expires_at = utcnow()  # the first one died: its lease lapses
    db_session.commit()
    (second,) = claim_due(db_session, fast_settings, 10)
    assert second.attempt == 2 and second.token != first.token
    # the first one comes back late: its result is not recorded over the second's claim
    record_attempt(db_session, first, fast_settings, 200, None)
    db_session.refresh(row)
    assert row.status == DeliveryStatus.pending and row.claim_token == second.token
    record_attempt(db_session, second, fast_settings, 204, None)
    db_session.refresh(row)
    assert row.status == DeliveryStatus.delivered


def test_backoff_doubles_up_to_its_cap_with_jitter():
    settings = get_settings().model_copy(update={"webhook_backoff_base_s": 10.0, "webhook_backoff_max_s": 60.0})
    assert [retry_delay_s(n, settings, rand=lambda: 1.0) for n in range(1, 6)] == [10, 20, 40, 60, 60]
    assert [retry_delay_s(n, settings, rand=lambda: 0.0) for n in range(1, 4)] == [5, 10, 20]


def test_deliveries_are_listed_with_their_attempts(client, auth, db_session, acme, train_file):
    endpoint = make_endpoint(db_session, acme)
    jobs = [running_job(db_session, acme, train_file) for _ in range(3)]
    for job in jobs:
        finish_job(db_session, job.id, 1, JobStatus.failed)
    page = client.get(f"{ENDPOINTS}/{endpoint.id}/deliveries", headers=auth, params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True and len(page["data"]) == 2
    item = page["data"][0]
    assert item["object"] == "webhook_endpoint.delivery" and item["status"] == "pending" and item["attempts"] == 0
    assert item["event_type"] == "fine_tuning.job.failed" and item["event_id"].startswith("evt_")
    rest = client.get(f"{ENDPOINTS}/{endpoint.id}/deliveries", headers=auth, params={"after": page["last_id"]})
    assert {d["subject_id"] for d in page["data"] + rest.json()["data"]} == {j.id for j in jobs}
    none = client.get(f"{ENDPOINTS}/{endpoint.id}/deliveries", headers=auth, params={"status": "delivered"}).json()
    assert none["data"] == []
