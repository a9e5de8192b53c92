"""GET /v1/files/{id}/leaderboard: the tenant's finished jobs on one training file ranked, base model too."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.api.deps import CurrentTenant, OwnedFile, SessionDep
from app.core.metrics import RankMetric
from app.core.tables import Job, JobStatus, Selection
from app.evaluation.leaderboard import build_leaderboard
from app.evaluation.schemas import Leaderboard

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get(
    "/{file_id}/leaderboard",
    response_model=Leaderboard,
    summary="Succeeded jobs on this file ranked by a metric, with cost and paired bootstrap intervals",
)
def leaderboard(
    file: OwnedFile,
    session: SessionDep,
    tenant: CurrentTenant,
    metric: Annotated[
        RankMetric,
        Query(
            description="auto = preference_accuracy for preference tuning (DPO) jobs, rougeL, or eval_loss when the "
            "jobs were trained on raw text"
        ),
    ] = "auto",
) -> Leaderboard:
    jobs = session.scalars(
        select(Job)
        .where(Job.tenant_id == tenant.id, Job.training_file_id == file.id, Job.status == JobStatus.succeeded)
        .order_by(Job.created_at, Job.id)
    ).all()
    selection = session.get(Selection, file.id)
    return build_leaderboard(
        session, list(jobs), metric, file_id=file.id, selected_job_id=selection.job_id if selection else None
    )
