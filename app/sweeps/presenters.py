"""Sweep rows and their jobs -> SweepPublic (progress, candidates, winner, links)."""

from __future__ import annotations

from app.api.presenting import unix
from app.core.settings import get_settings
from app.core.tables import TERMINAL_STATUSES, Job, Sweep
from app.sweeps.schemas import SweepCandidate, SweepProgress, SweepPublic
from app.sweeps.share_links import make_token


def sweep_public(sweep: Sweep, jobs: list[Job]) -> SweepPublic:
    counts = {status: 0 for status in ("queued", "running", "succeeded", "failed", "cancelled")}
    done = 0.0
    for job in jobs:
        counts[job.status if job.status in counts else "queued"] += 1
        if job.status in TERMINAL_STATUSES:
            done += 1.0
        elif job.total_steps:
            done += min(1.0, job.step / job.total_steps)
    # from the configured public URL, never the request's Host header (anyone can send any Host); unset: relative
    root = (get_settings().public_url or "").rstrip("/")
    return SweepPublic(
        id=sweep.id,
        created_at=unix(sweep.created_at),
        finished_at=unix(sweep.finished_at),
        status=sweep.status,
        training_file=sweep.training_file_id,
        validation_file=sweep.validation_file_id,
        test_file=sweep.test_file_id,
        selection_metric=sweep.selection_metric,
        seed=sweep.seed,
        metadata=sweep.metadata_,
        progress=SweepProgress(**counts, fraction=done / len(jobs) if jobs else 0.0),
        candidates=[
            SweepCandidate(
                name=(job.metadata_ or {}).get("sweep_candidate", job.id),
                job_id=job.id,
                status=job.status,
                adapter_type=job.spec["adapter"]["type"],
                model=job.model,
            )
            for job in jobs
        ],
        winner_job_id=sweep.winner_job_id,
        result=sweep.result,
        leaderboard_url=f"{root}/v1/sweeps/{sweep.id}/leaderboard",
        page_url=f"{root}/v1/sweeps/{sweep.id}/page?token={make_token('sweep', sweep.id)}",
    )
