"""Response shapes of jobs, events, checkpoints, models and selections: OpenAI's where it has them, ftaas'
extensions beside them. The request side (JobCreate and the job spec) is app/core/job_spec.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas import ListPage
from app.core.tables import JobStatus


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobProgress(BaseModel):
    phase: str | None
    step: int
    total_steps: int | None
    epoch: float
    train_loss: float | None
    eta_seconds: float | None


class JobPublic(BaseModel):
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: JobStatus
    hyperparameters: dict[str, Any]
    training_file: str
    validation_file: str | None
    result_files: list[str] = Field(
        default=[], description="a succeeded job's step metrics as CSV: GET /v1/files/{id}/content"
    )
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None
    metadata: dict[str, str] | None
    suffix: str | None
    integrations: list[Any] = []
    method: dict[str, Any]
    # ftaas extensions
    adapter: dict[str, Any]
    training: dict[str, Any]
    evaluation: dict[str, Any]
    progress: JobProgress
    trainable_params: int | None
    total_params: int | None
    attempt: int


class JobList(ListPage):
    data: list[JobPublic]


class EventPublic(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None


class EventList(ListPage):
    data: list[EventPublic]


class CheckpointPublic(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class CheckpointList(ListPage):
    data: list[CheckpointPublic]


class ModelPublic(BaseModel):
    object: Literal["model"] = "model"
    id: str
    created: int
    owned_by: str
    # ftaas extensions
    kind: Literal["base", "fine-tuned"]
    base_model: str | None = None
    job_id: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


class SelectionPublic(BaseModel):
    object: Literal["selection"] = "selection"
    file_id: str
    job_id: str
    fine_tuned_model: str | None
    created_at: int
