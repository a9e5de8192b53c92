"""/v1/webhook_endpoints: register URLs that receive signed job and sweep events, as OpenAI's webhook endpoint
API (the openai client's `client.webhooks`), plus the deliveries of each endpoint (an ftaas extension)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import delete

from app.api.deps import CurrentTenant, OwnedWebhookEndpoint, SessionDep, SettingsDep
from app.api.pagination import after_query, limit_query, list_page, page_of
from app.api.presenting import unix
from app.core.errors import ApiError
from app.core.outbox import EVENT_TYPES, JOB_EVENT_TYPES, event_body, new_event_id
from app.core.settings import Settings
from app.core.tables import DeliveryStatus, WebhookDelivery, WebhookEndpoint, utcnow
from app.webhooks.dispatch import DeliveryFailed, post_event
from app.webhooks.schemas import (
    RotateSecret,
    WebhookDeliveryList,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointDeleted,
    WebhookEndpointList,
    WebhookEndpointPublic,
    WebhookEndpointUpdate,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
    WebhookTest,
    WebhookTestResult,
)
from app.webhooks.signing import active_secrets, new_signing_secret, secret_hint
from app.webhooks.urls import WebhookUrlRefused, check_url

router = APIRouter(tags=["webhooks"])
PREFIX = "/v1/webhook_endpoints"
PREVIOUS_SECRET_GRACE = timedelta(hours=24)


def endpoint_public(row: WebhookEndpoint) -> WebhookEndpointPublic:
    return WebhookEndpointPublic(
        id=row.id,
        name=row.name,
        url=row.url,
        event_types=list(row.event_types),
        created_at=unix(row.created_at),
        updated_at=unix(row.updated_at),
        signing_secret_hint=secret_hint(row.signing_secret),
        enabled=row.enabled,
    )


def with_secret(row: WebhookEndpoint) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(**endpoint_public(row).model_dump(), signing_secret=row.signing_secret)


def delivery_public(row: WebhookDelivery) -> WebhookDeliveryPublic:
    return WebhookDeliveryPublic(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        subject_id=row.subject_id,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=unix(row.next_attempt_at) if row.status == DeliveryStatus.pending else None,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=unix(row.created_at),
        delivered_at=unix(row.delivered_at),
    )


def checked_url(url: str, settings: Settings) -> str:
    try:
        check_url(url, allow_private=settings.webhook_allow_private_urls, dns_timeout_s=settings.webhook_dns_timeout_s)
    except WebhookUrlRefused as exc:
        raise ApiError(400, f"Invalid url: {exc}", param="url", code="invalid_url") from None
    return url


@router.post(
    PREFIX,
    response_model=WebhookEndpointWithSecret,
    summary="Register a URL for job and sweep events; the answer holds its signing secret, shown only now",
)
def create_endpoint(
    body: WebhookEndpointCreate, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep
) -> WebhookEndpointWithSecret:
    row = WebhookEndpoint(
        tenant_id=tenant.id,
        name=body.name,
        url=checked_url(body.url, settings),
        event_types=list(dict.fromkeys(body.event_types)),
        enabled=body.enabled,
        signing_secret=new_signing_secret(),
    )
    session.add(row)
    session.commit()
    return with_secret(row)


@router.get(PREFIX, response_model=WebhookEndpointList, summary="List your webhook endpoints, newest first")
def list_endpoints(
    session: SessionDep,
    tenant: CurrentTenant,
    after: Annotated[str | None, after_query("webhook-abc123")] = None,
    limit: Annotated[int, limit_query(100, "endpoints")] = 20,
) -> WebhookEndpointList:
    rows, has_more = page_of(session, WebhookEndpoint, [WebhookEndpoint.tenant_id == tenant.id], after, limit)
    return WebhookEndpointList(**list_page([endpoint_public(r) for r in rows], has_more))


@router.get(f"{PREFIX}/{{webhook_endpoint_id}}", response_model=WebhookEndpointPublic, summary="A webhook endpoint")
def get_endpoint(endpoint: OwnedWebhookEndpoint) -> WebhookEndpointPublic:
    return endpoint_public(endpoint)


@router.post(
    f"{PREFIX}/{{webhook_endpoint_id}}",
    response_model=WebhookEndpointPublic,
    summary="Change a webhook endpoint's name, URL, event types or (ftaas) enabled",
)
def update_endpoint(
    endpoint: OwnedWebhookEndpoint, body: WebhookEndpointUpdate, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointPublic:
    changes = {
        "name": body.name,
        "url": checked_url(body.url, settings) if body.url is not None else None,
        "event_types": list(dict.fromkeys(body.event_types)) if body.event_types is not None else None,
        "enabled": body.enabled,
    }
    changed = False
    for field, value in changes.items():
        if value is not None and getattr(endpoint, field) != value:
            setattr(endpoint, field, value)
            changed = True
    if changed:  # an update that changes nothing leaves updated_at as it was, as OpenAI's does
        endpoint.updated_at = utcnow()
        session.commit()
    return endpoint_public(endpoint)


@router.delete(
    f"{PREFIX}/{{webhook_endpoint_id}}",
    response_model=WebhookEndpointDeleted,
    summary="Delete a webhook endpoint; its pending deliveries are dropped",
)
def delete_endpoint(endpoint: OwnedWebhookEndpoint, session: SessionDep) -> WebhookEndpointDeleted:
    session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))  # deliveries cascade
    session.commit()
    return WebhookEndpointDeleted(id=endpoint.id)


@router.post(
    f"{PREFIX}/{{webhook_endpoint_id}}/rotate_secret",
    response_model=WebhookEndpointWithSecret,
    summary="A new signing secret (shown only now); the old one may keep signing for 24 hours",
)
def rotate_secret(
    endpoint: OwnedWebhookEndpoint, session: SessionDep, body: RotateSecret | None = None
) -> WebhookEndpointWithSecret:
    keep_old = body is not None and body.keep_old_secret_active_for_24_hours
    endpoint.previous_signing_secret = endpoint.signing_secret if keep_old else None
    endpoint.previous_secret_expires_at = utcnow() + PREVIOUS_SECRET_GRACE if keep_old else None
    endpoint.signing_secret = new_signing_secret()
    endpoint.updated_at = utcnow()
    session.commit()
    return with_secret(endpoint)


def sample_data(event_type: str) -> dict:
    """The data of a test event: the shape of the real one, with an id that names no object."""
    if event_type in JOB_EVENT_TYPES:
        return {"id": "ftjob-test"}
    return {"id": "sweep-test", "status": event_type.rsplit(".", 1)[1], "winner_job_id": None}


@router.post(
    f"{PREFIX}/{{webhook_endpoint_id}}/test",
    response_model=WebhookTestResult,
    summary="Send a signed sample event to the endpoint now and report its answer",
    description="`status_code` is what the endpoint answered, whatever it was. A URL that cannot be reached "
    "(refused address, no such host, connection refused, timeout) is a 400 `webhook_test_failed`.",
)
def send_test_event(endpoint: OwnedWebhookEndpoint, body: WebhookTest, settings: SettingsDep) -> WebhookTestResult:
    event_id = new_event_id()
    payload = event_body(event_id, body.event_type, sample_data(body.event_type), int(utcnow().timestamp()))
    try:
        status_code = post_event(endpoint.url, active_secrets(endpoint), event_id, payload, settings)
    except DeliveryFailed as exc:
        raise ApiError(
            400, f"The test event could not be delivered: {exc}", param="url", code="webhook_test_failed"
        ) from None
    return WebhookTestResult(webhook_endpoint_id=endpoint.id, event_type=body.event_type, status_code=status_code)


@router.get(
    f"{PREFIX}/{{webhook_endpoint_id}}/deliveries",
    response_model=WebhookDeliveryList,
    summary="(ftaas) The endpoint's deliveries, newest first: status, attempts, last answer or error",
)
def list_deliveries(
    endpoint: OwnedWebhookEndpoint,
    session: SessionDep,
    after: Annotated[str | None, after_query("delivery-abc123")] = None,
    limit: Annotated[int, limit_query(100, "deliveries")] = 20,
    status: Annotated[
        DeliveryStatus | None,
        Query(openapi_examples={"failed": {"summary": "the deliveries that gave up", "value": "failed"}}),
    ] = None,
) -> WebhookDeliveryList:
    filters = [WebhookDelivery.endpoint_id == endpoint.id]
    if status is not None:
        filters.append(WebhookDelivery.status == status)
    rows, has_more = page_of(session, WebhookDelivery, filters, after, limit)
    return WebhookDeliveryList(**list_page([delivery_public(r) for r in rows], has_more))


@router.get(
    "/v1/webhook_event_types",
    response_model=WebhookEventTypeList,
    summary="The event types an endpoint may subscribe to",
)
def list_event_types(_tenant: CurrentTenant) -> WebhookEventTypeList:
    return WebhookEventTypeList(data=list(EVENT_TYPES))
