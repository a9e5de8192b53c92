"""/v1/fine_tuning/jobs and /v1/models over HTTP: creation and its validation, the OpenAI job shape,
listing, cancellation, events, checkpoints, and tenant isolation."""

from __future__ import annotations

import json

import pytest
import redis
from sqlalchemy import func, select

from app.core.tables import Job, JobEvent, JobStatus, Tenant, utcnow
from tests.conftest import REDIS_URL, TEST_ENV

JOBS = "/v1/fine_tuning/jobs"
PC_JSONL = b'{"prompt": "2+2=", "completion": "4"}\n{"prompt": "3+3=", "completion": "6"}\n'
TEXT_JSONL = b'{"text": "Once upon a time."}\n'


def upload(client, headers, content: bytes = PC_JSONL, name: str = "train.jsonl") -> str:
    r = client.post("/v1/files", headers=headers, files={"file": (name, content)}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def create(client, headers, training_file: str, **body):
    return client.post(JOBS, headers=headers, json={"model": "stories260k", "training_file": training_file, **body})


def create_ok(client, headers, training_file: str, **body) -> dict:
    r = create(client, headers, training_file, **body)
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(response, status: int, *, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def job_count(db_session) -> int:
    return db_session.scalar(select(func.count()).select_from(Job))


@pytest.fixture
def training_file(client, auth) -> str:
    return upload(client, auth)


# ------------------------------------------------------------------ create


def test_create_returns_openai_job_shape(client, auth, db_session, training_file):
    validation_file = upload(client, auth, name="valid.jsonl")
    job = create_ok(
        client,
        auth,
        training_file,
        validation_file=validation_file,
        seed=42,
        suffix="sql-v1",
        metadata={"team": "data", "ticket": "FT-7"},
    )
    assert job["object"] == "fine_tuning.job"
    assert job["id"].startswith("ftjob-")
    assert job["status"] == "queued"
    assert isinstance(job["created_at"], int) and job["created_at"] > 0
    assert job["finished_at"] is None
    assert job["model"] == "stories260k"
    assert job["fine_tuned_model"] is None
    assert job["training_file"] == training_file
    assert job["validation_file"] == validation_file
    assert job["seed"] == 42
    assert job["suffix"] == "sql-v1"
    assert job["metadata"] == {"team": "data", "ticket": "FT-7"}
    assert job["error"] is None
    assert job["result_files"] == [] and job["integrations"] == []
    resolved = {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert job["hyperparameters"] == resolved
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": resolved}}
    assert job["adapter"]["type"] == "lora"
    assert job["adapter"]["r"] == 8 and job["adapter"]["alpha"] == 16
    assert job["training"]["learning_rate"] == pytest.approx(2e-4)
    assert job["training"]["micro_batch_size"] == 8
    assert job["progress"]["step"] == 0 and job["attempt"] == 0

    tenant = db_session.scalar(select(Tenant).where(Tenant.name == "acme"))
    row = db_session.get(Job, job["id"])
    assert row.tenant_id == tenant.id == job["organization_id"]
    assert row.status == JobStatus.queued
    assert row.model_source.endswith("stories260k")
    assert row.spec["hyperparameters"] == {**resolved, "beta": None}  # beta: preference tuning only
    assert row.spec["method"] == "supervised"
    messages = db_session.scalars(select(JobEvent.message).where(JobEvent.job_id == job["id"])).all()
    assert len(messages) == 1
    assert messages[0].startswith(f"Created fine-tuning job {job['id']}")

    assert client.get(f"{JOBS}/{job['id']}", headers=auth).json() == job


def test_create_without_seed_draws_one(client, auth, training_file):
    job = create_ok(client, auth, training_file)
    assert isinstance(job["seed"], int) and 0 <= job["seed"] < 2**31
    assert job["metadata"] is None and job["validation_file"] is None


def test_create_enqueues_the_job_id_after_commit(client, auth, training_file):
    job = create_ok(client, auth, training_file)
    queue = redis.Redis.from_url(REDIS_URL).lrange(TEST_ENV["FTAAS_QUEUE_NAME"], 0, -1)
    headers = [json.loads(m)["headers"] for m in queue]
    mine = [h for h in headers if job["id"] in h.get("argsrepr", "")]
    assert len(mine) == 1
    assert mine[0]["task"] == "ftaas.train"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"adapter": {"type": "qlora", "r": 16}},
            {"adapter.alpha": 32, "training.learning_rate": 2e-4, "adapter.compute_dtype": "bfloat16"},
        ),
        (
            {"adapter": {"type": "qlora", "r": 4, "alpha": 8, "compute_dtype": "float16"}},
            {"adapter.alpha": 8, "adapter.compute_dtype": "float16"},
        ),
        ({"adapter": {"type": "prompt_tuning"}}, {"training.learning_rate": 3e-2, "adapter.num_virtual_tokens": 20}),
        (
            {
                "adapter": {"type": "prompt_tuning", "num_virtual_tokens": 8},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 0.5}}},
            },
            {"training.learning_rate": 1.5e-2, "hyperparameters.learning_rate_multiplier": 0.5},
        ),
        (
            {"method": {"supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}}},
            {"hyperparameters.n_epochs": 2, "hyperparameters.batch_size": 8, "training.micro_batch_size": 8},
        ),
        (
            {"hyperparameters": {"batch_size": 4}},  # OpenAI's deprecated top-level location
            {"hyperparameters.batch_size": 4, "training.micro_batch_size": 4},
        ),
        (
            {"training": {"learning_rate": 1e-3, "micro_batch_size": 2}},
            {"training.learning_rate": 1e-3, "training.micro_batch_size": 2},
        ),
    ],
    ids=[
        "qlora-defaults",
        "qlora-explicit",
        "prompt-tuning-defaults",
        "prompt-tuning-multiplier",
        "epochs",
        "deprecated-hyperparameters",
        "absolute-lr",
    ],
)
def test_adapter_types_and_defaults_are_resolved(client, auth, db_session, training_file, body, expected):
    job = create_ok(client, auth, training_file, **body)
    stored = db_session.get(Job, job["id"]).spec
    for dotted, value in expected.items():
        section, field = dotted.split(".")
        assert job[section][field] == (pytest.approx(value) if isinstance(value, float) else value)
        assert stored[section][field] == job[section][field]
    assert "auto" not in json.dumps(job["hyperparameters"])
    assert job["method"]["supervised"]["hyperparameters"] == job["hyperparameters"]
    assert job["adapter"]["type"] == body.get("adapter", {}).get("type", "lora")


