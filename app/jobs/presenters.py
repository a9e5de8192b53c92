"""Job rows -> the public shapes a client sees: jobs, their events and checkpoints."""

from __future__ import annotations

from app.api.presenting import unix
from app.core.job_spec import Resources
from app.core.naming import fine_tuned_name
from app.core.tables import Checkpoint, Job, JobEvent
from app.jobs.schemas import CheckpointPublic, EventPublic, JobError, JobProgress, JobPublic


def method_public(spec: dict) -> dict:
    """OpenAI's `method` of a stored spec: {"type": t, t: {"hyperparameters": ...}}, beta for dpo only."""
    kind = spec.get("method", "supervised")
    return {"type": kind, kind: {"hyperparameters": hyperparameters_public(spec, kind)}}


def hyperparameters_public(spec: dict, kind: str = "supervised") -> dict:
    hp = dict(spec["hyperparameters"])
    if kind != "dpo":
        hp.pop("beta", None)
    return hp


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
        hyperparameters=hyperparameters_public(spec),
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
        test_file=job.test_file_id,
        trained_tokens=job.trained_tokens,
        error=JobError(**job.error) if job.error else None,
        seed=job.seed,
        estimated_finish=estimated_finish,
        metadata=job.metadata_,
        suffix=job.suffix,
        method=method_public(spec),
        adapter=spec["adapter"],
        training=spec["training"],
        evaluation=spec["evaluation"],
        resources=spec.get("resources") or Resources().model_dump(),  # rows stored before the field: one GPU
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
        data=job.data_summary,
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
