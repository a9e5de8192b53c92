"""Pause and resume, the metadata filter, and result files, in process (the live run with the openai client
is tests/contract/test_openai_client.py)."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select, update

from app.core.job_state import add_event, finish_job, pause_after_checkpoint
from app.core.object_store import get_store
from app.core.result_files import step_metrics_csv
from app.core.settings import get_settings
from app.core.storage import upload_key
from app.core.tables import Checkpoint, File, Job, JobEvent, JobStatus, utcnow
from tests.helpers.factories import make_job

JOBS = "/v1/fine_tuning/jobs"


def new_job(client, auth, train_file, **body) -> dict:
    r = client.post(JOBS, headers=auth, json={"model": "stories260k", "training_file": train_file.id, **body})
    assert r.status_code == 200, r.text
    return r.json()


def set_running(db_session, job_id: str, attempt: int = 1) -> None:
    db_session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.running, attempt=attempt))
    db_session.commit()


def messages(db_session, job_id: str) -> list[str]:
    return list(db_session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_a_queued_job_pauses_at_once_and_resumes_to_the_queue(client, auth, db_session, train_file):
    job = new_job(client, auth, train_file)
    r = client.post(f"{JOBS}/{job['id']}/pause", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "paused"
    assert client.post(f"{JOBS}/{job['id']}/pause", headers=auth).json()["status"] == "paused"  # idempotent
    r = client.post(f"{JOBS}/{job['id']}/resume", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    r = client.post(f"{JOBS}/{job['id']}/resume", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_paused"
    assert r.json()["error"]["param"] == "job_id"
    assert "Job paused by the user before it started" in messages(db_session, job["id"])


def test_a_running_job_is_asked_to_pause_and_a_resume_before_it_stops_withdraws_that(
    client, auth, db_session, train_file
):
    job = new_job(client, auth, train_file)
    set_running(db_session, job["id"])
    r = client.post(f"{JOBS}/{job['id']}/pause", headers=auth).json()
    assert r["status"] == "running" and r["progress"]["phase"] == "pausing"
    assert db_session.get(Job, job["id"]).pause_requested
    r = client.post(f"{JOBS}/{job['id']}/resume", headers=auth).json()
    assert r["status"] == "running" and r["progress"]["phase"] != "pausing"
    db_session.refresh(db_session.get(Job, job["id"]))
    assert not db_session.get(Job, job["id"]).pause_requested


def test_the_task_marks_a_paused_job_only_for_its_own_attempt(client, auth, db_session, train_file):
    job = new_job(client, auth, train_file)
    set_running(db_session, job["id"], attempt=2)
    client.post(f"{JOBS}/{job['id']}/pause", headers=auth)
    db_session.add(Checkpoint(job_id=job["id"], step=17, epoch=0.5, dir_name="x", evaluated=False))
    db_session.commit()
    assert not pause_after_checkpoint(db_session, job["id"], 1)  # a stale attempt changes nothing
    assert pause_after_checkpoint(db_session, job["id"], 2)
    row = db_session.get(Job, job["id"])
    db_session.refresh(row)
    assert row.status == "paused" and not row.pause_requested and row.interruptions == 1
    assert row.lease_expires_at is None
    assert "Job paused with its checkpoint of step 17; GPU released" in messages(db_session, job["id"])


def test_finished_jobs_cannot_be_paused_and_paused_ones_can_be_cancelled(client, auth, db_session, train_file):
    job = new_job(client, auth, train_file)
    client.post(f"{JOBS}/{job['id']}/pause", headers=auth)
    assert client.post(f"{JOBS}/{job['id']}/cancel", headers=auth).json()["status"] == "cancelled"
    r = client.post(f"{JOBS}/{job['id']}/pause", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_not_pausable"
    assert client.post(f"{JOBS}/{job['id']}/resume", headers=auth).status_code == 409


def test_paused_jobs_hold_no_place_and_resuming_needs_one(client, auth, db_session, train_file, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_active_jobs_per_tenant", 1)
    first = new_job(client, auth, train_file)
    client.post(f"{JOBS}/{first['id']}/pause", headers=auth)
    second = new_job(client, auth, train_file)  # the paused one leaves room
    r = client.post(f"{JOBS}/{first['id']}/resume", headers=auth)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_active_jobs"
    assert db_session.get(Job, first["id"]).status == "paused"  # nothing changed
    client.post(f"{JOBS}/{second['id']}/cancel", headers=auth)
    assert client.post(f"{JOBS}/{first['id']}/resume", headers=auth).json()["status"] == "queued"


def test_another_tenant_cannot_pause_or_resume(client, auth, other_auth, train_file):
    job = new_job(client, auth, train_file)
    for action in ("pause", "resume"):
        r = client.post(f"{JOBS}/{job['id']}/{action}", headers=other_auth)
        assert r.status_code == 404 and r.json()["error"]["param"] == "job_id"


def test_jobs_are_filtered_by_metadata_as_the_openai_client_sends_it(client, auth, train_file):
    a = new_job(client, auth, train_file, metadata={"team": "x", "env": "prod"})
    b = new_job(client, auth, train_file, metadata={"team": "x", "env": "dev"})
    c = new_job(client, auth, train_file)

    def ids(params) -> list[str]:
        r = client.get(JOBS, headers=auth, params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]]

    assert ids({"metadata[team]": "x"}) == [b["id"], a["id"]]
    assert ids({"metadata[team]": "x", "metadata[env]": "prod"}) == [a["id"]]
    assert ids({"metadata[team]": "y"}) == []
    assert c["id"] in ids({"metadata": "null"}) and a["id"] not in ids({"metadata": "null"})
    assert ids({"metadata[team]": "x", "limit": 1, "after": b["id"]}) == [a["id"]]  # pages within the filter


def test_the_result_file_has_every_logged_step_and_the_held_out_metrics(db_session, acme, train_file):
    job = make_job(db_session, acme, train_file, status=JobStatus.running, attempt=1)
    for step, loss in ((10, 2.5), (20, 2.0), (20, 1.9)):  # step 20 twice: a resumed attempt redid it
        data = {"step": step, "epoch": step / 20, "train_loss": loss, "learning_rate": 1e-3, "trained_tokens": step}
        add_event(db_session, job.id, f"Step {step}", type="metrics", data=data)
    add_event(db_session, job.id, "Fine-tuned model evaluated", type="metrics", data={"subject": "tuned"})
    metrics = {"train_loss": 1.9, "eval_loss": 1.5, "token_accuracy": 0.6, "rougeL": 0.3}
    db_session.add(Checkpoint(job_id=job.id, step=20, epoch=1.0, metrics=metrics, dir_name="d", evaluated=True))
    db_session.commit()

    content, n = step_metrics_csv(db_session, job.id)
    table = list(csv.DictReader(io.StringIO(content.decode())))
    assert n == 2 and [r["step"] for r in table] == ["10", "20"]
    assert list(table[0])[:7] == [
        "step",
        "epoch",
        "train_loss",
        "learning_rate",
        "trained_tokens",
        "valid_loss",
        "valid_mean_token_accuracy",
    ]
    assert table[1]["train_loss"] == "1.9" and table[1]["valid_loss"] == "1.5" and table[1]["valid_rougeL"] == "0.3"
    assert table[0]["valid_loss"] == ""

    assert finish_job(db_session, job.id, 1, JobStatus.succeeded)
    db_session.refresh(job)
    result = db_session.get(File, job.result_file_id)
    assert result.purpose == "fine-tune-results" and result.tenant_id == acme.id and result.num_rows == 2
    assert b"".join(get_store().read(upload_key(result.storage_name))) == content
    assert result.created_at <= utcnow()


def test_a_result_file_is_downloadable_and_not_training_data(client, auth, db_session, acme, train_file):
    job = new_job(client, auth, train_file)
    set_running(db_session, job["id"])
    add_event(db_session, job["id"], "Step 1", type="metrics", data={"step": 1, "train_loss": 3.0})
    db_session.commit()
    assert finish_job(db_session, job["id"], 1, JobStatus.succeeded)
    body = client.get(f"{JOBS}/{job['id']}", headers=auth).json()
    (result_id,) = body["result_files"]
    r = client.get(f"/v1/files/{result_id}/content", headers=auth)
    assert r.status_code == 200 and r.text.startswith("step,epoch,train_loss")
    r = client.post(JOBS, headers=auth, json={"model": "stories260k", "training_file": result_id})
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    assert r.json()["error"]["code"] == "invalid_file_purpose"
