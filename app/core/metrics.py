"""The metric registry: every metric's name, display order and direction, the rule behind `auto`, and the cap
on perplexity. One place for the API (validation, leaderboard, evaluation view) and the worker (evaluation,
checkpoint selection, model card)."""

from __future__ import annotations

import math
from typing import Literal, get_args

from app.core.graders import GRADER_NAMES, GraderName

ROUGE_NAMES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BERTSCORE_NAMES = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
# Measured by teacher forcing on the reference tokens: no generation needed, so raw text has them too.
TOKEN_WEIGHTED = frozenset({"eval_loss", "perplexity", "token_accuracy"})
# Preference tuning (DPO) jobs, on their held-out pairs, always: the share of pairs whose chosen answer the model
# gives the higher log-probability, and the mean implicit reward margin against the frozen base (0 for the base).
PREFERENCE_NAMES = ("preference_accuracy", "reward_margin")
# Display order of every stored metric; the task graders' (app/core/graders.py) first: they say "is it right".
METRIC_NAMES = (
    GRADER_NAMES + PREFERENCE_NAMES + ROUGE_NAMES + BERTSCORE_NAMES + ("perplexity", "token_accuracy", "eval_loss")
)
LOWER_IS_BETTER = frozenset({"eval_loss", "perplexity"})

# What a job's evaluation.metrics may ask for: each family produces the names above.
EvaluationFamily = Literal["rouge", "bertscore", "perplexity", "token_accuracy"]
EVALUATION_FAMILIES: tuple[str, ...] = get_args(EvaluationFamily)

# What a leaderboard or a sweep ranks by, and what picks a job's shipped checkpoint ("last": the final weights).
RankMetric = Literal[
    "auto",
    GraderName,  # a nested Literal: its names, in one place (app/core/graders.py)
    "preference_accuracy",
    "reward_margin",
    "rougeL",
    "rouge1",
    "rouge2",
    "rougeLsum",
    "bertscore_precision",
    "bertscore_recall",
    "bertscore_f1",
    "eval_loss",
    "perplexity",
    "token_accuracy",
]
SelectionMetric = Literal[
    "auto",
    "last",
    GraderName,  # a nested Literal: its names, in one place (app/core/graders.py)
    "preference_accuracy",
    "reward_margin",
    "rougeL",
    "rouge1",
    "rouge2",
    "rougeLsum",
    "bertscore_f1",
    "eval_loss",
    "perplexity",
    "token_accuracy",
]

# exp() of an untrained model's loss can overflow: perplexity is exp(min(loss, cap)), everywhere.
PERPLEXITY_LOSS_CAP = 50.0


def perplexity(loss: float) -> float:
    return math.exp(min(loss, PERPLEXITY_LOSS_CAP))


def auto_metric(generates: bool, preference: bool = False) -> str:
    """What `auto` means: preference_accuracy for preference tuning, rougeL where the rows have completions to
    generate and score, eval_loss for raw text."""
    if preference:
        return "preference_accuracy"
    return "rougeL" if generates else "eval_loss"


def needs_generation(metric: str) -> bool:
    return metric not in TOKEN_WEIGHTED and metric not in PREFERENCE_NAMES


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def selection_for(evaluation: dict, has_generation_rows: bool, preference: bool = False) -> tuple[str, bool] | None:
    """(metric, higher_is_better) that picks a job's shipped checkpoint, or None to ship the final weights.
    preference: a preference tuning job, whose held-out pairs have the preference metrics."""
    metric = evaluation.get("selection_metric", "auto")
    if metric == "last":
        return None
    if metric == "auto":
        metric = auto_metric(has_generation_rows and "rouge" in evaluation["metrics"], preference)
    elif not has_generation_rows and needs_generation(metric):
        metric = auto_metric(False)  # raw text has no completions to generate; fall back to the loss
    elif metric in PREFERENCE_NAMES and not preference:
        metric = auto_metric(has_generation_rows and "rouge" in evaluation["metrics"])  # (the API refuses this)
    return metric, higher_is_better(metric)


def family_of(metric: str) -> str:
    """The evaluation.metrics entry that produces `metric` (rougeL -> rouge)."""
    for family in ("rouge", "bertscore"):
        if metric.startswith(family):
            return family
    return metric


def metrics_for_selection(selection: tuple[str, bool] | None) -> set[str]:
    """The evaluation.metrics entries that produce the selection metric (eval_loss, a preference job's preference
    metrics and the requested graders are always measured)."""
    if selection is None or selection[0] in ("eval_loss", *PREFERENCE_NAMES, *GRADER_NAMES):
        return set()
    return {family_of(selection[0])}
