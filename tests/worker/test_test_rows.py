"""Test rows and graders through the training child on the tiny real model: the test split is carved off first and
is disjoint from the rows trained on and the rows that decide; base and tuned are measured on it and stored beside
the validation rows; a text-to-SQL set of this test's own making is graded by sql_valid and sql_execution."""

from __future__ import annotations

import tarfile

from app.core.settings import get_settings
from app.core.tables import JobEvent
from tests.helpers.child import run_job, sql_rows, stored
from tests.helpers.sql_rows import text_to_sql_rows


def short_body(**evaluation) -> dict:
    return {
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 16}}},
        "adapter": {"type": "lora", "r": 4},
        "training": {"learning_rate": 5e-3, "test_split": 0.2},
        "evaluation": {"metrics": ["rouge", "perplexity"], "max_rows": 50, "max_new_tokens": 24, **evaluation},
    }


def test_test_rows_are_carved_first_and_only_reported(database):
    rows = sql_rows("train.jsonl", 40)
    job_id = run_job(short_body(graders=[{"type": "exact_match"}]), rows, None, "\nA: ")
    job, evals, val_rows, _, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    _, test_evals, test_rows, _, _ = stored(job_id, "test")
    # 40 rows: 8 test rows carved first, then 10% of the 32 left held out for validation
    assert job.data_summary == {
        "training_rows": 29,
        "validation_rows": 3,
        "test_rows": 8,
        "rows_cut": 0,
        "rows_dropped": 0,
    }
    assert len(test_rows) == 8 and len(val_rows) == 3
    prompts = [r["text"].rsplit("\nA: ", 1)[0] + "\nA: " for r in rows]
    test_prompts, val_prompts = {r.prompt for r in test_rows}, {r.prompt for r in val_rows}
    assert not test_prompts & val_prompts
    assert test_prompts <= set(prompts) and val_prompts <= set(prompts)
    for subject in ("base", "tuned"):
        metrics = test_evals[subject].metrics
        assert {"exact_match", "rougeL", "eval_loss", "perplexity"} <= set(metrics)
        assert evals[subject].metrics.keys() == metrics.keys()
    assert all(r.tuned_scores and "exact_match" in r.tuned_scores for r in test_rows)
    # the events of the checkpoint evaluations carry validation figures only; the end's carry both
    tuned_event = next(e for e in _events(job_id) if e.message == "Fine-tuned model evaluated")
    assert tuned_event.data["test"]["exact_match"] == test_evals["tuned"].metrics["exact_match"]
    assert any("8 test rows" in m for m in events)
    # the shipped adapter's card reports the test rows in a section of their own
    with tarfile.open(get_settings().artifacts_dir / "jobs" / job.adapter_name) as tar:
        card = tar.extractfile("adapter/README.md").read().decode()
    assert "## Test rows (no decision saw them" in card and "split: test" in card


def _events(job_id: str) -> list[JobEvent]:
    from sqlalchemy import select

    from app.core.db import get_sessionmaker

    with get_sessionmaker()() as s:
        rows = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
        s.expunge_all()
    return rows


def test_a_text_to_sql_job_is_graded_by_running_its_sql(database):
    body = short_body(graders=[{"type": "sql_valid"}, {"type": "sql_execution"}], selection_metric="sql_valid")
    body["method"]["supervised"]["hyperparameters"] = {"n_epochs": 2, "batch_size": 8}
    body["training"] = {"learning_rate": 1e-2}
    rows = text_to_sql_rows(24)
    job_id = run_job(body, rows, text_to_sql_rows(12), None, test_rows=text_to_sql_rows(12))
    job, evals, val_rows, _, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    _, test_evals, test_rows, _, _ = stored(job_id, "test")
    for subject in ("base", "tuned"):
        for where in (evals, test_evals):
            metrics = where[subject].metrics
            assert 0.0 <= metrics["sql_valid"] <= 1.0 and 0.0 <= metrics["sql_execution"] <= 1.0
    # sql_execution scores only the rows with data (every other one); sql_valid every row
    for r in val_rows + test_rows:
        assert "sql_valid" in r.tuned_scores and "sql_valid" in r.base_scores
        assert ("sql_execution" in r.tuned_scores) == ("INSERT INTO" in r.prompt)
    assert "6 of 12 rows not scored" in evals["tuned"].details["skipped"]["sql_execution"]
