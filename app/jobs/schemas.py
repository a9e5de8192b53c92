"""Response shapes of jobs, events, checkpoints, models and selections: OpenAI's where it has them, ftaas'
extensions beside them. The request side (JobCreate and the job spec) is app/core/job_spec.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


# A job as JobCreate's example leaves it once it has succeeded (the shape a test checks against a real answer)
_HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0}
JOB_EXAMPLE = {
    "object": "fine_tuning.job",
    "id": "ftjob-abc123",
    "created_at": 1796311312,
    "finished_at": 1796311405,
    "model": "stories260k",
    "fine_tuned_model": "ft:stories260k:tenant-abc123:sql:ftjob-abc123",
    "organization_id": "tenant-abc123",
    "status": "succeeded",
    "hyperparameters": _HYPERPARAMETERS,
    "training_file": "file-abc123",
    "validation_file": None,
    "result_files": ["file-def456"],
    "trained_tokens": 4210,
    "error": None,
    "seed": 916743819,
    "estimated_finish": None,
    "metadata": {"team": "analytics"},
    "suffix": "sql",
    "integrations": [],
    "method": {"type": "supervised", "supervised": {"hyperparameters": _HYPERPARAMETERS}},
    "test_file": None,
    "adapter": {
        "type": "lora",
        "r": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "target_modules": "all-linear",
        "train_eos_token": True,
        "num_virtual_tokens": 20,
        "prompt_tuning_init_text": None,
        "compute_dtype": "bfloat16",
    },
    "training": {
        "learning_rate": 0.0002,
        "max_seq_length": 512,
        "gradient_accumulation_steps": 1,
        "micro_batch_size": 8,
        "warmup_ratio": 0.03,
        "lr_scheduler": "linear",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": 10,
        "validation_split": 0.1,
        "test_split": 0.1,
        "gradient_checkpointing": False,
        "packing": True,
    },
    "evaluation": {
        "metrics": ["rouge", "bertscore", "perplexity", "token_accuracy"],
        "max_rows": 20,
        "max_new_tokens": 32,
        "batch_size": "auto",
        "num_samples": 10,
        "eval_every_steps": None,
        "early_stopping_patience": None,
        "selection_metric": "exact_match",
        "graders": [{"type": "exact_match"}],
    },
    "resources": {"gpus": 1, "strategy": "auto"},
    "progress": {"phase": "done", "step": 2, "total_steps": 2, "epoch": 2.0, "train_loss": 5.58, "eta_seconds": 0.0},
    "trainable_params": 46240,
    "total_params": 306272,
    "data": {"training_rows": 32, "validation_rows": 4, "test_rows": 4, "rows_cut": 0, "rows_dropped": 0},
    "attempt": 1,
}


class JobData(BaseModel):
    training_rows: int = Field(description="rows trained on (after the held-out split)")
    validation_rows: int = Field(description="held-out rows evaluated on, which pick the shipped checkpoint")
    test_rows: int = Field(0, description="rows only reported (test_file or training.test_split)")
    rows_cut: int = Field(description="rows longer than max_seq_length that lost the beginning of their prompt")
    rows_dropped: int = Field(description="rows whose answer alone is longer than max_seq_length: not trained on")


class JobPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

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
    test_file: str | None = Field(None, description="rows only ever reported, never used for a decision")
    adapter: dict[str, Any]
    training: dict[str, Any]
    evaluation: dict[str, Any]
    resources: dict[str, Any] = Field(
        description='what the job trains on: {"gpus": N, "strategy": "auto" | "ddp" | "fsdp"}'
    )
    progress: JobProgress
    trainable_params: int | None
    total_params: int | None
    data: JobData | None = Field(None, description="the rows as the job read them, once it has")
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


class MergedModelPending(BaseModel):
    """GET .../adapter?format=merged before the merged model is built: a worker builds it; ask again after the
    answer's Retry-After."""

    object: Literal["fine_tuning.job.merged_model"] = "fine_tuning.job.merged_model"
    job_id: str
    step: int | None = Field(description="the evaluated checkpoint being merged; null: the shipped adapter")
    status: Literal["queued", "building"] = Field(
        description="queued: waiting for a worker (behind the training jobs on its queue); building: being merged"
    )
    created_at: int = Field(description="when it was first asked for (Unix seconds)")
    message: str
