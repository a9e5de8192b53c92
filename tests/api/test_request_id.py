"""X-Request-ID: the client's own when it is a sane token, a new one otherwise, always in the answer, and kept on the
job a request creates (the worker logs under it; the live run: tests/e2e/test_fleet_watch.py)."""

from __future__ import annotations

import logging

from app.core.logs import ContextFilter
from app.core.tables import Job
from tests.api.test_api_jobs import create_ok, upload


def test_the_client_s_id_is_answered_and_kept_on_the_job(client, auth, db_session):
    file_id = upload(client, auth)
    r = client.post(
        "/v1/fine_tuning/jobs",
        headers={**auth, "X-Request-ID": "lb-7f3a.42"},
        json={"model": "stories260k", "training_file": file_id},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "lb-7f3a.42"
    assert db_session.get(Job, r.json()["id"]).request_id == "lb-7f3a.42"


def test_a_missing_or_unsafe_id_is_replaced_by_a_new_one(client, auth, db_session):
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32 and made != client.get("/healthz").headers["x-request-id"]  # one per request
    for unsafe in ("has space", "x" * 129, 'quote"d', "new\\nline"):
        answered = client.get("/healthz", headers={"X-Request-ID": unsafe}).headers["x-request-id"]
        assert answered != unsafe and len(answered) == 32
    # errors carry it too, and a job made without one still gets the generated id
    assert client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=auth).headers["x-request-id"]
    job = create_ok(client, auth, upload(client, auth))
    assert len(db_session.get(Job, job["id"]).request_id) == 32


def test_log_records_name_the_request_they_were_logged_under(client, auth):
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    handler = Keep()
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("ftaas.api")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        r = client.post(
            "/v1/fine_tuning/jobs",
            headers={**auth, "X-Request-ID": "req-1"},
            json={"model": "stories260k", "training_file": upload(client, auth)},
        )
    finally:
        logger.removeHandler(handler)
    created = [rec for rec in seen if rec.getMessage().startswith("created job")]
    assert [(rec.request_id, rec.job_id) for rec in created] == [("req-1", r.json()["id"])]
