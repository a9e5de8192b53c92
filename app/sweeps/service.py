"""Sweeps: expand candidates into job requests, and, once every job has ended, name and select the winner."""

from __future__ import annotations

import itertools
import logging
import math
from copy import deepcopy
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.errors import ApiError, loc_to_param
from app.core.job_spec import JobCreate
from app.core.outbox import record_sweep_end
from app.core.tables import TERMINAL_STATUSES, Job, JobStatus, Selection, Sweep, SweepStatus, utcnow
from app.evaluation.leaderboard import build_leaderboard
from app.evaluation.schemas import Leaderboard
from app.sweeps.schemas import GRID_KEYS, MAX_CANDIDATES, SweepCreate

log = logging.getLogger("ftaas.sweeps")


def _merge(base: dict, over: dict) -> dict:
    out = deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is not None:
            out[key] = deepcopy(value)
    return out


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        target = target.setdefault(p, {})
    target[leaf] = value


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_candidates(body: SweepCreate) -> list[tuple[str, dict]]:
    """(name, candidate settings) for every candidate: the explicit list (or one empty candidate) x the grid."""
    grid = body.grid or {}
    for key, values in grid.items():
        if key != "model" and not (key.startswith(GRID_KEYS[1:]) and key.count(".") == 1 and not key.endswith(".")):
            raise ApiError(
                400,
                f"Grid key '{key}' is not one of model, adapter.<field>, training.<field>, hyperparameters.<field>, "
                "resources.<field>",
                param=f"grid.{key}",
            )
        if not values or len(values) > MAX_CANDIDATES:
            raise ApiError(400, f"Grid key '{key}' needs 1 to {MAX_CANDIDATES} values", param=f"grid.{key}")
    explicit = body.candidates or [None]
    # counted before anything is built: 5 keys of 64 values would be a billion combinations (issue 14)
    count = len(explicit) * math.prod(len(values) for values in grid.values())
    if count > MAX_CANDIDATES:
        raise ApiError(
            400,
            f"This sweep has {count} candidates; at most {MAX_CANDIDATES} are allowed",
            param="grid" if grid else "candidates",
        )
    combos = list(itertools.product(*grid.values())) if grid else [()]
    base = body.base.model_dump(exclude_none=True, exclude={"name"})
    out: list[tuple[str, dict]] = []
    for i, cand in enumerate(explicit):
        settings = _merge(base, cand.model_dump(exclude_none=True, exclude={"name"}) if cand else {})
        for combo in combos:
            merged = deepcopy(settings)
            for key, value in zip(grid.keys(), combo):
                _set_dotted(merged, key, value)
            parts = [cand.name] if cand and cand.name else []
            parts += [f"{k.rsplit('.', 1)[-1]}={_label(v)}" for k, v in zip(grid.keys(), combo)]
            if not parts:
                parts = [f"candidate {i + 1}"]
            out.append((" ".join(parts), merged))
    names = [n for n, _ in out]
    for n in set(names):  # make labels unique: two identical candidates are allowed (e.g. seeds of noise)
        if names.count(n) > 1:
            k = 0
            for j, (name, s) in enumerate(out):
                if name == n:
                    k += 1
                    out[j] = (f"{n} #{k}", s)
    return out


def job_request(body: SweepCreate, index: int, name: str, candidate: dict, metric: str, seed: int) -> JobCreate:
    """The candidate as an ordinary job request; errors name the candidate, e.g. candidates[2].adapter.r."""
    payload: dict[str, Any] = {
        "model": candidate.get("model"),
        "training_file": body.training_file,
        "validation_file": body.validation_file,
        "test_file": body.test_file,
        "suffix": body.suffix,
        "seed": seed,
        "metadata": {"sweep_candidate": name[:512]},
        "adapter": candidate.get("adapter", {}),
        "training": {**candidate.get("training", {}), "test_split": body.test_split},
        "method": {"type": body.method, body.method: {"hyperparameters": candidate.get("hyperparameters", {})}},
        # One evaluation for all: the same rows, and each job ships its best checkpoint by the sweep's metric.
        "evaluation": {**body.evaluation.model_dump(), "selection_metric": metric},
        "resources": candidate.get("resources", {}),
    }
    if "test_split" in candidate.get("training", {}):
        raise ApiError(
            400,
            f"Candidate {index} ('{name}') sets training.test_split: the test rows are the sweep's, the same for "
            "every candidate; set the sweep's test_split",
            param=f"candidates[{index}].training.test_split",
        )
    if payload["model"] is None:
        raise ApiError(
            400,
            f"Candidate {index} ('{name}') names no model: set base.model or its own model",
            param=f"candidates[{index}].model",
        )
    try:
        return JobCreate.model_validate(payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        # the job request's path, in the sweep's own words: hyperparameters sit directly on a candidate
        field = loc_to_param(tuple(err["loc"])).removeprefix(f"method.{body.method}.")
        raise ApiError(
            400,
            f"Candidate {index} ('{name}'): {field}: {err['msg']}",
            param=f"candidates[{index}].{field}",
            code="invalid_value",
        ) from exc


def select_job(session: Session, job: Job) -> Selection:
    """Make `job` the chosen model of its training file (what POST /v1/fine_tuning/jobs/{id}/select does)."""
    row = session.get(Selection, job.training_file_id)
    if row is None:
        row = Selection(file_id=job.training_file_id, tenant_id=job.tenant_id, job_id=job.id)
        session.add(row)
    else:
        row.job_id, row.created_at = job.id, utcnow()
    return row


def sweep_jobs(session: Session, sweep_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.created_at, Job.id)))