def test_auto_adapter_and_micro_batch_are_left_to_the_worker(client, auth, db_session, training_file):
    job = create_ok(client, auth, training_file, adapter={"type": "auto"}, training={"micro_batch_size": "auto"})
    assert job["adapter"]["type"] == "auto"  # the worker picks LoRA or QLoRA for its GPU, and writes it back
    assert job["training"]["micro_batch_size"] == "auto"
    assert job["hyperparameters"]["batch_size"] == "auto"  # one measured micro-batch per optimizer step
    assert job["training"]["learning_rate"] == pytest.approx(2e-4)
    fixed = create_ok(
        client,
        auth,
        training_file,
        training={"micro_batch_size": "auto"},
        method={"supervised": {"hyperparameters": {"batch_size": 32}}},
    )
    assert fixed["hyperparameters"]["batch_size"] == 32 and fixed["training"]["micro_batch_size"] == "auto"


def test_unknown_model_is_400(client, auth, db_session, training_file):
    before = job_count(db_session)
    error = assert_error(
        create(client, auth, training_file, model="gpt-17"), 400, param="model", code="model_not_available"
    )
    assert "stories260k" in error["message"]
    assert job_count(db_session) == before


def test_another_tenants_training_file_is_404(client, auth, other_auth, db_session):
    theirs = upload(client, other_auth)
    before = job_count(db_session)
    assert_error(create(client, auth, theirs), 404, param="training_file", code="file_not_found")
    assert_error(create(client, auth, "file-does-not-exist"), 404, param="training_file")
    mine = upload(client, auth)
    assert_error(create(client, auth, mine, validation_file=theirs), 404, param="validation_file")
    assert job_count(db_session) == before


