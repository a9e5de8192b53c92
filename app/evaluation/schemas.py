"""Shapes of a job's evaluation (base vs tuned, sample rows) and of leaderboards (jobs ranked with their cost and
paired bootstrap intervals against the leader)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EvaluationSample(BaseModel):
    index: int
    prompt: str
    reference: str
    base_output: str | None
    tuned_output: str | None
    base_scores: dict[str, float] | None
    tuned_scores: dict[str, float] | None


class Interval(BaseModel):
    low: float
    high: float


class SplitResult(BaseModel):
    split: Literal["validation", "test"]
    num_rows: int | None
    decided: str = Field(
        description="what these rows decided: the shipped checkpoint, early stopping, a sweep's "
        "winner (validation), or nothing (test)"
    )
    independent: bool = Field(
        description="test rows that no decision saw: an unbiased estimate of the shipped model. False for "
        "validation rows, and for test rows that are the validation (or training) file's"
    )
    not_independent_because: str | None = None
    base: dict[str, float] | None
    tuned: dict[str, float] | None
    delta: dict[str, float] | None
    base_ci: dict[str, Interval] | None = Field(None, description="bootstrap interval of each base metric")
    tuned_ci: dict[str, Interval] | None = Field(None, description="bootstrap interval of each tuned metric")
    delta_ci: dict[str, Interval] | None = Field(
        None, description="paired bootstrap interval of tuned minus base, on the same rows"
    )
    skipped: dict[str, str] | None = Field(None, description="metrics not computed on these rows, with the reason")


class EvaluationPublic(BaseModel):
    object: Literal["fine_tuning.job.evaluation"] = "fine_tuning.job.evaluation"
    job_id: str
    status: Literal["pending", "partial", "complete"]
    num_rows: int | None = Field(description="validation rows (the top-level figures are the validation rows')")
    base: dict[str, float] | None
    tuned: dict[str, float] | None
    delta: dict[str, float] | None
    skipped: dict[str, str] | None = Field(None, description="metrics not computed on the validation rows, and why")
    validation: SplitResult | None = Field(None, description="the rows that made the job's decisions, with intervals")
    test: SplitResult | None = Field(
        None, description="the rows only reported (test_file or training.test_split), with intervals; null: none"
    )
    samples: list[EvaluationSample]


class VersusLeader(BaseModel):
    diff: float = Field(description="this row's metric minus the leader's, on the same rows")
    low: float
    high: float
    tied: bool = Field(description="the interval holds 0: the data cannot tell this row from the leader")


class Cost(BaseModel):
    trainable_params: int | None
    trainable_share: float | None = Field(description="trainable parameters / all parameters")
    train_seconds: float | None
    tokens_per_second: float | None = Field(description="trained (non-padding) tokens per second of training")
    peak_memory_bytes: int | None = Field(description="peak GPU memory allocated, or the training process's RSS")
    trained_tokens: int | None


class LeaderboardRow(BaseModel):
    rank: int
    kind: Literal["base", "fine-tuned"]
    job_id: str | None
    status: str | None
    name: str = Field(description="short label: the sweep candidate's name, or adapter type and rank")
    model: str
    fine_tuned_model: str | None
    adapter_type: str | None
    selected: bool
    winner: bool
    value: float | None
    value_ci: Interval | None = Field(None, description="bootstrap interval of the value")
    vs_leader: VersusLeader | None = Field(None, description="paired bootstrap interval of the difference")
    num_rows: int | None
    metrics: dict[str, float]
    cost: Cost | None
    test_value: float | None = Field(None, description="the metric on the test rows, which decided nothing")
    test_value_ci: Interval | None = Field(None, description="bootstrap interval of test_value")
    test_num_rows: int | None = None
    test_metrics: dict[str, float] | None = None
    validation_to_test: float | None = Field(
        None, description="test_value minus value: how much of the validation figure the choice made up"
    )


class ReportedRows(BaseModel):
    independent: bool = Field(description="no decision saw the test rows")
    not_independent_because: str | None = None
    decided: str


class Leaderboard(BaseModel):
    object: Literal["leaderboard"] = "leaderboard"
    file_id: str
    sweep_id: str | None = None
    metric: str
    higher_is_better: bool
    confidence: float
    bootstrap_samples: int
    leader_job_id: str | None
    winner_job_id: str | None = Field(
        None,
        description="the cheapest of the candidates tied with the leader (fewest trainable parameters, then "
        "least training time)",
    )
    selected_job_id: str | None
    skipped: dict[str, str] | None = Field(None, description="metrics not measured for these jobs, with the reason")
    test: ReportedRows | None = Field(None, description="present when the jobs have test rows")
    data: list[LeaderboardRow]
