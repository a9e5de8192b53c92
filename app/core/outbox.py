"""Webhook events into the outbox: one delivery row per subscribed endpoint, added to the caller's session.

Callers add them in the transaction that moves a job or a sweep to its end, before its commit, so the status
change and its events are stored together or not at all: a crash right after the commit cannot lose an event,
and since a job or a sweep ends once (the status flips are conditional updates), it is never written twice.
The dispatcher (app/webhook_dispatch.py) sends them.

Event payloads are OpenAI's: {"id": "evt_...", "object": "event", "created_at", "type", "data": {"id"}}.
Sweeps are an ftaas extension with one type per end, as jobs have, so an endpoint subscribes to the ends it
wants: sweep.succeeded | sweep.failed | sweep.cancelled, with data {"id", "status", "winner_job_id"}.
"""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.tables import Job, JobStatus, Sweep, WebhookDelivery, WebhookEndpoint, utcnow

JOB_EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
SWEEP_EVENT_TYPES = ("sweep.succeeded", "sweep.failed", "sweep.cancelled")
EVENT_TYPES = JOB_EVENT_TYPES + SWEEP_EVENT_TYPES


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex[:24]}"


def event_body(event_id: str, event_type: str, data: dict, created_at: int) -> str:
    """The payload as sent and signed: compact JSON, the same bytes at every attempt."""
    event = {"id": event_id, "object": "event", "created_at": created_at, "type": event_type, "data": data}
    return json.dumps(event, separators=(",", ":"))


def enqueue_event(session: Session, tenant_id: str, event_type: str, data: dict) -> int:
    """Delivery rows of one event for every enabled endpoint of the tenant subscribed to its type; not
    committed. Returns how many."""
    endpoints = session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True))
    ).all()
    # event_types is a JSON list: matched here rather than in SQL, the same on Postgres and SQLite
    subscribed = [e for e in endpoints if event_type in (e.event_types or [])]
    if not subscribed:
        return 0
    now = utcnow()
    event_id = new_event_id()
    body = event_body(event_id, event_type, data, int(now.timestamp()))
    for endpoint in subscribed:
        session.add(
            WebhookDelivery(
                endpoint_id=endpoint.id,
                event_id=event_id,
                event_type=event_type,
                subject_id=data["id"],
                body=body,
                next_attempt_at=now,
            )
        )
    return len(subscribed)


def record_job_end(session: Session, job_id: str, status: JobStatus | str) -> int:
    """fine_tuning.job.<status> for a job that has just reached succeeded, failed or cancelled."""
    tenant_id = session.scalar(select(Job.tenant_id).where(Job.id == job_id))
    if tenant_id is None:
        return 0
    return enqueue_event(session, tenant_id, f"fine_tuning.job.{JobStatus(status).value}", {"id": job_id})


def record_sweep_end(session: Session, sweep: Sweep, status: str, winner_job_id: str | None) -> int:
    """sweep.<status> for a sweep that has just been decided."""
    data = {"id": sweep.id, "status": str(status), "winner_job_id": winner_job_id}
    return enqueue_event(session, sweep.tenant_id, f"sweep.{status}", data)
