"""The webhook dispatcher: claims due deliveries from the outbox, POSTs them signed, and records each attempt.

It runs as a daemon thread in every API process (started by the app's lifespan, so `ftaas serve`, the
embedded `scripts/serve.sh` and the tests' live service all have one), not in the Celery worker, whose main
process must not run threads (worker/tasks/reconciler.py: Reconciler) and which may be on a GPU host without a way out.
Several dispatchers (API replicas) share the outbox safely: a delivery is claimed by a conditional UPDATE
that sets a lease (portable: Postgres and SQLite), and an attempt's result is written only under the claim's
token, so a dispatcher whose lease lapsed (it hung, or died) cannot overwrite its successor's result.

A 2xx marks the delivery delivered; anything else (another status, a timeout, a refused address) schedules
the next attempt after webhook_backoff_base_s * 2^(attempt-1), capped at webhook_backoff_max_s, with equal
jitter (half the delay fixed, half random), until webhook_max_attempts, then the delivery is failed.
Delivery is at least once: a receiver drops a repeated webhook-id (a dispatcher that died after the POST
but before recording it makes its successor send the event again).
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import get_sessionmaker
from app.core.settings import Settings, get_settings
from app.core.tables import DeliveryStatus, WebhookDelivery, WebhookEndpoint, utcnow
from app.webhooks.signing import active_secrets, signed_headers
from app.webhooks.urls import WebhookUrlRefused, webhook_client

log = logging.getLogger("ftaas.webhooks")


class DeliveryFailed(Exception):
    """No HTTP answer: the address was refused, the connection failed or timed out."""


def post_event(url: str, secrets: list[str], event_id: str, body: str, settings: Settings) -> int:
    """One signed POST of the event; the status code the endpoint answered. Its body is not read: only the
    status counts, and a large answer must not cost memory."""
    client = webhook_client(
        allow_private=settings.webhook_allow_private_urls,
        timeout_s=settings.webhook_timeout_s,
        dns_timeout_s=settings.webhook_dns_timeout_s,
    )
    headers = signed_headers(secrets, event_id, body)
    try:
        with client, client.stream("POST", url, content=body.encode(), headers=headers) as response:
            return response.status_code
    except WebhookUrlRefused as exc:
        raise DeliveryFailed(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer is a failed attempt, never a crash
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:500]) from None


def retry_delay_s(attempt: int, settings: Settings, rand=random.random) -> float:
    """Seconds before the attempt after `attempt` (1-based): exponential, capped, with equal jitter, so that
    the deliveries that failed together (an endpoint that was down) do not all come back at once."""
    delay = min(settings.webhook_backoff_max_s, settings.webhook_backoff_base_s * 2 ** (attempt - 1))
    return delay / 2 + rand() * delay / 2


def lease_s(settings: Settings) -> float:
    """Longer than one attempt can take (resolving, connecting, waiting for the answer), with room to spare."""
    return 3 * (settings.webhook_dns_timeout_s + 2 * settings.webhook_timeout_s) + 30


@dataclass
class Claim:
    delivery_id: str
    token: str
    attempt: int  # this attempt's number, 1-based
    endpoint_id: str
    url: str
    secrets: list[str]
    event_id: str
    event_type: str
    body: str


def _claimable(now):
    return (
        (WebhookDelivery.status == DeliveryStatus.pending)
        & (WebhookDelivery.next_attempt_at <= now)
        & or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now)
    )


def claim_due(session: Session, settings: Settings, limit: int) -> list[Claim]:
    """Up to `limit` due deliveries, each taken by a conditional UPDATE: of two dispatchers that saw the same
    row, the second matches nothing (Postgres re-checks the condition after the first one's commit). Commits."""
    now = utcnow()
    due = session.scalars(
        select(WebhookDelivery.id).where(_claimable(now)).order_by(WebhookDelivery.next_attempt_at).limit(limit)
    ).all()
    tokens: dict[str, str] = {}
    for delivery_id in due:
        token = uuid.uuid4().hex
        taken = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, _claimable(now))
            .values(
                lease_expires_at=now + timedelta(seconds=lease_s(settings)),
                claim_token=token,
                attempts=WebhookDelivery.attempts + 1,
            )
        ).rowcount
        if taken:
            tokens[delivery_id] = token
    session.commit()
    if not tokens:
        return []
    rows = session.execute(
        select(WebhookDelivery, WebhookEndpoint)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_(list(tokens)))
    ).all()
    return [
        Claim(
            delivery_id=d.id,
            token=tokens[d.id],
            attempt=d.attempts,
            endpoint_id=e.id,
            url=e.url,
            secrets=active_secrets(e),
            event_id=d.event_id,
            event_type=d.event_type,
            body=d.body,
        )
        for d, e in rows
    ]


