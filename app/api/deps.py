"""Typed dependencies: the session, the caller's tenant, and objects that must belong to that tenant.

An object of another tenant is a 404, decided here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import get_sessionmaker
from app.core.errors import ApiError, not_found
from app.core.settings import Settings, get_settings
from app.core.tables import Comparison, File, Job, Sweep, Tenant, WebhookEndpoint
from app.sweeps.share_links import check_token
from app.tenants.rate_limit import retry_after
from app.tenants.service import tenant_for_key


def session_scope() -> Iterator[Session]:
    """FastAPI dependency: one session per request."""
    with get_sessionmaker()() as session:
        yield session


SessionDep = Annotated[Session, Depends(session_scope)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="an API key made by `ftaas create-key --tenant NAME`")


def get_current_tenant(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    tenant = tenant_for_key(session, credentials.credentials)
    if tenant is None:
        raise ApiError(
            401, "Invalid or revoked API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
    wait = retry_after(tenant.id)
    if wait is not None:
        raise ApiError(
            429,
            f"Rate limit of {get_settings().rate_limit_per_minute} requests per minute reached; retry in {wait} s",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


def owned_file(session: Session, tenant: Tenant, file_id: str, param: str = "file_id") -> File:
    row = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant.id, File.deleted_at.is_(None)))
    if row is None:
        raise not_found("file", file_id, param)
    return row


def get_owned_file(session: SessionDep, tenant: CurrentTenant, file_id: Annotated[str, Path()]) -> File:
    return owned_file(session, tenant, file_id)


def owned_job(session: Session, tenant: Tenant, job_id: str, param: str = "job_id") -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
    if job is None:
        raise not_found("fine-tuning job", job_id, param, code="job_not_found")
    return job


def get_owned_job(session: SessionDep, tenant: CurrentTenant, job_id: Annotated[str, Path()]) -> Job:
    return owned_job(session, tenant, job_id)


def get_owned_comparison(
    session: SessionDep, tenant: CurrentTenant, comparison_id: Annotated[str, Path()]
) -> Comparison:
    row = session.scalar(select(Comparison).where(Comparison.id == comparison_id, Comparison.tenant_id == tenant.id))
    if row is None:
        raise not_found("comparison", comparison_id, "comparison_id")
    return row


def get_owned_sweep(session: SessionDep, tenant: CurrentTenant, sweep_id: Annotated[str, Path()]) -> Sweep:
    sweep = session.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant_id == tenant.id))
    if sweep is None:
        raise not_found("sweep", sweep_id, "sweep_id", code="sweep_not_found")
    return sweep


def get_owned_webhook_endpoint(
    session: SessionDep, tenant: CurrentTenant, webhook_endpoint_id: Annotated[str, Path()]
) -> WebhookEndpoint:
    row = session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_endpoint_id, WebhookEndpoint.tenant_id == tenant.id)
    )
    if row is None:
        raise not_found("webhook endpoint", webhook_endpoint_id, "webhook_endpoint_id", "webhook_endpoint_not_found")
    return row


def get_viewable_sweep(
    session: SessionDep,
    sweep_id: Annotated[str, Path()],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    token: Annotated[str | None, Query(description="the signed token of the sweep's page link")] = None,
) -> Sweep:
    """A sweep's read-only views (page, charts): its owner's API key, or the signed link of that sweep."""
    if token is not None and check_token("sweep", sweep_id, token):
        sweep = session.get(Sweep, sweep_id)
        if sweep is not None:
            return sweep
    if token is not None and credentials is None:
        raise ApiError(401, "This link is invalid or has expired; ask for the sweep again", code="invalid_link")
    return get_owned_sweep(session, get_current_tenant(session, credentials), sweep_id)


OwnedFile = Annotated[File, Depends(get_owned_file)]
OwnedJob = Annotated[Job, Depends(get_owned_job)]
OwnedComparison = Annotated[Comparison, Depends(get_owned_comparison)]
OwnedSweep = Annotated[Sweep, Depends(get_owned_sweep)]
ViewableSweep = Annotated[Sweep, Depends(get_viewable_sweep)]
OwnedWebhookEndpoint = Annotated[WebhookEndpoint, Depends(get_owned_webhook_endpoint)]
