"""/v1/sweeps: many candidate jobs on one training file, evaluated on the same rows, the best one selected."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import CurrentTenant, OwnedSweep, SessionDep, SettingsDep
from app.api.openapi import error_responses
from app.api.pagination import after_query, limit_query, list_page, page_of
from app.core.errors import ApiError
from app.core.job_spec import gpus_of
from app.core.job_state import cancel_open_jobs
from app.core.metrics import GRADER_NAMES, RankMetric
from app.core.queue import enqueue_job
from app.core.tables import TERMINAL_STATUSES, Sweep, SweepStatus
from app.evaluation.schemas import Leaderboard
from app.jobs.service import (
    build_job,
    check_active_job_room,
    check_gpus,
    check_graders,
    training_files,
    validate_job,
)
from app.sweeps.presenters import sweep_public
from app.sweeps.schemas import SweepCreate, SweepList, SweepPublic
from app.sweeps.service import expand_candidates, finalize_if_done, job_request, sweep_board, sweep_jobs

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])


@router.post(
    "",
    response_model=SweepPublic,
    responses=error_responses(404),
    summary="Train several candidates on one file (models x adapter types x hyperparameters) and pick the best",
)
def create_sweep(body: SweepCreate, session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> SweepPublic:
    files = training_files(session, tenant, body.training_file, body.validation_file, body.method, body.test_file)
    training = files.training
    candidates = expand_candidates(body)
    metric = body.selection_metric
    if metric == "auto":
        metric = "eval_loss" if training.shape == "text" else "rougeL"
    elif training.shape == "text" and metric not in ("eval_loss", "perplexity", "token_accuracy"):
        raise ApiError(
            400,
            f"Raw-text data has no completions to generate, so it cannot be ranked by {metric}; "
            "use eval_loss, perplexity or token_accuracy",
            param="selection_metric",
        )
    if metric.startswith("bertscore") and "bertscore" not in body.evaluation.metrics:
        raise ApiError(
            400, f"selection_metric {metric} needs 'bertscore' in evaluation.metrics", param="selection_metric"
        )
    if metric in GRADER_NAMES and metric not in body.evaluation.grader_names():
        raise ApiError(
            400,
            f'selection_metric \'{metric}\' is a grader: add {{"type": "{metric}"}} to evaluation.graders',
            param="selection_metric",
        )
    if body.test_file is not None and body.test_split > 0:
        raise ApiError(400, "give test rows either as test_file or as test_split, not both", param="test_split")
    check_graders(body.evaluation, files, body.test_split)  # the sweep's own fields named, not a candidate's
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31 - 1)
    requests = [job_request(body, i, name, cand, metric, seed) for i, (name, cand) in enumerate(candidates)]
    for i, req in enumerate(requests):  # every check before the first row is added: nothing half-stored
        validate_job(settings, req, param_prefix=f"candidates[{i}].")
        check_gpus(session, settings, req.resources.gpus, param_prefix=f"candidates[{i}].")
    check_active_job_room(session, settings, tenant, len(requests))
    sweep = Sweep(
        tenant_id=tenant.id,
        training_file_id=training.id,
        validation_file_id=files.validation.id if files.validation else None,
        test_file_id=files.test.id if files.test else None,
        selection_metric=metric,
        seed=seed,
        metadata_=body.metadata,
        spec={
            "evaluation": body.evaluation.model_dump(),
            "test_split": body.test_split,
            "candidates": [{"name": name, **cand} for name, cand in candidates],
        },
        status=SweepStatus.running,
    )
    session.add(sweep)
    session.flush()
    # All candidates in one transaction: a bad candidate leaves no sweep and no job behind.
    jobs = [
        build_job(session, settings, tenant, req, files, sweep_id=sweep.id, param_prefix=f"candidates[{i}].")
        for i, req in enumerate(requests)
    ]
    for job in jobs:
        job.metadata_ = {**(job.metadata_ or {}), "sweep": sweep.id}
    session.commit()  # commit, then enqueue: the workers must find the rows
    for job in jobs:
        enqueue_job(job.id, gpus_of(job.spec))
    return sweep_public(sweep, jobs)


@router.get("", response_model=SweepList, summary="List your sweeps, newest first")
def list_sweeps(
    session: SessionDep,
    tenant: CurrentTenant,
    after: Annotated[str | None, after_query("sweep-abc123")] = None,
    limit: Annotated[int, limit_query(100, "sweeps")] = 20,
) -> SweepList:
    rows, has_more = page_of(session, Sweep, [Sweep.tenant_id == tenant.id], after, limit)
    return SweepList(**list_page([sweep_public(r, sweep_jobs(session, r.id)) for r in rows], has_more))


@router.get(
    "/{sweep_id}", response_model=SweepPublic, summary="A sweep: progress of the whole, its candidates, the winner"
)
def get_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepPublic:
    return sweep_public(sweep, sweep_jobs(session, sweep.id))


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepPublic,
    responses=error_responses(409),
    summary="Cancel every candidate that has not ended; no winner is picked",
)
def cancel_sweep(sweep: OwnedSweep, session: SessionDep) -> SweepPublic:
    if sweep.finished_at is not None:
        raise ApiError(
            409, f"Sweep {sweep.id} has already {sweep.status}", param="sweep_id", code="sweep_not_cancellable"
        )
    sweep.status = SweepStatus.cancelled
    open_ids = [j.id for j in sweep_jobs(session, sweep.id) if j.status not in TERMINAL_STATUSES]
    cancel_open_jobs(session, open_ids, f"Job cancelled with its sweep {sweep.id}")
    session.commit()
    finalize_if_done(session, sweep.id)
    session.refresh(sweep)
    return sweep_public(sweep, sweep_jobs(session, sweep.id))


@router.get(
    "/{sweep_id}/leaderboard",
    response_model=Leaderboard,
    summary="The candidates and the base model ranked, with cost and paired bootstrap intervals against the leader",
)
def sweep_leaderboard(
    sweep: OwnedSweep,
    session: SessionDep,
    metric: Annotated[RankMetric | None, Query(description="default: the sweep's selection metric")] = None,
) -> Leaderboard:
    return sweep_board(session, sweep, metric)