def sweep_board(session: Session, sweep: Sweep, metric: str | None = None) -> Leaderboard:
    """The sweep's leaderboard by `metric` (default: its selection metric), with the file's selection."""
    selection = session.get(Selection, sweep.training_file_id)
    return build_leaderboard(
        session,
        sweep_jobs(session, sweep.id),
        metric or sweep.selection_metric,
        file_id=sweep.training_file_id,
        sweep_id=sweep.id,
        selected_job_id=selection.job_id if selection else None,
    )


def finalize_if_done(session: Session, sweep_id: str) -> bool:
    """When every candidate has ended: rank them, record the winner and select it. Runs once per sweep
    (the status flip is a conditional update), so two jobs finishing together cannot both decide. Commits."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.finished_at is not None:
        return False
    jobs = sweep_jobs(session, sweep_id)
    if any(j.status not in TERMINAL_STATUSES for j in jobs):
        return False
    board = build_leaderboard(session, jobs, sweep.selection_metric, file_id=sweep.training_file_id, sweep_id=sweep.id)
    winner = next((j for j in jobs if j.id == board.winner_job_id), None)
    if sweep.status == SweepStatus.cancelled:
        status, winner = SweepStatus.cancelled, None
    elif winner is not None:
        status = SweepStatus.succeeded
    else:
        status = SweepStatus.failed
    result = _result(board, winner, jobs)
    flipped = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.finished_at.is_(None))
        .values(status=status, winner_job_id=winner.id if winner else None, result=result, finished_at=utcnow())
    ).rowcount
    if not flipped:
        session.rollback()
        return False
    if winner is not None:
        select_job(session, winner)
    record_sweep_end(session, sweep, status, winner.id if winner else None)  # webhooks, committed with the end
    session.commit()
    log.info("sweep %s finished: %s, winner %s", sweep_id, status, winner.id if winner else None)
    return True


def _result(board, winner: Job | None, jobs: list[Job]) -> dict:
    by_job = {r.job_id: r for r in board.data if r.job_id}
    if winner is None:
        failed = sum(1 for j in jobs if j.status == JobStatus.failed)
        return {
            "reason": f"no candidate succeeded ({failed} failed)" if jobs else "no candidates",
            "metric": board.metric,
        }
    row = by_job[winner.id]
    tied = [r.job_id for r in board.data if r.job_id and r.job_id != winner.id and r.vs_leader and r.vs_leader.tied]
    if winner.id == board.leader_job_id:
        reason = f"best {board.metric} ({row.value:.4f})"
    else:
        leader = by_job[board.leader_job_id]
        reason = (
            f"tied with the leader {leader.name} ({board.metric} {leader.value:.4f} vs {row.value:.4f}, "
            f"{int(board.confidence * 100)}% interval of the difference holds 0) and cheaper"
        )
    if tied and winner.id == board.leader_job_id:
        reason += f"; tied with {len(tied)} other candidate(s), and the cheapest of them"
    result = {
        "metric": board.metric,
        "winner_job_id": winner.id,
        "winner_name": row.name,
        "value": row.value,
        "leader_job_id": board.leader_job_id,
        "tied_job_ids": tied,
        "reason": reason,
        "decided_on": "validation",
    }
    if board.test is not None:
        result["test"] = _test_report(board, row)
    return result


def _test_report(board, winner_row) -> dict:
    """The winner's result on the rows no decision saw, with its interval, and every candidate's drop from its
    validation figure to its test figure: the winner's drop is the price of having chosen it on those rows."""
    ci = winner_row.test_value_ci
    return {
        "independent": board.test.independent,
        "not_independent_because": board.test.not_independent_because,
        "winner": {
            "value": winner_row.test_value,
            "interval": [ci.low, ci.high] if ci else None,
            "confidence": board.confidence,
            "num_rows": winner_row.test_num_rows,
            "validation_to_test": winner_row.validation_to_test,
        },
        "candidates": [
            {
                "name": r.name,
                "job_id": r.job_id,
                "validation": r.value,
                "test": r.test_value,
                "validation_to_test": r.validation_to_test,
            }
            for r in board.data
            if r.kind == "fine-tuned"
        ],
    }


def finalize_open_sweeps(session: Session) -> int:
    """The reconciler's pass: finish sweeps whose last job ended while nobody was looking (a crash)."""
    open_ids = list(session.scalars(select(Sweep.id).where(Sweep.finished_at.is_(None))))
    return sum(1 for sid in open_ids if finalize_if_done(session, sid))


def finalize_quietly(session: Session, sweep_id: str | None) -> None:
    """After a job ends: a failure here must not fail the job; the reconciler tries again later."""
    if not sweep_id:
        return
    try:
        finalize_if_done(session, sweep_id)
    except Exception:  # noqa: BLE001
        session.rollback()
        log.warning("finalizing sweep %s failed; the reconciler will retry", sweep_id, exc_info=True)
