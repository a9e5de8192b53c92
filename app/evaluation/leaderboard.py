"""A leaderboard over jobs: every metric recomputed from the stored evaluation rows, the cost of each job,
and paired bootstrap intervals against the leader, so candidates the data cannot tell apart are tied and
the cheapest of those wins."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.metrics import LOWER_IS_BETTER, METRIC_NAMES
from app.core.tables import Evaluation, EvaluationRow, Job
from app.evaluation import stats
from app.evaluation.schemas import Cost, Interval, Leaderboard, LeaderboardRow, ReportedRows, VersusLeader
from app.evaluation.splits import TEST, VALIDATION, test_independence


@dataclass
class _Entry:
    row: LeaderboardRow
    scores: list[dict | None] = field(default_factory=list)  # per evaluation row, in row_index order
    signature: str | None = None  # which rows these are: only rows with equal signatures are paired
    created_at: object = None
    test_scores: list[dict | None] = field(default_factory=list)  # per test row: reported, never ranked on
    test_stored: dict = field(default_factory=dict)


def add_test_figures(e: _Entry, metric: str, samples: int) -> None:
    """The entry's test-row figures beside its validation ones: the value with its interval, every metric, and the
    drop from validation to test (the optimism of having chosen on the validation rows)."""
    if not e.test_scores:
        return
    e.row.test_metrics = _metrics_from_rows(e.test_scores, e.test_stored)
    e.row.test_num_rows = len(e.test_scores)
    e.row.test_value = e.row.test_metrics.get(metric)
    ci = stats.interval(metric, stats.columns(metric, e.test_scores), samples=samples)
    if ci is not None:
        e.row.test_value_ci = Interval(low=ci[0], high=ci[1])
    if e.row.value is not None and e.row.test_value is not None:
        e.row.validation_to_test = e.row.test_value - e.row.value


def resolve_metric(metric: str, evaluations: list[Evaluation]) -> str:
    """auto = preference_accuracy for preference tuning jobs, rougeL when the jobs were scored on generations,
    eval_loss when only on text (raw-text data)."""
    if metric != "auto":
        return metric
    if any("preference_accuracy" in e.metrics for e in evaluations):
        return "preference_accuracy"
    if (
        evaluations
        and not any("rougeL" in e.metrics for e in evaluations)
        and any("eval_loss" in e.metrics for e in evaluations)
    ):
        return "eval_loss"
    return "rougeL"


def _signature(rows: list[EvaluationRow]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r.row_index}\x00{r.prompt}\x00{r.reference}\x01".encode())
    return digest.hexdigest()


def _metrics_from_rows(scores: list[dict | None], stored: dict) -> dict[str, float]:
    """Every metric recomputed from the rows; a stored aggregate only where rows do not have it."""
    out: dict[str, float] = {}
    for name in METRIC_NAMES:
        v = stats.value(name, stats.columns(name, scores)) if scores else None
        if v is None:
            v = stored.get(name)
        if v is not None:
            out[name] = v
    return out


def _cost(job: Job) -> Cost:
    tps = None
    if job.trained_tokens and job.train_seconds:
        tps = job.trained_tokens / job.train_seconds
    share = job.trainable_params / job.total_params if job.trainable_params and job.total_params else None
    return Cost(
        trainable_params=job.trainable_params,
        trainable_share=share,
        train_seconds=job.train_seconds,
        tokens_per_second=tps,
        peak_memory_bytes=job.peak_memory_bytes,
        trained_tokens=job.trained_tokens,
    )


def cost_key(row: LeaderboardRow) -> tuple[float, float]:
    """Cheaper first: fewer trainable parameters (a smaller artifact to store and serve), then less training."""
    cost = row.cost
    inf = float("inf")
    if cost is None:
        return inf, inf
    return float(cost.trainable_params if cost.trainable_params is not None else inf), float(
        cost.train_seconds if cost.train_seconds is not None else inf
    )


def candidate_name(job: Job) -> str:
    name = (job.metadata_ or {}).get("sweep_candidate")
    if name:
        return name
    adapter = job.spec["adapter"]
    if adapter["type"] in ("lora", "qlora"):
        return f"{adapter['type']} r={adapter['r']}"
    if adapter["type"] == "prompt_tuning":
        return f"prompt_tuning {adapter['num_virtual_tokens']} tokens"
    return adapter["type"]


def build_leaderboard(
    session: Session,
    jobs: list[Job],
    metric: str,
    *,
    file_id: str,
    sweep_id: str | None = None,
    selected_job_id: str | None = None,
    samples: int = stats.BOOTSTRAP_SAMPLES,
) -> Leaderboard:
    ids = [j.id for j in jobs]
    # Ranked on the validation rows, which make every decision; the test rows' figures are shown beside them.
    all_evals = list(session.scalars(select(Evaluation).where(Evaluation.job_id.in_(ids))))
    evals = {(e.job_id, e.subject): e for e in all_evals if e.split == VALIDATION}
    test_evals = {(e.job_id, e.subject): e for e in all_evals if e.split == TEST}
    metric = resolve_metric(metric, list(evals.values()))
    rows_by_job: dict[str, list[EvaluationRow]] = {}
    test_rows_by_job: dict[str, list[EvaluationRow]] = {}
    for r in session.scalars(
        select(EvaluationRow)
        .where(EvaluationRow.job_id.in_(ids))
        .order_by(EvaluationRow.job_id, EvaluationRow.split, EvaluationRow.row_index)
    ):
        (rows_by_job if r.split == VALIDATION else test_rows_by_job).setdefault(r.job_id, []).append(r)

    entries: list[_Entry] = []
    skipped: dict[str, str] = {}
    base_seen: set[tuple[str, str | None, str | None]] = set()
    for job in jobs:
        ev_rows = rows_by_job.get(job.id, [])
        sig = _signature(ev_rows) if ev_rows else None
        tuned, base = evals.get((job.id, "tuned")), evals.get((job.id, "base"))
        for e in (tuned, base):
            if e is not None and e.details:
                skipped.update(e.details.get("skipped") or {})
        tuned_scores = [r.tuned_scores for r in ev_rows] if tuned is not None else []
        metrics = _metrics_from_rows(tuned_scores, tuned.metrics) if tuned is not None else {}
        test_rows, test_tuned = test_rows_by_job.get(job.id, []), test_evals.get((job.id, "tuned"))
        entries.append(
            _Entry(
                row=LeaderboardRow(
                    rank=0,
                    kind="fine-tuned",
                    job_id=job.id,
                    status=job.status,
                    name=candidate_name(job),
                    model=job.model,
                    fine_tuned_model=job.fine_tuned_model,
                    adapter_type=job.spec["adapter"]["type"],
                    selected=job.id == selected_job_id,
                    winner=False,
                    value=metrics.get(metric),
                    num_rows=tuned.num_rows if tuned is not None else None,
                    metrics=metrics,
                    cost=_cost(job),
                ),
                scores=tuned_scores,
                signature=sig,
                created_at=job.created_at,
                test_scores=[r.tuned_scores for r in test_rows] if test_tuned is not None else [],
                test_stored=test_tuned.metrics if test_tuned is not None else {},
            )
        )
        # One base row per base model and set of rows: the first job's measurement stands for the rest.
        # (the test rows too: jobs on the same validation rows may have been tested on different rows)
        base_key = (job.model, sig, _signature(test_rows) if test_rows else None)
        if base is not None and base_key not in base_seen:
            base_seen.add(base_key)
            base_scores = [r.base_scores for r in ev_rows]
            base_metrics = _metrics_from_rows(base_scores, base.metrics)
            entries.append(
                _Entry(
                    row=LeaderboardRow(
                        rank=0,
                        kind="base",
                        job_id=None,
                        status=None,
                        name=f"base {job.model.rsplit('/', 1)[-1]}",
                        model=job.model,
                        fine_tuned_model=None,
                        adapter_type=None,
                        selected=False,
                        winner=False,
                        value=base_metrics.get(metric),
                        num_rows=base.num_rows,
                        metrics=base_metrics,
                        cost=None,
                    ),
                    scores=base_scores,
                    signature=sig,
                    test_scores=[r.base_scores for r in test_rows] if (job.id, "base") in test_evals else [],
                    test_stored=test_evals[(job.id, "base")].metrics if (job.id, "base") in test_evals else {},
                )
            )

    lower = metric in LOWER_IS_BETTER
    tuned_entries = [e for e in entries if e.row.kind == "fine-tuned" and e.row.value is not None]
    # The leader: the best value; equal values go to the cheaper job.
    tuned_entries.sort(key=lambda e: ((e.row.value if lower else -e.row.value), cost_key(e.row)))
    leader = tuned_entries[0] if tuned_entries else None
    leader_cols = stats.columns(metric, leader.scores) if leader and leader.scores else None

    for e in entries:
        if e.row.value is None or not e.scores:
            continue
        cols = stats.columns(metric, e.scores)
        ci = stats.interval(metric, cols, samples=samples)
        if ci is not None:
            e.row.value_ci = Interval(low=ci[0], high=ci[1])
        if leader is None or leader_cols is None or e.signature != leader.signature:
            continue  # different rows: no paired comparison
        if e is leader:
            e.row.vs_leader = VersusLeader(diff=0.0, low=0.0, high=0.0, tied=True)
            continue
        d = stats.paired_difference(metric, cols, leader_cols, samples=samples)
        if d is not None:
            e.row.vs_leader = VersusLeader(diff=d.diff, low=d.low, high=d.high, tied=d.tied)

    for e in entries:
        add_test_figures(e, metric, samples)

    winner = None
    if leader is not None:
        tied = [
            e
            for e in tuned_entries
            if e is leader or (e.row.vs_leader is not None and e.row.vs_leader.tied and e.row.status == "succeeded")
        ]
        winner = min(tied, key=lambda e: (cost_key(e.row), e.created_at))
        winner.row.winner = True

    # Best first; rows without the metric (e.g. ROUGE on raw text, unfinished jobs) sink to the bottom.
    entries.sort(
        key=lambda e: (e.row.value is None, 0 if e.row.value is None else (e.row.value if lower else -e.row.value))
    )
    for i, e in enumerate(entries, 1):
        e.row.rank = i
    return Leaderboard(
        file_id=file_id,
        sweep_id=sweep_id,
        metric=metric,
        higher_is_better=not lower,
        confidence=stats.CONFIDENCE,
        bootstrap_samples=samples,
        leader_job_id=leader.row.job_id if leader else None,
        winner_job_id=winner.row.job_id if winner else None,
        selected_job_id=selected_job_id,
        skipped=skipped or None,
        test=_test_note(jobs, entries),
        data=[e.row for e in entries],
    )


def _test_note(jobs: list[Job], entries: list[_Entry]) -> ReportedRows | None:
    """Whether the board has test rows, and whether they are independent of the choice it makes."""
    if not any(e.test_scores for e in entries):
        return None
    reasons = {test_independence(j.training_file_id, j.validation_file_id, j.test_file_id) for j in jobs}
    reasons.discard(None)
    return ReportedRows(
        independent=not reasons,
        not_independent_because="; ".join(sorted(reasons)) or None,
        decided="the ranking, leader and winner come from the validation rows; the test rows decided nothing",
    )