def test_validation_file_of_another_shape_is_400(client, auth, training_file):
    raw_text = upload(client, auth, TEXT_JSONL, name="text.jsonl")
    assert_error(create(client, auth, training_file, validation_file=raw_text), 400, param="validation_file")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"adapter": {"r": 0}}, "adapter.r"),
        ({"adapter": {"r": 513}}, "adapter.r"),
        ({"adapter": {"dropout": 0.95}}, "adapter.dropout"),
        ({"adapter": {"type": "dora"}}, "adapter.type"),
        (
            {"method": {"supervised": {"hyperparameters": {"n_epochs": 0}}}},
            "method.supervised.hyperparameters.n_epochs",
        ),
        (
            {"method": {"supervised": {"hyperparameters": {"batch_size": 0}}}},
            "method.supervised.hyperparameters.batch_size",
        ),
        ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
        ({"training": {"learning_rate": 5}}, "training.learning_rate"),
        ({"training": {"max_seq_length": 8}}, "training.max_seq_length"),
        ({"evaluation": {"max_new_tokens": 0}}, "evaluation.max_new_tokens"),
        ({"evaluation": {"metrics": ["bleu"]}}, "evaluation.metrics.0"),
        ({"seed": -1}, "seed"),
        ({"suffix": "has space"}, "suffix"),
        ({"adapter": {"rank": 8}}, "adapter.rank"),  # unknown field: a typo must not be ignored
        ({"learning_rate": 1e-4}, "learning_rate"),
        (
            {"adapter": {"type": "prompt_tuning", "num_virtual_tokens": 64}, "training": {"max_seq_length": 64}},
            "adapter.num_virtual_tokens",
        ),
    ],
)
def test_invalid_settings_are_400_naming_the_field(client, auth, db_session, training_file, body, param):
    before = job_count(db_session)
    error = assert_error(create(client, auth, training_file, **body), 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert job_count(db_session) == before


def test_missing_required_field_is_400(client, auth):
    assert_error(client.post(JOBS, headers=auth, json={"model": "stories260k"}), 400, param="training_file")


def test_create_needs_a_key(client, training_file):
    assert_error(create(client, {}, training_file), 401, param=None, code="missing_api_key")


# ------------------------------------------------------------------ list, cancel, events, checkpoints


def test_list_filters_and_paginates(client, auth, training_file):
    other_file = upload(client, auth, name="other.jsonl")
    a, b, c = (create_ok(client, auth, training_file)["id"] for _ in range(3))
    d = create_ok(client, auth, other_file)["id"]
    assert client.post(f"{JOBS}/{b}/cancel", headers=auth).status_code == 200

    def ids(**params):
        r = client.get(JOBS, headers=auth, params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]], r.json()["has_more"]

    assert ids() == ([d, c, b, a], False)
    assert ids(status="cancelled") == ([b], False)
    assert ids(status="queued") == ([d, c, a], False)
    assert ids(status="succeeded") == ([], False)
    assert ids(training_file=other_file) == ([d], False)
    assert ids(training_file=training_file, status="queued") == ([c, a], False)
    assert ids(limit=2) == ([d, c], True)
    assert ids(limit=2, after=c) == ([b, a], False)
    assert ids(limit=1, after=b, status="queued") == ([], False)  # `after` must match the filters too
    assert ids(limit=1, after=c, status="queued") == ([a], False)
    assert ids(status="paused") == ([], False)
    assert_error(client.get(JOBS, headers=auth, params={"status": "sleeping"}), 400, param="status")


def test_cancel_a_queued_job(client, auth, db_session, training_file):
    job_id = create_ok(client, auth, training_file)["id"]
    r = client.post(f"{JOBS}/{job_id}/cancel", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "cancelled"
    assert isinstance(body["finished_at"], int) and body["finished_at"] >= body["created_at"]

    db_session.expire_all()
    row = db_session.get(Job, job_id)
    assert row.status == JobStatus.cancelled and row.cancel_requested is True and row.finished_at is not None

    assert_error(client.post(f"{JOBS}/{job_id}/cancel", headers=auth), 409, param="job_id", code="job_not_cancellable")
    assert client.get(f"{JOBS}/{job_id}", headers=auth).json()["status"] == "cancelled"


def test_cancel_of_a_finished_job_is_409(client, auth, db_session, training_file):
    job_id = create_ok(client, auth, training_file)["id"]
    row = db_session.get(Job, job_id)
    row.status, row.finished_at = JobStatus.succeeded, utcnow()
    db_session.commit()
    assert_error(client.post(f"{JOBS}/{job_id}/cancel", headers=auth), 409, param="job_id")
    db_session.expire_all()
    assert db_session.get(Job, job_id).status == JobStatus.succeeded


def test_events_newest_first_and_paginated(client, auth, db_session, training_file):
    job_id = create_ok(client, auth, training_file)["id"]
    client.post(f"{JOBS}/{job_id}/cancel", headers=auth)

    r = client.get(f"{JOBS}/{job_id}/events", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["has_more"] is False
    events = body["data"]
    assert [e["message"] for e in events] == ["Job cancelled by the user", events[1]["message"]]
    assert events[1]["message"].startswith("Created fine-tuning job")
    for event in events:
        assert event["object"] == "fine_tuning.job.event"
        assert event["id"].startswith("ftevent-")
        assert event["level"] == "info" and event["type"] == "message"
        assert isinstance(event["created_at"], int)
    db_ids = db_session.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc())).all()
    assert [e["id"] for e in events] == [f"ftevent-{i}" for i in db_ids]

    first = client.get(f"{JOBS}/{job_id}/events", headers=auth, params={"limit": 1}).json()
    assert [e["id"] for e in first["data"]] == [events[0]["id"]]
    assert first["has_more"] is True
    second = client.get(f"{JOBS}/{job_id}/events", headers=auth, params={"limit": 1, "after": first["last_id"]}).json()
    assert [e["id"] for e in second["data"]] == [events[1]["id"]]
    assert second["has_more"] is False
    assert_error(client.get(f"{JOBS}/{job_id}/events", headers=auth, params={"after": "ftevent-x"}), 400, param="after")
    # An id past the 32-bit column was a database error (a 500); every event comes before it.
    beyond = client.get(f"{JOBS}/{job_id}/events", headers=auth, params={"after": "ftevent-99999999999"})
    assert beyond.status_code == 200 and [e["id"] for e in beyond.json()["data"]] == [e["id"] for e in events]


