"""Webhook endpoints registered as OpenAI's (the openai client's `webhooks` resource): their validation and
isolation, secret rotation, the address check against server-side request forgery, and the test route.
Deliveries (the outbox and the dispatcher): test_webhook_deliveries.py; live: tests/e2e/test_webhooks_live.py."""

from __future__ import annotations

import json

import pytest

from app.core.outbox import EVENT_TYPES
from app.core.settings import get_settings
from app.webhooks.dispatch import DeliveryFailed, post_event
from app.webhooks.signing import new_signing_secret, signed_headers
from tests.helpers.factories import make_endpoint
from tests.helpers.webhooks import Receiver, openai_client

ENDPOINTS = "/v1/webhook_endpoints"


@pytest.fixture
def private_urls_allowed(monkeypatch):
    monkeypatch.setattr(get_settings(), "webhook_allow_private_urls", True)


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
