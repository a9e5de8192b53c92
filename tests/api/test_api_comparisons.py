"""Qualitative comparisons over HTTP: creation from prompts or held-out rows, validation, ownership, paging and
the side-by-side shape (the worker side, on real adapters: tests/worker/test_worker_comparison.py)."""

from __future__ import annotations

import json

import pytest
import redis
from sqlalchemy import func, select

from app.core.tables import Comparison, ComparisonStatus, EvaluationRow, File, Job, JobStatus, Tenant, utcnow
from tests.conftest import REDIS_URL, TEST_ENV
from tests.helpers.factories import adapter_job, make_file_row

CMP = "/v1/comparisons"


def assert_error(response, status: int, *, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code, error
    return error


def make_file(session, tenant: Tenant, shape: str = "prompt_completion") -> File:
    return make_file_row(session, tenant, shape=shape, num_rows=10, token_estimate=50)


@pytest.fixture
def acme(db_session, auth) -> Tenant:
    return db_session.scalar(select(Tenant).where(Tenant.name == "acme"))


@pytest.fixture
def globex(db_session, other_auth) -> Tenant:
    return db_session.scalar(select(Tenant).where(Tenant.name == "globex"))


@pytest.fixture
def train_file(db_session, acme) -> File:
    return make_file(db_session, acme)


@pytest.fixture
def job(db_session, acme, train_file) -> Job:
    row = adapter_job(db_session, acme, train_file)
    db_session.commit()
    return row


def create(client, auth, **body):
    return client.post(CMP, headers=auth, json=body)


def test_create_with_prompts_then_get_and_enqueue(client, auth, db_session, job):
    r = create(client, auth, job_ids=[job.id], prompts=["Once upon a time", "Q: two plus two?\nA: "])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "comparison" and body["id"].startswith("cmp-")
    assert body["status"] == "queued"
    assert body["job_ids"] == [job.id]
    assert (body["prompt_source"], body["held_out_job_id"], body["num_prompts"]) == ("prompts", None, 2)
    assert body["max_new_tokens"] == 64  # the default
    assert body["results"] is None and body["error"] is None and body["finished_at"] is None

    row = db_session.get(Comparison, body["id"])
    assert row.prompts == ["Once upon a time", "Q: two plus two?\nA: "]
    assert row.status == ComparisonStatus.queued and row.tenant_id == job.tenant_id

    assert client.get(f"{CMP}/{body['id']}", headers=auth).json() == body

    # Only the id travels, by task name, on the training queue.
    queue = redis.Redis.from_url(REDIS_URL).lrange(TEST_ENV["FTAAS_QUEUE_NAME"], 0, -1)
    mine = [json.loads(m)["headers"] for m in queue]
    mine = [h for h in mine if body["id"] in h.get("argsrepr", "")]
    assert len(mine) == 1
    assert mine[0]["task"] == "ftaas.compare"
    assert mine[0]["argsrepr"] == repr([body["id"]])


def test_create_from_held_out_rows(client, auth, db_session, acme, train_file, job):
    # Rows out of order, one without a reference: the first N rows with a reference, by row_index.
    for index, reference in ((2, "ref 2"), (0, "ref 0"), (1, ""), (3, "ref 3")):
        db_session.add(EvaluationRow(job_id=job.id, row_index=index, prompt=f"prompt {index}", reference=reference))
    second = adapter_job(db_session, acme, train_file, adapter_type="prompt_tuning")
    db_session.commit()

    r = create(client, auth, job_ids=[job.id, second.id], held_out_rows=2, max_new_tokens=16)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["prompt_source"], body["held_out_job_id"], body["num_prompts"]) == ("held_out_rows", job.id, 2)
    assert body["max_new_tokens"] == 16
    row = db_session.get(Comparison, body["id"])
    assert row.prompts == ["prompt 0", "prompt 2"]
    assert row.results["references"] == ["ref 0", "ref 2"]

    # Fewer rows than asked: the ones there are.
    assert create(client, auth, job_ids=[job.id], held_out_rows=20).json()["num_prompts"] == 3
    # A job without evaluation rows (raw text, say) has none to give.
    r = create(client, auth, job_ids=[second.id, job.id], held_out_rows=2)
    assert_error(r, 409, param="held_out_rows", code="no_held_out_rows")


