"""Typed dependencies: the session, the caller's tenant, and objects that must belong to that tenant.

An object of another tenant is a 404, decided here and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from anyio.lowlevel import RunVar
from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.admission import KEY_TENANTS
from app.core.db import get_sessionmaker
from app.core.errors import ApiError, not_found
from app.core.settings import Settings, get_settings
from app.core.tables import ApiKey, Comparison, File, Job, Sweep, Tenant, WebhookEndpoint
from app.sweeps.share_links import check_token
from app.tenants.rate_limit import retry_after, retry_after_failed_auth
from app.tenants.service import hash_key, tenant_for_key


async def session_scope() -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request. Async: making a session does no I/O, so it takes no thread
    (each hop to AnyIO's pool costs about as much as a query); its first query connects, in the sync route or
    dependency that makes it. Closing gives the connection back (a ROLLBACK): in a thread of its own limiter, so
    that it never waits behind requests for a thread, and shielded, so a client that leaves cannot skip it.
    A session whose route already ended its transaction closes on the spot."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        if session.in_transaction():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(session.close, limiter=_closing_threads())
        else:
            session.close()  # it holds no connection (never used, or ended by its route): nothing to wait for


_CLOSERS: RunVar[anyio.CapacityLimiter] = RunVar("ftaas_session_closers")


def _closing_threads() -> anyio.CapacityLimiter:
    """Threads for closing sessions, apart from the request threads; one limiter per event loop, as AnyIO's own."""
    try:
        return _CLOSERS.get()
    except LookupError:
        _CLOSERS.set(limiter := anyio.CapacityLimiter(8))
        return limiter


async def settings_dep() -> Settings:
    return get_settings()  # async: a sync dependency would cost a thread hop for a cached object


# scope="function": the session closes, its connection back in the pool, as soon as the route returns, not after
# the response is sent (a download or a slow client would hold a connection all along; app/api/admission.py).
SessionDep = Annotated[Session, Depends(session_scope, scope="function")]
SettingsDep = Annotated[Settings, Depends(settings_dep)]

_bearer = HTTPBearer(auto_error=False, description="an API key made by `ftaas create-key --tenant NAME`")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def api_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return credentials.credentials


def authenticated(session: Session, key: str, client: str) -> Tenant:
    tenant = tenant_for_key(session, key)
    if tenant is None:
        if (wait := retry_after_failed_auth(client)) is not None:
            raise retry_later(wait, "too_many_failed_authentications", "Too many invalid API keys from this address")
        raise ApiError(
            401, "Invalid or revoked API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )
    admitted(key, tenant.id)
    return tenant


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def admitted(key: str, tenant_id: str) -> None:
    """A valid key of this tenant: its requests share the tenant's turns from now on, and the rate limit counts."""
    KEY_TENANTS.remember(hash_key(key), tenant_id)
    if (wait := retry_after(tenant_id)) is not None:
        limit = get_settings().rate_limit_per_minute
        raise retry_later(wait, "rate_limit_exceeded", f"Rate limit of {limit} requests per minute reached")


def retry_later(wait: int, code: str, message: str) -> ApiError:
    return ApiError(429, f"{message}; retry in {wait} s", code=code, headers={"Retry-After": str(wait)})


def get_current_tenant(session: SessionDep, credentials: Credentials, request: Request) -> Tenant:
    return authenticated(session, api_key(credentials), client_address(request))


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


def get_owned_job(
    session: SessionDep, credentials: Credentials, request: Request, job_id: Annotated[str, Path()]
) -> Job:
    """The key's check and the job in one query, the status read being what pollers send most (issue 13); a key
    that finds no job is then told apart: 401 if it is not valid, 404 if the job is not its tenant's."""
    key = api_key(credentials)
    job = session.scalar(
        select(Job)
        .join(ApiKey, ApiKey.tenant_id == Job.tenant_id)
        .where(Job.id == job_id, ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    if job is None:
        authenticated(session, key, client_address(request))
        raise not_found("fine-tuning job", job_id, "job_id", code="job_not_found")
    admitted(key, job.tenant_id)
    return job


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
    request: Request,
    token: Annotated[str | None, Query(description="the signed token of the sweep's page link")] = None,
) -> Sweep:
    """A sweep's read-only views (page, charts): its owner's API key, or the signed link of that sweep."""
    if token is not None and check_token("sweep", sweep_id, token):
        sweep = session.get(Sweep, sweep_id)
        if sweep is not None:
            return sweep
    if token is not None and credentials is None:
        raise ApiError(401, "This link is invalid or has expired; ask for the sweep again", code="invalid_link")
    return get_owned_sweep(session, get_current_tenant(session, credentials, request), sweep_id)


OwnedFile = Annotated[File, Depends(get_owned_file)]
OwnedJob = Annotated[Job, Depends(get_owned_job)]


def get_job_as_read(
    session: SessionDep, credentials: Credentials, request: Request, job_id: Annotated[str, Path()]
) -> Job:
    """The job as read now, detached, its transaction ended in this same thread: for a route that only presents
    it (async, so no further thread hop; the session then closes without one either)."""
    job = get_owned_job(session, credentials, request, job_id)
    session.expunge(job)
    session.rollback()
    return job


JobAsRead = Annotated[Job, Depends(get_job_as_read)]
OwnedComparison = Annotated[Comparison, Depends(get_owned_comparison)]
OwnedSweep = Annotated[Sweep, Depends(get_owned_sweep)]
ViewableSweep = Annotated[Sweep, Depends(get_viewable_sweep)]
OwnedWebhookEndpoint = Annotated[WebhookEndpoint, Depends(get_owned_webhook_endpoint)]
