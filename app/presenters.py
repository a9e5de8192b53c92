"""Rows -> public shapes. One place decides what a client sees of each table."""

from __future__ import annotations

from datetime import UTC, datetime

from app.models import TERMINAL_STATUSES, Checkpoint, File, Job, JobEvent, Sweep
from app.schemas import CheckpointPublic, EventPublic, FilePublic, JobError, JobProgress, JobPublic
from app.share_links import make_token
from app.sweep_schemas import SweepCandidate, SweepProgress, SweepPublic


def unix(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def file_public(row: File) -> FilePublic:
    return FilePublic(
        id=row.id,
        bytes=row.bytes,
        created_at=unix(row.created_at),
        filename=row.filename,
        purpose=row.purpose,
        format=row.format,
        shape=row.shape,
        num_rows=row.num_rows,
        token_estimate=row.token_estimate,
        sha256=row.sha256,
        column_mapping=row.column_mapping,
        completion_separator=row.completion_separator,
    )


def job_public(job: Job) -> JobPublic:
    spec = job.spec
    estimated_finish = None
    if job.status == "running" and job.eta_s is not None:
        estimated_finish = unix(job.updated_at) + int(job.eta_s)
    return JobPublic(
        id=job.id,
        created_at=unix(job.created_at),
        finished_at=unix(job.finished_at),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=job.tenant_id,
        status=job.status,
        hyperparameters=spec["hyperparameters"],
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
        trained_tokens=job.trained_tokens,
        error=JobError(**job.error) if job.error else None,
        seed=job.seed,
        estimated_finish=estimated_finish,
        metadata=job.metadata_,
        suffix=job.suffix,
        method={"type": "supervised", "supervised": {"hyperparameters": spec["hyperparameters"]}},
        adapter=spec["adapter"],
        training=spec["training"],
        evaluation=spec["evaluation"],
        result_files=[job.result_file_id] if job.result_file_id else [],
        progress=JobProgress(
            phase="pausing" if job.pause_requested and job.status == "running" else job.phase,
            step=job.step,
            total_steps=job.total_steps,
            epoch=job.epoch,
            train_loss=job.train_loss,
            eta_seconds=job.eta_s,
        ),
        trainable_params=job.trainable_params,
        total_params=job.total_params,
        attempt=job.attempt,
    )


def event_public(row: JobEvent) -> EventPublic:
    return EventPublic(
        id=f"ftevent-{row.id}",
        created_at=unix(row.created_at),
        level=row.level,
        message=row.message,
        type=row.type,
        data=row.data,
    )


def checkpoint_public(row: Checkpoint, job: Job) -> CheckpointPublic:
    return CheckpointPublic(
        id=row.id,
        created_at=unix(row.created_at),
        fine_tuned_model_checkpoint=f"{job.fine_tuned_model or fine_tuned_name(job)}:ckpt-step-{row.step}",
        fine_tuning_job_id=job.id,
        metrics={"step": row.step, "epoch": row.epoch, **(row.metrics or {})},
        step_number=row.step,
    )


def fine_tuned_name(job: Job) -> str:
    """ft:<base>:<tenant>:<suffix>:<job id>, as OpenAI names fine-tuned models."""
    return f"ft:{job.model}:{job.tenant_id}:{job.suffix or ''}:{job.id}"


def sweep_public(sweep: Sweep, jobs: list[Job], request=None) -> SweepPublic:
    counts = {status: 0 for status in ("queued", "running", "succeeded", "failed", "cancelled")}
    done = 0.0
    for job in jobs:
        counts[job.status if job.status in counts else "queued"] += 1
        if job.status in TERMINAL_STATUSES:
            done += 1.0
        elif job.total_steps:
            done += min(1.0, job.step / job.total_steps)
    root = str(request.base_url).rstrip("/") if request is not None else ""
    return SweepPublic(
        id=sweep.id,
        created_at=unix(sweep.created_at),
        finished_at=unix(sweep.finished_at),
        status=sweep.status,
        training_file=sweep.training_file_id,
        validation_file=sweep.validation_file_id,
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