def test_succeeded_comparison_is_shown_side_by_side(client, auth, db_session, acme, job):
    row = Comparison(
        tenant_id=acme.id,
        job_ids=[job.id],
        prompts=["p0", "p1"],
        max_new_tokens=8,
        status=ComparisonStatus.succeeded,
        finished_at=utcnow(),
        results={
            "source": "held_out_rows",
            "held_out_job_id": job.id,
            "references": ["r0", "r1"],
            "base": [{"model": "stories260k", "quantized": False, "outputs": ["b0", "b1"]}],
            "jobs": [
                {
                    "job_id": job.id,
                    "model": "stories260k",
                    "fine_tuned_model": job.fine_tuned_model,
                    "adapter_type": "lora",
                    "outputs": ["j0", "j1"],
                }
            ],
        },
    )
    db_session.add(row)
    db_session.commit()
    body = client.get(f"{CMP}/{row.id}", headers=auth).json()
    assert body["status"] == "succeeded" and isinstance(body["finished_at"], int)
    assert body["results"][1] == {
        "index": 1,
        "prompt": "p1",
        "reference": "r1",
        "outputs": [
            {"subject": "base", "model": "stories260k", "quantized": False, "text": "b1"},
            {
                "subject": "job",
                "job_id": job.id,
                "model": "stories260k",
                "fine_tuned_model": job.fine_tuned_model,
                "adapter_type": "lora",
                "text": "j1",
            },
        ],
    }
    assert [e["prompt"] for e in body["results"]] == ["p0", "p1"]

    row.status, row.error = ComparisonStatus.failed, {"code": "adapter_missing", "message": "gone", "param": None}
    db_session.commit()
    body = client.get(f"{CMP}/{row.id}", headers=auth).json()
    assert body["status"] == "failed" and body["results"] is None
    assert body["error"] == {"code": "adapter_missing", "message": "gone", "param": None}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompts": ["p"] * 21}, 400, "prompts"),  # too many prompts
        ({"prompts": []}, 400, "prompts"),
        ({"prompts": ["ok", "ok", "", "ok"]}, 400, "prompts[2]"),
        ({"prompts": ["ok", "x" * 8001]}, 400, "prompts[1]"),
        ({"prompts": ["ok", 3]}, 400, "prompts.1"),  # a type error, from the schema validation
        ({}, 400, "prompts"),  # neither prompts nor held_out_rows
        ({"prompts": ["p"], "held_out_rows": 2}, 400, "held_out_rows"),  # both
        ({"held_out_rows": 0}, 400, "held_out_rows"),
        ({"held_out_rows": 21}, 400, "held_out_rows"),
        ({"prompts": ["p"], "max_new_tokens": 0}, 400, "max_new_tokens"),
        ({"prompts": ["p"], "max_new_tokens": 1025}, 400, "max_new_tokens"),
        ({"prompts": ["p"], "temperature": 0.7}, 400, "temperature"),  # unknown fields are errors
        ({"prompts": ["p"], "job_ids": []}, 400, "job_ids"),
        ({"prompts": ["p"], "job_ids": "JOBS9"}, 400, "job_ids"),  # more than 8 jobs
    ],
)
def test_invalid_requests_name_the_field(client, auth, db_session, job, body, status, param):
    body = {"job_ids": [job.id], **body}
    if body["job_ids"] == "JOBS9":
        body["job_ids"] = [job.id] + [f"ftjob-{i}" for i in range(8)]
    assert_error(create(client, auth, **body), status, param=param)
    assert db_session.scalar(select(func.count()).select_from(Comparison)) == 0  # nothing was created


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.running, JobStatus.failed, JobStatus.cancelled])
def test_a_job_that_has_not_succeeded_is_409(client, auth, db_session, acme, train_file, job, status):
    pending = adapter_job(db_session, acme, train_file, status=status)
    db_session.commit()
    r = create(client, auth, job_ids=[job.id, pending.id], prompts=["p"])
    assert_error(r, 409, param="job_ids[1]", code="job_not_ready")


def test_a_succeeded_job_without_adapter_is_409(client, auth, db_session, job):
    job.adapter_name = None
    db_session.commit()
    assert_error(
        create(client, auth, job_ids=[job.id], prompts=["p"]), 409, param="job_ids[0]", code="adapter_not_ready"
    )


def test_duplicate_and_unknown_jobs(client, auth, job):
    assert_error(create(client, auth, job_ids=[job.id, job.id], prompts=["p"]), 400, param="job_ids[1]")
    r = create(client, auth, job_ids=[job.id, "ftjob-nope"], prompts=["p"])
    assert_error(r, 404, param="job_ids[1]", code="job_not_found")


def test_another_tenants_job_is_404(client, auth, other_auth, db_session, globex, job):
    theirs = adapter_job(db_session, globex, make_file(db_session, globex))
    db_session.commit()
    r = create(client, auth, job_ids=[job.id, theirs.id], prompts=["p"])
    assert_error(r, 404, param="job_ids[1]", code="job_not_found")
    # The owner may compare it; acme's job is just as unknown to globex.
    assert create(client, other_auth, job_ids=[theirs.id], prompts=["p"]).status_code == 200
    assert_error(create(client, other_auth, job_ids=[job.id], prompts=["p"]), 404, param="job_ids[0]")


def test_another_tenants_comparison_is_404(client, auth, other_auth, job):
    cmp_id = create(client, auth, job_ids=[job.id], prompts=["p"]).json()["id"]
    assert client.get(f"{CMP}/{cmp_id}", headers=auth).status_code == 200
    assert_error(client.get(f"{CMP}/{cmp_id}", headers=other_auth), 404, param="comparison_id")
    assert client.get(CMP, headers=other_auth).json()["data"] == []
    assert_error(client.get(f"{CMP}/cmp-nope", headers=auth), 404, param="comparison_id")
    assert_error(client.get(CMP), 401, param=None, code="missing_api_key")


def test_list_is_paged_newest_first(client, auth, job):
    a, b, c = (create(client, auth, job_ids=[job.id], prompts=[f"p{i}"]).json()["id"] for i in range(3))

    def ids(**params):
        r = client.get(CMP, headers=auth, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list"
        return [x["id"] for x in body["data"]], body["has_more"], body["first_id"], body["last_id"]

    assert ids() == ([c, b, a], False, c, a)
    assert ids(limit=2) == ([c, b], True, c, b)
    assert ids(limit=2, after=b) == ([a], False, a, a)
    assert ids(after=a) == ([], False, None, None)
    assert ids(after="cmp-unknown") == ([], False, None, None)
    assert_error(client.get(CMP, headers=auth, params={"limit": 0}), 400, param="limit")


def test_a_broker_outage_fails_the_comparison_instead_of_leaving_it_queued(client, auth, job, monkeypatch):
    import app.comparisons.service as service

    monkeypatch.setattr(service, "enqueue_comparison", lambda _id: False)
    body = create(client, auth, job_ids=[job.id], prompts=["p"]).json()
    assert body["status"] == "failed" and body["error"]["code"] == "queue_unavailable"
