"""Preference tuning (DPO) over HTTP: OpenAI's `method: {type: dpo}` accepted on preference rows and shown back in
OpenAI's shape, its defaults resolved, and every mismatch a 400 that names its field with nothing stored."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.core.tables import Job
from tests.api.test_api_jobs import PC_JSONL, assert_error, create, create_ok, upload

PREFERENCE_JSONL = "".join(
    json.dumps(row) + "\n"
    for row in [
        {
            "input": {"messages": [{"role": "user", "content": "2+2="}]},
            "preferred_output": [{"role": "assistant", "content": "4"}],
            "non_preferred_output": [{"role": "assistant", "content": "5"}],
        },
        {"prompt": "3+3=", "chosen": "6", "rejected": "7"},
    ]
).encode()
DPO = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}}}


@pytest.fixture
def preference_file(client, auth) -> str:
    return upload(client, auth, PREFERENCE_JSONL, name="prefs.jsonl")


def job_count(db_session) -> int:
    return db_session.scalar(select(func.count()).select_from(Job))


def test_dpo_job_is_created_and_shown_in_openais_shape(client, auth, db_session, preference_file):
    job = create_ok(client, auth, preference_file, method=DPO)
    assert job["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0, "beta": 0.25}},
    }
    assert "beta" not in job["hyperparameters"]
    row = db_session.get(Job, job["id"])
    assert row.spec["method"] == "dpo"
    assert row.spec["training"]["learning_rate"] == pytest.approx(2e-5)  # a tenth of LoRA's supervised rate
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()["method"] == job["method"]


def test_dpo_defaults(client, auth, db_session, preference_file):
    job = create_ok(client, auth, preference_file, method={"type": "dpo"}, adapter={"type": "full"})
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.1
    assert db_session.get(Job, job["id"]).spec["training"]["learning_rate"] == pytest.approx(2e-6)
    supervised = create_ok(client, auth, upload(client, auth))
    assert (
        supervised["method"]["type"] == "supervised"
        and "beta" not in supervised["method"]["supervised"]["hyperparameters"]
    )


def test_dpo_on_a_file_without_preference_rows_is_400_naming_training_file(client, auth, db_session):
    before = job_count(db_session)
    error = assert_error(
        create(client, auth, upload(client, auth, PC_JSONL), method=DPO),
        400,
        param="training_file",
        code="invalid_training_file",
    )
    assert "preference" in error["message"]
    assert job_count(db_session) == before


def test_supervised_on_preference_rows_is_400_naming_training_file(client, auth, db_session, preference_file):
    before = job_count(db_session)
    error = assert_error(
        create(client, auth, preference_file), 400, param="training_file", code="invalid_training_file"
    )
    assert "dpo" in error["message"]
    assert job_count(db_session) == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, "method.dpo.hyperparameters.beta"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}}, "method.dpo.hyperparameters.beta"),
        ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "dpo"}, "hyperparameters": {"n_epochs": 1}}, "hyperparameters"),
        ({"method": {"type": "dpo"}, "adapter": {"type": "prompt_tuning"}}, "adapter.type"),
    ],
)
def test_bad_dpo_settings_are_400_naming_the_field(client, auth, db_session, preference_file, body, param):
    before = job_count(db_session)
    assert_error(create(client, auth, preference_file, **body), 400, param=param)
    assert job_count(db_session) == before


def test_preference_metrics_rank_only_dpo_jobs(client, auth, db_session, preference_file):
    metric = {"selection_metric": "preference_accuracy"}
    assert_error(
        create(client, auth, upload(client, auth), evaluation=metric), 400, param="evaluation.selection_metric"
    )
    assert create_ok(client, auth, preference_file, method=DPO, evaluation=metric)["evaluation"]["selection_metric"]


def test_validation_file_must_hold_preference_rows_too(client, auth, preference_file):
    other = upload(client, auth, PC_JSONL)
    assert_error(create(client, auth, preference_file, method=DPO, validation_file=other), 400, param="validation_file")


def test_a_dpo_sweep_makes_dpo_jobs(client, auth, db_session, preference_file):
    r = client.post(
        "/v1/sweeps",
        headers=auth,
        json={
            "training_file": preference_file,
            "method": "dpo",
            "base": {"model": "stories260k", "hyperparameters": {"n_epochs": 1}},
            "grid": {"hyperparameters.beta": [0.1, 0.5]},
        },
    )
    assert r.status_code == 200, r.text
    jobs = [db_session.get(Job, c["job_id"]) for c in r.json()["candidates"]]
    assert sorted(j.spec["hyperparameters"]["beta"] for j in jobs) == [0.1, 0.5]
    assert {j.spec["method"] for j in jobs} == {"dpo"}
    bad = client.post(
        "/v1/sweeps",
        headers=auth,
        json={"training_file": preference_file, "base": {"model": "stories260k"}, "candidates": [{}]},
    )
    assert_error(bad, 400, param="training_file")
