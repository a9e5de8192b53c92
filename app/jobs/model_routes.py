"""GET /v1/models: the base models this server allows, plus the tenant's fine-tuned models."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.api.presenting import unix
from app.core.errors import not_found
from app.core.tables import Job, JobStatus
from app.jobs.schemas import ModelList, ModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"])


def _all_models(session, tenant, settings) -> list[ModelPublic]:
    models = [ModelPublic(id=m, created=0, owned_by="ftaas", kind="base") for m in settings.public_model_ids()]
    jobs = session.scalars(
        select(Job)
        .where(Job.tenant_id == tenant.id, Job.status == JobStatus.succeeded, Job.fine_tuned_model.is_not(None))
        .order_by(Job.finished_at.desc())
    )
    models += [
        ModelPublic(
            id=j.fine_tuned_model,
            created=unix(j.finished_at) or 0,
            owned_by=tenant.name,
            kind="fine-tuned",
            base_model=j.model,
            job_id=j.id,
        )
        for j in jobs
    ]
    return models


@router.get("", response_model=ModelList, summary="Base models you can fine-tune, and your fine-tuned models")
def list_models(session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> ModelList:
    return ModelList(data=_all_models(session, tenant, settings))


@router.get("/{model_id:path}", response_model=ModelPublic, summary="One model")
def get_model(model_id: str, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> ModelPublic:
    for model in _all_models(session, tenant, settings):
        if model.id == model_id:
            return model
    raise not_found("model", model_id, "model")
