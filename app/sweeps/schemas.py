"""Shapes of sweeps: many candidate jobs on one file, evaluated on the same rows, the best selected."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.job_spec import EvaluationSpec, Metadata, MethodType, Strict
from app.core.metrics import RankMetric

# Dotted names a grid may vary, and where each lands in a job request.
GRID_KEYS = ("model", "adapter.", "training.", "hyperparameters.", "resources.")
MAX_CANDIDATES = 64


class CandidateSpec(Strict):
    """One candidate: any of a job's settings, laid over the sweep's `base` candidate."""

    name: str | None = Field(None, max_length=64, description="a label shown on the leaderboard")
    model: str | None = Field(None, min_length=1, max_length=300)
    adapter: dict[str, Any] | None = Field(None, description="fields of a job's `adapter`, e.g. {type: qlora, r: 16}")
    training: dict[str, Any] | None = Field(None, description="fields of a job's `training`")
    hyperparameters: dict[str, Any] | None = Field(
        None, description="n_epochs, batch_size, learning_rate_multiplier; beta with method dpo"
    )
    resources: dict[str, Any] | None = Field(None, description='fields of a job\'s `resources`, e.g. {"gpus": 2}')


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
    test_file: str | None = Field(
        None,
        max_length=64,
        description="ftaas: rows no decision sees, only reported: the winner is chosen on the validation rows, "
        "and its test result, with its interval, shows what the choice is worth",
    )
    test_split: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="share of the training file carved off first as test rows when no test_file is given, the "
        "same rows for every candidate (the sweep's seed); 0: none",
    )
    method: MethodType = Field(
        "supervised", description="every candidate's method: supervised, or dpo on a file of preference rows"
    )
    selection_metric: RankMetric = Field(
        "auto",
        description="ranks the candidates and picks each job's checkpoint; auto = preference_accuracy for "
        "preference tuning (method dpo), rougeL when rows have completions, eval_loss for raw text",
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
        '"adapter.r": [4, 16]}; keys: model, adapter.*, training.*, hyperparameters.*, resources.*. With '
        f"`candidates`, each candidate is crossed with the grid. At most {MAX_CANDIDATES} candidates in all",
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


def _candidate(name: str, job_id: str, status: str, adapter_type: str) -> dict[str, str]:
    return {"name": name, "job_id": job_id, "status": status, "adapter_type": adapter_type, "model": "stories260k"}


# SweepCreate's example half-way: its grid made four candidates, two have finished
SWEEP_EXAMPLE = {
    "object": "sweep",
    "id": "sweep-abc123",
    "created_at": 1796311312,
    "finished_at": None,
    "status": "running",
    "training_file": "file-abc123",
    "validation_file": None,
    "test_file": None,
    "selection_metric": "eval_loss",
    "seed": 1218599201,
    "metadata": None,
    "progress": {"queued": 1, "running": 1, "succeeded": 2, "failed": 0, "cancelled": 0, "fraction": 0.55},
    "candidates": [
        _candidate("lora r=4", "ftjob-abc123", "succeeded", "lora"),
        _candidate("lora r=8", "ftjob-abc124", "succeeded", "lora"),
        _candidate("prompt tuning r=4", "ftjob-abc125", "running", "prompt_tuning"),
        _candidate("prompt tuning r=8", "ftjob-abc126", "queued", "prompt_tuning"),
    ],
    "winner_job_id": None,
    "result": None,
    "leaderboard_url": "/v1/sweeps/sweep-abc123/leaderboard",
    "page_url": "/v1/sweeps/sweep-abc123/page?token=1796916112.cd981d9bedda57d9bd16fa1534d45634d6994e6b",
}


class SweepPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [SWEEP_EXAMPLE]})

    object: Literal["sweep"] = "sweep"
    id: str
    created_at: int
    finished_at: int | None
    status: str
    training_file: str
    validation_file: str | None
    test_file: str | None = None
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
