"""Graders and test rows at the API: what a job or a sweep may ask for, each refusal a 400 naming the field before
anything is stored, what an upload records of its SQL schemas, and how test figures are shown beside validation
ones (the evaluation endpoint, the leaderboard, a finished sweep's report)."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from app.core.tables import File, Job, Sweep
from app.sweeps.service import finalize_if_done
from tests.helpers.factories import N_ROWS, scored_job
from tests.helpers.files import jsonl

JOBS, SWEEPS = "/v1/fine_tuning/jobs", "/v1/sweeps"
SCHEMA = "CREATE TABLE people (name TEXT, age INTEGER);"
SQL_ROWS = [
    {"prompt": f"{SCHEMA}\nINSERT INTO people VALUES ('Ada', 36);\nQ: How old is Ada?\nSQL: ", "completion": "x"},
    {"prompt": "Q: How many people?\nSQL: ", "completion": "SELECT count(*) FROM people", "schema": SCHEMA},
    {"prompt": f"```sql\n{SCHEMA}\n```\nQ: Names?\nSQL: ", "completion": "SELECT name FROM people"},
]


def upload(client, auth, rows: list[dict], name: str = "train.jsonl") -> str:
    r = client.post("/v1/files", headers=auth, files={"file": (name, jsonl(rows))}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create(client, auth, training_file: str, **body):
    return client.post(JOBS, headers=auth, json={"model": "stories260k", "training_file": training_file, **body})


def refused(response, param: str, *words: str) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error["message"]
    return error


def count(db_session, table) -> int:
    db_session.expire_all()
    return db_session.scalar(select(func.count()).select_from(table))


@pytest.fixture
def pc_file(client, auth) -> str:
    return upload(client, auth, [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(12)])


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("graders", "param", "words"),
    [
        ([{"type": "bleu"}], "evaluation.graders.0", ["bleu"]),
        ([{"type": "json_schema", "json_schema": {"type": "strin"}}], "evaluation.graders.0.json_schema", ["compile"]),
        ([{"type": "regex", "pattern": r"(\w+)\1"}], "evaluation.graders.0.pattern", ["RE2", "backreferences"]),
        ([{"type": "regex", "pattern": "(?<=x)y"}], "evaluation.graders.0.pattern", ["lookaround"]),
        ([{"type": "exact_match"}, {"type": "exact_match"}], "evaluation.graders", ["more than once"]),
    ],
)
def test_bad_graders_are_a_400_naming_the_field(client, auth, db_session, pc_file, graders, param, words):
    jobs = count(db_session, Job)
    refused(create(client, auth, pc_file, evaluation={"graders": graders}), param, *words)
    assert count(db_session, Job) == jobs


def test_selecting_by_a_grader_not_asked_for_is_refused(client, auth, pc_file):
    r = create(client, auth, pc_file, evaluation={"selection_metric": "exact_match"})
    refused(r, "evaluation.selection_metric", "exact_match", "evaluation.graders")
    ok = create(
        client, auth, pc_file, evaluation={"selection_metric": "exact_match", "graders": [{"type": "exact_match"}]}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["evaluation"]["graders"] == [{"type": "exact_match"}]


def test_graders_on_raw_text_are_refused(client, auth):
    text = upload(client, auth, [{"text": "Once upon a time."}, {"text": "The end."}])
    refused(create(client, auth, text, evaluation={"graders": [{"type": "exact_match"}]}), "evaluation.graders")


def test_sql_graders_need_a_schema_on_every_evaluated_row(client, auth, db_session, pc_file):
    sql_file = upload(client, auth, SQL_ROWS * 4)
    row = db_session.get(File, sql_file)
    assert (row.sql_schema_rows, row.first_line_without_sql_schema) == (12, None)
    no_schema = db_session.get(File, pc_file)
    assert (no_schema.sql_schema_rows, no_schema.first_line_without_sql_schema) == (0, 1)

    jobs = count(db_session, Job)
    for grader in ("sql_valid", "sql_execution"):
        r = create(client, auth, pc_file, evaluation={"graders": [{"type": "exact_match"}, {"type": grader}]})
        refused(r, "evaluation.graders.1", grader, "12 of the 12 rows", "line 1", "CREATE TABLE")
    # a validation file with a schema on every row does not help when the test rows come from the training file
    r = create(
        client,
        auth,
        pc_file,
        validation_file=sql_file,
        training={"test_split": 0.2},
        evaluation={"graders": [{"type": "sql_execution"}]},
    )
    refused(r, "evaluation.graders.0", pc_file)
    assert count(db_session, Job) == jobs
    # evaluated rows all from files with schemas: accepted
    ok = create(client, auth, pc_file, validation_file=sql_file, evaluation={"graders": [{"type": "sql_execution"}]})
    assert ok.status_code == 200, ok.text
    ok = create(
        client, auth, sql_file, evaluation={"graders": [{"type": "sql_valid"}], "selection_metric": "sql_valid"}
    )
    assert ok.status_code == 200, ok.text


def test_test_rows_come_from_one_place(client, auth, db_session, pc_file):
    other = upload(client, auth, [{"prompt": "9+9=", "completion": "18"}], name="test.jsonl")
    jobs = count(db_session, Job)
    refused(create(client, auth, pc_file, test_file=other, training={"test_split": 0.1}), "training.test_split")
    missing = create(client, auth, pc_file, test_file="file-nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "test_file"
    prefs = upload(client, auth, [{"prompt": "a", "chosen": "b", "rejected": "c"}], name="prefs.jsonl")
    refused(create(client, auth, pc_file, test_file=prefs), "test_file", "shape")
    assert count(db_session, Job) == jobs
    job = create(client, auth, pc_file, test_file=other)
    assert job.status_code == 200, job.text
    assert job.json()["test_file"] == other
    assert db_session.get(Job, job.json()["id"]).test_file_id == other
    split = create(client, auth, pc_file, training={"test_split": 0.25}).json()
    assert split["test_file"] is None and split["training"]["test_split"] == 0.25
    # a file a job still tests on cannot be deleted
    r = client.delete(f"/v1/files/{other}", headers=auth)
    assert r.status_code == 409, r.text


def test_a_sweep_refuses_a_grader_it_does_not_ask_for_and_a_candidate_test_split(client, auth, db_session, pc_file):
    sweeps = count(db_session, Sweep)
    base = {"training_file": pc_file, "base": {"model": "stories260k"}, "candidates": [{"adapter": {"r": 4}}]}
    r = client.post(SWEEPS, headers=auth, json={**base, "selection_metric": "json_valid"})
    refused(r, "selection_metric", "json_valid")
    r = client.post(SWEEPS, headers=auth, json={**base, "grid": {"training.test_split": [0.1, 0.2]}})
    refused(r, "candidates[0].training.test_split", "sweep's test_split")
    other = upload(client, auth, [{"prompt": "9+9=", "completion": "18"}], name="test.jsonl")
    refused(client.post(SWEEPS, headers=auth, json={**base, "test_file": other, "test_split": 0.1}), "test_split")
    r = client.post(SWEEPS, headers=auth, json={**base, "evaluation": {"graders": [{"type": "sql_valid"}]}})
    refused(r, "evaluation.graders.0", "CREATE TABLE")
    assert count(db_session, Sweep) == sweeps
    r = client.post(
        SWEEPS,
        headers=auth,
        json={
            **base,
            "test_split": 0.2,
            "selection_metric": "exact_match",
            "evaluation": {"graders": [{"type": "exact_match"}]},
        },
    )
    assert r.status_code == 200, r.text
    job = db_session.get(Job, r.json()["candidates"][0]["job_id"])
    assert job.spec["training"]["test_split"] == 0.2
    assert job.spec["evaluation"]["selection_metric"] == "exact_match"


# ------------------------------------------------------------------ test figures beside validation ones


def _scores(seed: int, shift: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, rng.random() * 0.6 + 0.2 + shift)) for _ in range(N_ROWS)]


def test_a_base_row_per_set_of_test_rows_too(client, auth, db_session, acme, train_file):
    # two jobs on the same validation rows, tested on different rows: each has its own base row and test figure
    scored_job(db_session, acme, train_file, _scores(10), test_rouge=_scores(11))
    scored_job(db_session, acme, train_file, _scores(10), test_rouge=_scores(12)[:30])
    board = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth).json()
    bases = [r for r in board["data"] if r["kind"] == "base"]
    assert sorted(r["test_num_rows"] for r in bases) == [30, N_ROWS]


def test_the_evaluation_shows_test_figures_with_intervals(client, auth, db_session, acme, train_file):
    job = scored_job(db_session, acme, train_file, _scores(1, 0.1), test_rouge=_scores(2), test_file_id=None)
    body = client.get(f"{JOBS}/{job.id}/evaluation", headers=auth).json()
    val, test = body["validation"], body["test"]
    assert body["tuned"] == val["tuned"] and body["num_rows"] == val["num_rows"] == N_ROWS
    assert val["independent"] is False and "shipped checkpoint" in val["decided"]
    assert test["independent"] is True and test["decided"].startswith("nothing")
    assert test["tuned"]["rougeL"] == pytest.approx(sum(_scores(2)) / N_ROWS)
    ci = test["tuned_ci"]["rougeL"]
    assert ci["low"] < test["tuned"]["rougeL"] < ci["high"]
    delta = test["delta_ci"]["rougeL"]
    assert delta["low"] < test["delta"]["rougeL"] < delta["high"]
    assert all(s["index"] < N_ROWS for s in body["samples"])  # the samples are the validation rows


def test_test_rows_that_are_the_validation_file_are_marked_not_independent(client, auth, db_session, acme, train_file):
    from tests.helpers.factories import make_file_row

    shared = make_file_row(db_session, acme)
    job = scored_job(
        db_session,
        acme,
        train_file,
        _scores(3),
        test_rouge=_scores(3),
        validation_file_id=shared.id,
        test_file_id=shared.id,
    )
    test = client.get(f"{JOBS}/{job.id}/evaluation", headers=auth).json()["test"]
    assert test["independent"] is False and "validation file" in test["not_independent_because"]
    board = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth).json()
    assert board["test"]["independent"] is False


def test_the_leaderboard_ranks_on_validation_and_shows_the_test_drop(client, auth, db_session, acme, train_file):
    # the validation leader is lucky on its rows: its test figure drops, the other's holds
    lucky = scored_job(db_session, acme, train_file, _scores(4, 0.3), test_rouge=_scores(5), trainable=9_000)
    steady = scored_job(db_session, acme, train_file, _scores(4), test_rouge=_scores(6), trainable=8_000)
    board = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth, params={"metric": "rougeL"}).json()
    rows = {r["job_id"]: r for r in board["data"] if r["job_id"]}
    assert board["leader_job_id"] == lucky.id  # decided on validation rows only
    assert board["test"]["independent"] is True
    assert rows[lucky.id]["validation_to_test"] == pytest.approx(rows[lucky.id]["test_value"] - rows[lucky.id]["value"])
    assert rows[lucky.id]["validation_to_test"] < -0.2
    assert abs(rows[steady.id]["validation_to_test"]) < 0.1
    ci = rows[lucky.id]["test_value_ci"]
    assert ci["low"] < rows[lucky.id]["test_value"] < ci["high"]
    base = next(r for r in board["data"] if r["kind"] == "base")
    assert base["test_value"] == pytest.approx(0.05)


def test_a_finished_sweep_reports_the_winners_test_result(client, auth, db_session, acme, train_file):
    sweep = Sweep(
        tenant_id=acme.id, training_file_id=train_file.id, selection_metric="rougeL", seed=1, spec={}, status="running"
    )
    db_session.add(sweep)
    db_session.commit()
    a = scored_job(db_session, acme, train_file, _scores(7, 0.2), test_rouge=_scores(8, 0.1), sweep_id=sweep.id)
    b = scored_job(db_session, acme, train_file, _scores(7), test_rouge=_scores(9), sweep_id=sweep.id)
    assert finalize_if_done(db_session, sweep.id)
    body = client.get(f"{SWEEPS}/{sweep.id}", headers=auth).json()
    result = body["result"]
    assert result["winner_job_id"] == a.id and result["decided_on"] == "validation"
    test = result["test"]
    assert test["independent"] is True
    assert test["winner"]["value"] == pytest.approx(sum(_scores(8, 0.1)) / N_ROWS)
    low, high = test["winner"]["interval"]
    assert low < test["winner"]["value"] < high
    drops = {c["job_id"]: c["validation_to_test"] for c in test["candidates"]}
    assert set(drops) == {a.id, b.id}
    assert drops[a.id] == pytest.approx(test["winner"]["value"] - result["value"])
    # the sweep's page shows the test columns beside the validation ones
    page = client.get(f"{SWEEPS}/{sweep.id}/page", headers=auth)
    assert page.status_code == 200 and "validation→test" in page.text and "no decision saw" in page.text
    assert f"{drops[a.id]:+.4f}" in page.text
