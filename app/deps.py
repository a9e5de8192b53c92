"""Typed dependencies: the session, the caller's tenant, and objects that must belong to that tenant.

An object of another tenant is a 404, decided here and nowhere else.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import tenant_for_key
from app.config import Settings, get_settings
from app.db import session_scope
from app.errors import ApiError, not_found
from app.models import File, Job, Tenant

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
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]


def owned_file(session: Session, tenant: Tenant, file_id: str, param: str = "file_id") -> File:
    row = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant.id, File.deleted_at.is_(None)))
    if row is None:
        raise not_found("file", file_id, param)
    return row


def get_owned_file(session: SessionDep, tenant: CurrentTenant, file_id: Annotated[str, Path()]) -> File:
    return owned_file(session, tenant, file_id)


def get_owned_job(session: SessionDep, tenant: CurrentTenant, job_id: Annotated[str, Path()]) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
    if job is None:
        raise not_found("fine-tuning job", job_id, "job_id", code="job_not_found")
    return job


OwnedFile = Annotated[File, Depends(get_owned_file)]
OwnedJob = Annotated[Job, Depends(get_owned_job)]
