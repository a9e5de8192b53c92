"""Webhooks: endpoints registered as OpenAI's (the openai client's `webhooks` resource), their validation and
isolation, the address check against server-side request forgery, the outbox rows written with a job's or a
sweep's end, the dispatcher's claims, retries and backoff; and, live, every job end and a sweep end reaching a
local receiver, signed so that the openai client's own `webhooks.unwrap` accepts them."""

from __future__ import annotations

import json
import statistics
import threading
import time
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from app.core.job_state import finish_job
from app.core.outbox import EVENT_TYPES
from app.core.settings import get_settings
from app.core.tables import DeliveryStatus, Job, JobStatus, Sweep, SweepStatus, WebhookDelivery, utcnow
from app.sweeps.service import finalize_if_done
from app.webhooks.dispatch import DeliveryFailed, claim_due, dispatch_once, post_event, record_attempt, retry_delay_s
from app.webhooks.signing import new_signing_secret, signed_headers
from tests.conftest import DATASETS
from tests.helpers.factories import finished_job, make_endpoint, running_job

ENDPOINTS = "/v1/webhook_endpoints"


class Receiver:
    """An HTTP server on 127.0.0.1 (a free port) that records every request. With fail_first it answers 500 to
    the first request of each webhook-id at each path and 200 to the next ones, so every delivery needs a retry."""

    def __init__(self, fail_first: bool = True) -> None:
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.lock:
                    key = (self.path, self.headers.get("webhook-id"))  # one event may go to several endpoints
                    seen = any((r["path"], r["id"]) == key for r in receiver.requests)
                    status = 500 if fail_first and not seen else 200
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "id": self.headers.get("webhook-id"),
                            "headers": dict(self.headers.items()),
                            "body": body,
                            "at": time.time(),
                            "answered": status,
                        }
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.requests)


@pytest.fixture
def private_urls_allowed(monkeypatch):
    monkeypatch.setattr(get_settings(), "webhook_allow_private_urls", True)


def openai_client():
    from openai import OpenAI

    return OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


# ------------------------------------------------------------------ registration


def test_register_read_update_rotate_delete_in_openais_shapes(client, auth, private_urls_allowed):
    r = client.post(
        ENDPOINTS,
        headers=auth,
        json={
            "name": "ci",
            "url": "https://hooks.example.com/ftaas",
            "event_types": ["fine_tuning.job.succeeded", "sweep.failed", "fine_tuning.job.succeeded"],
        },
    )
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["object"] == "webhook_endpoint" and created["id"].startswith("webhook-")
    assert created["event_types"] == ["fine_tuning.job.succeeded", "sweep.failed"]  # duplicates dropped
    secret = created["signing_secret"]
    assert secret.startswith("whsec_") and created["signing_secret_hint"] == f"whsec_...{secret[-4:]}"
    assert created["created_at"] == created["updated_at"] and created["enabled"] is True

    one = client.get(f"{ENDPOINTS}/{created['id']}", headers=auth).json()
    assert "signing_secret" not in one and one["signing_secret_hint"] == created["signing_secret_hint"]
    page = client.get(ENDPOINTS, headers=auth).json()
    assert page["object"] == "list" and [e["id"] for e in page["data"]] == [created["id"]]
    assert page["first_id"] == page["last_id"] == created["id"] and page["has_more"] is False

    same = client.post(f"{ENDPOINTS}/{created['id']}", headers=auth, json={"name": "ci"}).json()
    assert same["updated_at"] == created["updated_at"]  # nothing changed: not advanced
    changed = client.post(
        f"{ENDPOINTS}/{created['id']}",
        headers=auth,
        json={"event_types": ["fine_tuning.job.cancelled"], "enabled": False},
    ).json()
    assert changed["event_types"] == ["fine_tuning.job.cancelled"] and changed["enabled"] is False
    assert changed["name"] == "ci" and changed["url"] == "https://hooks.example.com/ftaas"

    rotated = client.post(f"{ENDPOINTS}/{created['id']}/rotate_secret", headers=auth).json()
    assert rotated["signing_secret"].startswith("whsec_") and rotated["signing_secret"] != secret

    gone = client.delete(f"{ENDPOINTS}/{created['id']}", headers=auth).json()
    assert gone == {"object": "webhook_endpoint.deleted", "id": created["id"], "deleted": True}
    assert client.get(f"{ENDPOINTS}/{created['id']}", headers=auth).status_code == 404
    types = client.get("/v1/webhook_event_types", headers=auth).json()
    assert types == {"object": "list", "data": list(EVENT_TYPES)}


