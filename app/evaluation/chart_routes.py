"""Pictures: a job's loss curves, a sweep's metric-by-candidate chart and metric-versus-cost scatter (PNG),
and one read-only HTML page per sweep. The sweep views accept the owner's key or the page's signed link."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import OwnedJob, SessionDep, ViewableSweep
from app.api.presenting import unix
from app.core.metrics import METRIC_NAMES, RankMetric
from app.core.tables import Checkpoint, Job, JobEvent
from app.evaluation import charts
from app.evaluation.leaderboard import candidate_name
from app.sweeps.service import sweep_board, sweep_jobs
from app.sweeps.share_links import make_token

router = APIRouter(tags=["charts"])
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))  # autoescapes HTML

CostName = Literal["train_seconds", "trainable_params", "peak_memory_bytes", "trained_tokens", "tokens_per_second"]
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


def loss_series(session: Session, job: Job) -> dict[str, list[tuple[float, float]]]:
    """Training loss from the job's logged steps; validation loss from its evaluated checkpoints."""
    train = [
        (float(d["step"]), float(d["train_loss"]))
        for d in session.scalars(
            select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.type == "metrics").order_by(JobEvent.id)
        )
        if d and "train_loss" in d and "step" in d and "subject" not in d
    ]
    evals = [
        (float(step), float(m["eval_loss"]))
        for step, m in session.execute(
            select(Checkpoint.step, Checkpoint.metrics).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step)
        )
        if m and m.get("eval_loss") is not None
    ]
    return {"train": sorted(dict(train).items()), "eval": evals}


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/charts/loss.png",
    response_class=Response,
    responses=PNG,
    summary="Training and validation loss by step (PNG)",
)
def job_loss_chart(job: OwnedJob, session: SessionDep) -> Response:
    return _png(charts.loss_curves_png({candidate_name(job): loss_series(session, job)}, f"{job.id} loss"))


@router.get(
    "/v1/sweeps/{sweep_id}/charts/metric.png",
    response_class=Response,
    responses=PNG,
    summary="Each candidate's metric with its bootstrap interval, winner and ties marked (PNG)",
)
def sweep_metric_chart(sweep: ViewableSweep, session: SessionDep, metric: RankMetric | None = None) -> Response:
    return _png(charts.metric_bars_png(sweep_board(session, sweep, metric)))


@router.get(
    "/v1/sweeps/{sweep_id}/charts/cost.png",
    response_class=Response,
    responses=PNG,
    summary="The metric against a cost (training time, trainable parameters, memory, tokens) (PNG)",
)
def sweep_cost_chart(
    sweep: ViewableSweep,
    session: SessionDep,
    metric: RankMetric | None = None,
    cost: CostName = "train_seconds",
) -> Response:
    return _png(charts.cost_scatter_png(sweep_board(session, sweep, metric), cost))


@router.get(
    "/v1/sweeps/{sweep_id}/charts/loss.png",
    response_class=Response,
    responses=PNG,
    summary="Every candidate's training and validation loss by step (PNG)",
)
def sweep_loss_chart(sweep: ViewableSweep, session: SessionDep) -> Response:
    series = {candidate_name(job): loss_series(session, job) for job in sweep_jobs(session, sweep.id)}
    return _png(charts.loss_curves_png(series, f"{sweep.id} loss"))


@router.get(
    "/v1/sweeps/{sweep_id}/page",
    response_class=HTMLResponse,
    summary="A read-only HTML page of the sweep: leaderboard and charts (open the sweep's page_url in a browser)",
)
def sweep_page(
    request: Request,
    sweep: ViewableSweep,
    session: SessionDep,
    metric: Annotated[RankMetric | None, Query()] = None,
) -> HTMLResponse:
    board = sweep_board(session, sweep, metric)
    token = make_token("sweep", sweep.id)
    jobs = sweep_jobs(session, sweep.id)
    response = templates.TemplateResponse(
        request,
        "sweep.html",
        {
            "sweep": sweep,
            "board": board,
            "token": token,
            "metric_q": f"&metric={board.metric}",
            "metric_names": [m for m in METRIC_NAMES if any(m in r.metrics for r in board.data)],
            "created": unix(sweep.created_at),
            "done": sum(1 for j in jobs if j.status in ("succeeded", "failed", "cancelled")),
            "total": len(jobs),
        },
    )
    # Nothing but this page's own images and inline styles: no script runs, nothing leaves the page.
    response.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
    response.headers["Referrer-Policy"] = "no-referrer"  # the link is the credential: do not leak it
    response.headers["Cache-Control"] = "no-store"
    return response