def record_attempt(
    session: Session, claim: Claim, settings: Settings, status_code: int | None, error: str | None
) -> str:
    """The attempt's outcome, under the claim's token; returns the delivery's new status. Commits."""
    now = utcnow()
    values: dict = {"last_status_code": status_code, "lease_expires_at": None, "claim_token": None}
    if status_code is not None and 200 <= status_code < 300:
        values.update(status=DeliveryStatus.delivered, delivered_at=now, last_error=None)
    else:
        values["last_error"] = error or f"HTTP {status_code}"
        if claim.attempt >= settings.webhook_max_attempts:
            values["status"] = DeliveryStatus.failed
        else:
            values["next_attempt_at"] = now + timedelta(seconds=retry_delay_s(claim.attempt, settings))
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == claim.delivery_id, WebhookDelivery.claim_token == claim.token)
        .values(**values)
    )
    session.commit()
    return values.get("status", DeliveryStatus.pending)


def deliver(claim: Claim, settings: Settings, Session: sessionmaker) -> str:
    status_code, error = None, None
    try:
        status_code = post_event(claim.url, claim.secrets, claim.event_id, claim.body, settings)
    except DeliveryFailed as exc:
        error = str(exc)
    with Session() as session:
        status = record_attempt(session, claim, settings, status_code, error)
    # ids and outcomes only: the URL may hold a token of the receiver's, and the secret never leaves the row
    log.info(
        "webhook %s %s to %s, attempt %d: %s (%s)",
        claim.delivery_id,
        claim.event_type,
        claim.endpoint_id,
        claim.attempt,
        status,
        status_code if status_code is not None else error,
    )
    return status


def dispatch_once(settings: Settings, Session: sessionmaker) -> int:
    """Claim what is due (up to webhook_concurrency) and send it concurrently; how many were sent."""
    with Session() as session:
        claims = claim_due(session, settings, settings.webhook_concurrency)
    if claims:
        with ThreadPoolExecutor(max_workers=len(claims), thread_name_prefix="webhook-send") as pool:
            list(pool.map(lambda c: deliver(c, settings, Session), claims))
    return len(claims)


class Dispatcher:
    """dispatch_once every webhook_poll_s (at once again while there is more due), in a daemon thread."""

    def __init__(self, settings: Settings | None = None, Session: sessionmaker | None = None) -> None:
        self.settings = settings or get_settings()
        self.Session = Session or get_sessionmaker()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._failing = False

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = 0
            try:
                sent = dispatch_once(self.settings, self.Session)
                if self._failing:
                    log.info("webhook dispatcher works again")
                self._failing = False
            except Exception:  # noqa: BLE001 - the database may be away for a while: try again next poll
                if not self._failing:  # once per outage, not once per poll
                    log.warning("webhook dispatcher pass failed; retrying every %ss", self.settings.webhook_poll_s,
                                exc_info=True)  # fmt: skip
                self._failing = True
            if sent < self.settings.webhook_concurrency:
                self._stop.wait(self.settings.webhook_poll_s)
