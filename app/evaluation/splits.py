"""A job's numbers per split: the validation rows, which made its decisions (the shipped checkpoint, early
stopping, a sweep's winner), and the test rows, which made none and are only reported. Both with bootstrap
intervals recomputed from the stored rows (app/evaluation/stats.py), and the test rows said to be independent of
the selection only when they are."""

from __future__ import annotations

from app.core.metrics import METRIC_NAMES
from app.core.tables import Evaluation, EvaluationRow, Job
from app.evaluation import stats
from app.evaluation.schemas import Interval, SplitResult

VALIDATION, TEST = "validation", "test"


def test_independence(training_file: str, validation_file: str | None, test_file: str | None) -> str | None:
    """None when the test rows are independent of every decision; otherwise why they are not."""
    if test_file is None:
        return None
    if test_file == validation_file:
        return (
            "the test file is the validation file: the rows that chose the checkpoint (and a sweep's winner) are the "
            "rows reported, so these numbers are biased upward like the validation numbers"
        )
    if test_file == training_file:
        return "the test file is the training file: the model was trained on these rows"
    return None


def decided_by(job: Job, split: str) -> str:
    """What the split's rows decided, in words."""
    if split == TEST:
        return "nothing: only reported (never trained on, never used to pick a checkpoint or a winner)"
    metric = job.spec["evaluation"].get("selection_metric", "auto")
    what = "the final weights shipped" if metric == "last" else f"the shipped checkpoint (selection_metric {metric})"
    if job.spec["evaluation"].get("early_stopping_patience"):
        what += ", early stopping"
    if job.sweep_id:
        what += ", the sweep's winner"
    return what


def intervals(scores: list[dict | None]) -> dict[str, Interval]:
    """Bootstrap interval of every metric the rows have."""
    out = {}
    for name in METRIC_NAMES:
        ci = stats.interval(name, stats.columns(name, scores)) if scores else None
        if ci is not None:
            out[name] = Interval(low=ci[0], high=ci[1])
    return out


def paired_intervals(tuned: list[dict | None], base: list[dict | None]) -> dict[str, Interval]:
    """Paired bootstrap interval of tuned minus base for every metric both have, on the same rows."""
    out = {}
    for name in METRIC_NAMES:
        d = stats.paired_difference(name, stats.columns(name, tuned), stats.columns(name, base)) if tuned else None
        if d is not None:
            out[name] = Interval(low=d.low, high=d.high)
    return out


def split_result(
    job: Job, split: str, evals: dict[tuple[str, str], Evaluation], rows: list[EvaluationRow]
) -> SplitResult | None:
    """The split's base and tuned metrics, the difference, and their intervals; None when nothing was measured."""
    base, tuned = evals.get(("base", split)), evals.get(("tuned", split))
    if base is None and tuned is None:
        return None
    base_scores = [r.base_scores for r in rows] if base else []
    tuned_scores = [r.tuned_scores for r in rows] if tuned else []
    delta = None
    if base and tuned:
        delta = {k: tuned.metrics[k] - base.metrics[k] for k in tuned.metrics if k in base.metrics}
    why_not = test_independence(job.training_file_id, job.validation_file_id, job.test_file_id)
    skipped = {}
    for e in (base, tuned):
        if e is not None and e.details:
            skipped.update(e.details.get("skipped") or {})
    return SplitResult(
        split=split,
        num_rows=(tuned or base).num_rows,
        decided=decided_by(job, split),
        independent=split == TEST and why_not is None,
        not_independent_because=why_not if split == TEST else None,
        base=base.metrics if base else None,
        tuned=tuned.metrics if tuned else None,
        delta=delta,
        base_ci=intervals(base_scores) or None,
        tuned_ci=intervals(tuned_scores) or None,
        delta_ci=paired_intervals(tuned_scores, base_scores) if base and tuned else None,
        skipped=skipped or None,
    )
