"""GET /v1/files/{id}/leaderboard: the tenant's jobs on one training file ranked by a metric, base model too."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.deps import CurrentTenant, OwnedFile, SessionDep
from app.errors import ApiError
from app.metric_names import LOWER_IS_BETTER, METRIC_NAMES
from app.models import Evaluation, Job, JobStatus, Selection
from app.schemas import Leaderboard, LeaderboardRow

router = APIRouter(prefix="/v1/files", tags=["files"])

METRICS = ("rougeL", *(m for m in METRIC_NAMES if m != "rougeL"))  # rougeL first: the default


@router.get("/{file_id}/leaderboard", response_model=Leaderboard, summary="Jobs on this file ranked by a metric")
def leaderboard(
    file: OwnedFile,
    session: SessionDep,
    tenant: CurrentTenant,
    metric: Annotated[str, Query(description=f"one of {', '.join(METRICS)}")] = "rougeL",
) -> Leaderboard:
    if metric not in METRICS:
        raise ApiError(400, f"Unknown metric '{metric}'; use one of {', '.join(METRICS)}", param="metric")
    jobs = session.scalars(
        select(Job).where(
            Job.tenant_id == tenant.id, Job.training_file_id == file.id, Job.status == JobStatus.succeeded
        )
    ).all()
    evals = {
        (e.job_id, e.subject): e
        for e in session.scalars(select(Evaluation).where(Evaluation.job_id.in_([j.id for j in jobs])))
    }
    selection = session.get(Selection, file.id)
    rows: list[LeaderboardRow] = []
    base_seen: set[str] = set()
    for job in jobs:
        tuned = evals.get((job.id, "tuned"))
        if tuned is not None:
            rows.append(
                LeaderboardRow(
                    rank=0,
                    kind="fine-tuned",
                    job_id=job.id,
                    model=job.model,
                    fine_tuned_model=job.fine_tuned_model,
                    adapter_type=job.spec["adapter"]["type"],
                    selected=bool(selection and selection.job_id == job.id),
                    value=tuned.metrics.get(metric),
                    metrics=tuned.metrics,
                )
            )
        base = evals.get((job.id, "base"))
        # One base row per base model: the first job's measurement of it stands for all.
        if base is not None and job.model not in base_seen:
            base_seen.add(job.model)
            rows.append(
                LeaderboardRow(
                    rank=0,
                    kind="base",
                    job_id=None,
                    model=job.model,
                    fine_tuned_model=None,
                    adapter_type=None,
                    selected=False,
                    value=base.metrics.get(metric),
                    metrics=base.metrics,
                )
            )
    lower = metric in LOWER_IS_BETTER
    # Rows without the metric (e.g. ROUGE on raw text) sink to the bottom.
    rows.sort(key=lambda r: (r.value is None, (r.value if lower else -r.value) if r.value is not None else 0))
    for i, row in enumerate(rows, 1):
        row.rank = i
    return Leaderboard(
        file_id=file.id,
        metric=metric,
        higher_is_better=not lower,
        selected_job_id=selection.job_id if selection else None,
        data=rows,
    )
