"""The leaderboard's numbers and its ties over HTTP: values recomputed from per-row scores, paired bootstrap
intervals, and the rule that among candidates the data cannot tell apart the cheaper one wins (the statistics
alone: tests/unit/test_stats.py).

Jobs are written to the database as a worker leaves them (per-row scores included), then read over HTTP."""

from __future__ import annotations

import math
import random

import pytest
from sqlalchemy import select

from app.core.tables import Evaluation, EvaluationRow
from tests.helpers.factories import N_ROWS, scored_job

# ------------------------------------------------------------------ over HTTP


def board(client, auth, file_id, **params):
    r = client.get(f"/v1/files/{file_id}/leaderboard", headers=auth, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def rows_by_job(body):
    return {row["job_id"]: row for row in body["data"] if row["job_id"]}


def test_two_identical_candidates_are_tied_and_the_cheaper_wins(client, auth, db_session, acme, train_file):
    scores = [0.3 + 0.4 * ((i * 37) % 11) / 10 for i in range(N_ROWS)]
    big = scored_job(db_session, acme, train_file, scores, trainable=50_000, seconds=5.0)
    small = scored_job(db_session, acme, train_file, list(scores), trainable=2_000, seconds=9.0)
    body = board(client, auth, train_file.id, metric="rougeL")
    rows = rows_by_job(body)
    assert rows[big.id]["value"] == rows[small.id]["value"]
    for job in (big, small):
        vs = rows[job.id]["vs_leader"]
        assert vs["tied"] is True and vs["low"] == vs["high"] == vs["diff"] == 0.0
    assert body["winner_job_id"] == small.id  # tied: fewer trainable parameters wins
    assert rows[small.id]["winner"] and not rows[big.id]["winner"]
    assert rows[small.id]["cost"]["trainable_params"] == 2_000
    assert rows[small.id]["cost"]["tokens_per_second"] == pytest.approx(5000 / 9.0)
    assert rows[small.id]["cost"]["trainable_share"] == pytest.approx(0.02)


def test_a_clearly_better_candidate_wins_even_when_dearer(client, auth, db_session, acme, train_file):
    scores = [0.3 + 0.3 * ((i * 37) % 11) / 10 for i in range(N_ROWS)]
    cheap = scored_job(db_session, acme, train_file, scores, trainable=1_000)
    better = scored_job(db_session, acme, train_file, [s + 0.2 for s in scores], trainable=90_000, seconds=60.0)
    body = board(client, auth, train_file.id, metric="rougeL")
    rows = rows_by_job(body)
    assert body["leader_job_id"] == body["winner_job_id"] == better.id
    vs = rows[cheap.id]["vs_leader"]
    assert vs["tied"] is False and vs["high"] < 0 and vs["diff"] == pytest.approx(-0.2)
    assert [r["job_id"] for r in body["data"]][:2] == [better.id, cheap.id]
    base = next(r for r in body["data"] if r["kind"] == "base")
    assert base["rank"] == 3 and base["vs_leader"]["tied"] is False and base["value"] == pytest.approx(0.05)
    # ranked by a lower-is-better metric, the order and the winner hold too
    ppl = board(client, auth, train_file.id, metric="perplexity")
    assert ppl["higher_is_better"] is False and ppl["winner_job_id"] == better.id


def test_leaderboard_numbers_are_the_stored_rows_recomputed(client, auth, db_session, acme, train_file):
    rng = random.Random(5)
    scores = [rng.random() for _ in range(N_ROWS)]
    job = scored_job(db_session, acme, train_file, scores)
    row = rows_by_job(board(client, auth, train_file.id))[job.id]
    stored = db_session.scalars(select(EvaluationRow).where(EvaluationRow.job_id == job.id)).all()
    nll = sum(r.tuned_scores["nll"] for r in stored)
    tokens = sum(r.tuned_scores["loss_tokens"] for r in stored)
    assert row["metrics"]["rougeL"] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    assert row["metrics"]["eval_loss"] == pytest.approx(nll / tokens, abs=1e-12)
    assert row["metrics"]["perplexity"] == pytest.approx(math.exp(nll / tokens))
    assert row["value_ci"]["low"] < row["value"] < row["value_ci"]["high"]
    assert row["num_rows"] == N_ROWS


def test_jobs_on_different_rows_are_not_paired(client, auth, db_session, acme, train_file):
    a = scored_job(db_session, acme, train_file, [0.5] * N_ROWS)
    b = scored_job(db_session, acme, train_file, [0.4] * N_ROWS)
    for r in db_session.scalars(select(EvaluationRow).where(EvaluationRow.job_id == b.id)):
        r.prompt = "another prompt " + r.prompt
    db_session.commit()
    rows = rows_by_job(board(client, auth, train_file.id, metric="rougeL"))
    assert rows[a.id]["vs_leader"]["tied"] is True  # the leader itself
    assert rows[b.id]["vs_leader"] is None  # not comparable row by row, so never called tied
    assert rows[a.id]["winner"]


def test_raw_text_leaderboard_ranks_by_loss_and_says_why_rouge_is_missing(client, auth, db_session, acme, train_file):
    job = scored_job(db_session, acme, train_file, [0.5] * N_ROWS)
    ev = db_session.scalar(select(Evaluation).where(Evaluation.job_id == job.id, Evaluation.subject == "tuned"))
    reason = "raw-text dataset: there is no reference completion to generate against"
    ev.metrics = {k: v for k, v in ev.metrics.items() if k != "rougeL"}
    ev.details = {"skipped": {"rouge": reason}}
    db_session.query(Evaluation).filter(Evaluation.job_id == job.id, Evaluation.subject == "base").update(
        {"metrics": {"eval_loss": 4.0, "perplexity": math.exp(4.0)}}
    )
    for r in db_session.scalars(select(EvaluationRow).where(EvaluationRow.job_id == job.id)):
        r.tuned_scores = {k: v for k, v in r.tuned_scores.items() if k != "rougeL"}
        r.base_scores = {k: v for k, v in r.base_scores.items() if k != "rougeL"}
    db_session.commit()
    body = board(client, auth, train_file.id)
    assert body["metric"] == "eval_loss" and body["higher_is_better"] is False
    assert body["skipped"] == {"rouge": reason}
    assert "rougeL" not in rows_by_job(body)[job.id]["metrics"]  # absent, not zero
    rouge = board(client, auth, train_file.id, metric="rougeL")
    assert all(r["value"] is None for r in rouge["data"]) and rouge["winner_job_id"] is None
