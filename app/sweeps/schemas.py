"""Shapes of sweeps: many candidate jobs on one file, evaluated on the same rows, the best selected."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.job_spec import EvaluationSpec, Metadata, Strict
from app.core.metrics import RankMetric

# Dotted names a grid may vary, and where each lands in a job request.
GRID_KEYS = ("model", "adapter.", "training.", "hyperparameters.")
MAX_CANDIDATES = 64


class CandidateSpec(Strict):
    """One candidate: any of a job's settings, laid over the sweep's `base` candidate."""

    name: str | None = Field(None, max_length=64, description="a label shown on the leaderboard")
    model: str | None = Field(None, min_length=1, max_length=300)
    adapter: dict[str, Any] | None = Field(None, description="fields of a job's `adapter`, e.g. {type: qlora, r: 16}")
    training: dict[str, Any] | None = Field(None, description="fields of a job's `training`")
    hyperparameters: dict[str, Any] | None = Field(None, description="n_epochs, batch_size, learning_rate_multiplier")


class SweepCreate(Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "training_file": "file-abc123",
                    "base": {"model": "stories260k", "hyperparameters": {"n_epochs": 1}},
                    "candidates": [
                        {"name": "lora", "adapter": {"type": "lora"}},
                        {"name": "prompt tuning", "adapter": {"type": "prompt_tuning"}},
                    ],
                    "grid": {"adapter.r": [4, 8]},
                    "evaluation": {"max_rows": 20, "max_new_tokens": 32},
                }
            ]
        },
    )

    training_file: str = Field(..., min_length=1, max_length=64)
    validation_file: str | None = Field(
        None,
        max_length=64,
        description="held-out rows for every candidate; default: the same seeded split of the "
        "training file for all candidates",
    )
    selection_metric: RankMetric = Field(
        "auto",
        description="ranks the candidates and picks each job's checkpoint; auto = rougeL when rows have "
        "completions, eval_loss for raw text",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="shared by every candidate, so they see the same held-out rows and data order",
    )
    suffix: str | None = Field(None, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    metadata: Metadata | None = Field(None, max_length=8, description="up to 8 pairs: keys 64, values 512 characters")
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="one evaluation for all candidates: the same rows and settings"
    )
    base: CandidateSpec = Field(default_factory=CandidateSpec, description="settings every candidate starts from")
    candidates: list[CandidateSpec] | None = Field(
        None, max_length=MAX_CANDIDATES, description="explicit candidates (each laid over `base`)"
    )
    grid: dict[str, list[Any]] | None = Field(
        None,
        description='every combination of these values, e.g. {"adapter.type": ["lora", "qlora"], '
        '"adapter.r": [4, 16]}; keys: model, adapter.*, training.*, hyperparameters.*. With `candidates`, each '
        f"candidate is crossed with the grid. At most {MAX_CANDIDATES} candidates in all",
    )


class SweepProgress(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    fraction: float = Field(description="share of the whole sweep's training steps done, 0..1")


class SweepCandidate(BaseModel):
    name: str
    job_id: str
    status: str
    adapter_type: str
    model: str


class SweepPublic(BaseModel):
    object: Literal["sweep"] = "sweep"
    id: str
    created_at: int
    finished_at: int | None
    status: str
    training_file: str
    validation_file: str | None
    selection_metric: str
    seed: int
    metadata: dict[str, str] | None
    progress: SweepProgress
    candidates: list[SweepCandidate]
    winner_job_id: str | None
    result: dict[str, Any] | None = Field(None, description="the winner, why it won, and the runners-up it tied with")
    leaderboard_url: str
    page_url: str | None = Field(None, description="a read-only HTML page of this sweep; the link itself grants access")


class SweepList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SweepPublic]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