def test_checkpoints_of_a_new_job_are_empty(client, auth, training_file):
    job_id = create_ok(client, auth, training_file)["id"]
    r = client.get(f"{JOBS}/{job_id}/checkpoints", headers=auth)
    assert r.status_code == 200
    assert r.json() == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}


def test_unknown_job_is_404(client, auth):
    error = assert_error(client.get(f"{JOBS}/ftjob-nope", headers=auth), 404, param="job_id")
    assert error["type"] == "not_found_error"


# ------------------------------------------------------------------ tenant isolation


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/checkpoints"),
        ("GET", "/evaluation"),
        ("GET", "/adapter"),
        ("POST", "/select"),
    ],
)
def test_other_tenant_gets_404_on_every_job_endpoint(
    client, auth, other_auth, db_session, training_file, method, suffix
):
    job_id = create_ok(client, auth, training_file)["id"]
    r = client.request(method, f"{JOBS}/{job_id}{suffix}", headers=other_auth)
    assert_error(r, 404, param="job_id")
    db_session.expire_all()
    assert db_session.get(Job, job_id).status == JobStatus.queued  # the foreign cancel changed nothing


def test_other_tenant_list_is_empty(client, auth, other_auth, training_file):
    job_id = create_ok(client, auth, training_file)["id"]
    assert client.get(JOBS, headers=other_auth).json()["data"] == []
    assert client.get(JOBS, headers=other_auth, params={"after": job_id}).json()["data"] == []
    assert client.get(JOBS, headers=other_auth, params={"training_file": training_file}).json()["data"] == []
    assert [j["id"] for j in client.get(JOBS, headers=auth).json()["data"]] == [job_id]


# ------------------------------------------------------------------ models


def test_models_lists_the_base_model(client, auth):
    r = client.get("/v1/models", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [m for m in body["data"] if m["id"] == "stories260k"] == [
        {
            "object": "model",
            "id": "stories260k",
            "created": 0,
            "owned_by": "ftaas",
            "kind": "base",
            "base_model": None,
            "job_id": None,
        }
    ]
    one = client.get("/v1/models/stories260k", headers=auth)
    assert one.status_code == 200 and one.json()["kind"] == "base"
    assert_error(client.get("/v1/models/gpt-17", headers=auth), 404, param="model")
    assert_error(client.get("/v1/models"), 401, param=None)


def test_succeeded_job_shows_as_fine_tuned_model_for_its_tenant_only(
    client, auth, other_auth, db_session, training_file
):
    job_id = create_ok(client, auth, training_file, suffix="sql")["id"]
    name = f"ft:stories260k:acme:sql:{job_id}"
    row = db_session.get(Job, job_id)
    row.status, row.fine_tuned_model, row.finished_at = JobStatus.succeeded, name, utcnow()
    db_session.commit()

    models = client.get("/v1/models", headers=auth).json()["data"]
    tuned = [m for m in models if m["kind"] == "fine-tuned"]
    assert len(tuned) == 1
    assert tuned[0]["id"] == name
    assert tuned[0]["base_model"] == "stories260k"
    assert tuned[0]["job_id"] == job_id
    assert tuned[0]["owned_by"] == "acme"
    assert tuned[0]["created"] == int(row.finished_at.timestamp())
    assert client.get(f"/v1/models/{name}", headers=auth).json() == tuned[0]
    assert client.get(f"{JOBS}/{job_id}", headers=auth).json()["fine_tuned_model"] == name

    other = client.get("/v1/models", headers=other_auth).json()["data"]
    assert [m["kind"] for m in other] == ["base"]
    assert_error(client.get(f"/v1/models/{name}", headers=other_auth), 404, param="model")