def test_rotation_that_keeps_the_old_secret_signs_with_both_for_a_day(client, auth, db_session, acme):
    endpoint = make_endpoint(db_session, acme)
    old = endpoint.signing_secret
    r = client.post(
        f"{ENDPOINTS}/{endpoint.id}/rotate_secret", headers=auth, json={"keep_old_secret_active_for_24_hours": True}
    )
    new = r.json()["signing_secret"]
    from app.webhooks.signing import active_secrets

    db_session.refresh(endpoint)
    assert active_secrets(endpoint) == [new, old]
    body = json.dumps({"id": "evt_1", "type": "fine_tuning.job.succeeded", "data": {"id": "ftjob-1"}})
    headers = signed_headers(active_secrets(endpoint), "evt_1", body)
    assert len(headers["webhook-signature"].split()) == 2
    for key in (old, new):  # a receiver holding either secret accepts it
        openai_client().webhooks.verify_signature(body, headers, secret=key)
    client.post(f"{ENDPOINTS}/{endpoint.id}/rotate_secret", headers=auth, json={})
    db_session.refresh(endpoint)
    assert active_secrets(endpoint) == [endpoint.signing_secret]  # rotated again without keeping: one


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"event_types": ["batch.completed"]}, "event_types.0", "fine_tuning.job.succeeded"),
        ({"event_types": []}, "event_types", "at least 1"),
        ({"url": "ftp://example.com/x"}, "url", "pattern"),
        ({"url": "http://user:pw@example.com/x"}, "url", "credentials"),
        ({"url": "http://:80/x"}, "url", "no host"),
        ({"url": "https://example.com:99999/"}, "url", "not valid"),
        ({"name": ""}, "name", "at least 1"),
        ({"unknown": 1}, "unknown", "Extra inputs"),
    ],
)
def test_invalid_registrations_are_400_naming_the_field(client, auth, private_urls_allowed, body, param, words):
    good = {"name": "x", "url": "https://example.com/hook", "event_types": ["fine_tuning.job.failed"]}
    r = client.post(ENDPOINTS, headers=auth, json={**good, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:8000/hook", "127.0.0.1, a loopback, private"),
        ("http://localhost/hook", "loopback, private"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),  # a cloud's metadata service
        ("https://10.1.2.3/", "10.1.2.3"),
        ("http://[::1]:8080/", "::1"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
        ("http://0/", "0.0.0.0"),
        ("https://no-such-host.invalid/hook", "does not resolve"),
    ],
)
def test_urls_reaching_the_servers_own_network_are_refused_by_default(client, auth, url, words):
    body = {"name": "x", "url": url, "event_types": ["fine_tuning.job.failed"]}
    r = client.post(ENDPOINTS, headers=auth, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "url" and error["code"] == "invalid_url" and words in error["message"], error


def test_the_address_is_checked_again_at_delivery_on_the_address_connected_to(monkeypatch):
    """A name that resolved to a public address at registration and resolves to a private one now (DNS
    rebinding) is refused when connecting, not only when registering."""
    import app.webhooks.urls as urls

    settings = get_settings()
    assert settings.webhook_allow_private_urls is False
    monkeypatch.setattr(urls, "resolve", lambda host, port, timeout_s: ["127.0.0.1"])
    with pytest.raises(DeliveryFailed, match="resolves to 127.0.0.1"):
        post_event("https://hooks.example.com/x", [new_signing_secret()], "evt_1", "{}", settings)
    with pytest.raises(DeliveryFailed, match="loopback"):  # a literal address, no resolver involved
        post_event("http://[::1]:9/x", [new_signing_secret()], "evt_1", "{}", settings)


def test_another_tenants_endpoint_is_a_404_like_a_missing_one(client, auth, other_auth, db_session, acme):
    endpoint = make_endpoint(db_session, acme)
    calls = [
        ("GET", ""),
        ("POST", ""),
        ("DELETE", ""),
        ("POST", "/rotate_secret"),
        ("POST", "/test"),
        ("GET", "/deliveries"),
    ]
    for method, suffix in calls:
        body = {"event_type": "fine_tuning.job.failed"} if suffix == "/test" else {}
        kwargs = {"json": body} if method == "POST" else {}
        theirs = client.request(method, f"{ENDPOINTS}/{endpoint.id}{suffix}", headers=other_auth, **kwargs)
        missing = client.request(method, f"{ENDPOINTS}/webhook-{'0' * 24}{suffix}", headers=other_auth, **kwargs)
        assert theirs.status_code == missing.status_code == 404, (method, suffix, theirs.text)
        assert theirs.json()["error"]["code"] == "webhook_endpoint_not_found"
        assert theirs.json()["error"]["param"] == "webhook_endpoint_id"
    assert client.get(ENDPOINTS, headers=other_auth).json()["data"] == []
    assert client.get(f"{ENDPOINTS}/{endpoint.id}", headers=auth).status_code == 200  # B changed nothing


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


@pytest.fixture
def fast_settings(monkeypatch):
    settings = get_settings()
    for name, value in {
        "webhook_allow_private_urls": True,
        "webhook_backoff_base_s": 0.2,
        "webhook_max_attempts": 3,
        "webhook_concurrency": 1,  # the tests' one session is not shared between threads
        "webhook_timeout_s": 3.0,
    }.items():
        monkeypatch.setattr(settings, name, value)
    return settings


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


def test_test_route_sends_a_signed_sample_and_reports_the_answer(client, auth, db_session, acme, fast_settings):
    with Receiver(fail_first=True) as receiver:
        endpoint = make_endpoint(db_session, acme, url=receiver.url + "/t")
        r = client.post(f"{ENDPOINTS}/{endpoint.id}/test", headers=auth, json={"event_type": "sweep.succeeded"})
        received = receiver.snapshot()
    assert r.status_code == 200, r.text
    assert r.json() == {
        "object": "webhook_endpoint.test",
        "webhook_endpoint_id": endpoint.id,
        "event_type": "sweep.succeeded",
        "status_code": 500,  # the receiver's answer, whatever it is
        "success": True,
    }
    (request,) = received
    openai_client().webhooks.verify_signature(request["body"], request["headers"], secret=endpoint.signing_secret)
    assert json.loads(request["body"])["type"] == "sweep.succeeded"

    endpoint.url = "http://127.0.0.1:9/closed"
    db_session.commit()
    r = client.post(f"{ENDPOINTS}/{endpoint.id}/test", headers=auth, json={"event_type": "fine_tuning.job.failed"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "webhook_test_failed", r.text


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


# ------------------------------------------------------------------ live


def _subset(src, dst, n: int):
    with open(src) as fh:
        dst.write_text("".join(fh.readlines()[:n]))
    return dst


@pytest.mark.e2e
def test_every_job_end_and_a_sweep_end_reach_the_receiver_signed_retried_and_once(tmp_path):
    """The real service (API with its dispatcher, a Celery worker): an endpoint registered with the openai
    client gets a succeeded, a failed and a cancelled job and a failed sweep; the receiver answers 500 to the
    first delivery of each event, the dispatcher retries after its backoff, and after the 2xx nothing more
    comes. Every request's signature passes openai's `webhooks.unwrap`."""
    from openai import OpenAI

    from tests.helpers.e2e_service import client_for, running_service, upload, wait_for_jobs

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
