"""GET .../adapter?format=merged over HTTP: the first request asks a worker for the merged model (202 with
Retry-After, one task sent), later ones wait or download it with its checksum and Range; a failed build is
reported with its reason, then built again; a lost message or a dead build is sent again; adapters that cannot be
merged are a 400 naming `format`. The merge itself (a worker's) is tested in tests/worker/test_portable_adapter.py;
here the task queue is a recorder and rows are set as a worker leaves them."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.core.object_store import get_store
from app.core.storage import JobFiles
from app.core.tables import Checkpoint, MergedModel, MergeStatus, utcnow
from app.jobs import merging
from tests.helpers.factories import finished_job, store_adapter

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def sent(monkeypatch) -> list[str]:
    """The merge tasks put on the queue: their merged models' ids."""
    calls: list[str] = []
    monkeypatch.setattr(merging, "enqueue_merge", lambda merge_id: calls.append(merge_id) or True)
    return calls


def lora_job(db_session, acme, train_file, archive, adapter_type: str = "lora"):
    job = finished_job(db_session, acme, train_file, adapter_type=adapter_type)
    store_adapter(db_session, job, archive)
    return job


def merged(db_session, job, source: str = "adapter") -> MergedModel:
    db_session.expire_all()
    return db_session.scalar(select(MergedModel).where(MergedModel.job_id == job.id, MergedModel.source == source))


def built(db_session, row: MergedModel, data: bytes) -> str:
    """The row as a worker leaves a finished build: its archive stored, ready."""
    files = JobFiles(row.job_id)
    name = files.relative(files.merged_archive(row.source, row.attempt))
    get_store().put_stream(files.key(name), [data])
    digest = hashlib.sha256(data).hexdigest()
    row.status, row.finished_at = MergeStatus.ready, utcnow()
    row.archive_name, row.sha256, row.bytes = name, digest, len(data)
    db_session.commit()
    return digest


def get_merged(client, auth, job, **params):
    return client.get(f"{JOBS}/{job.id}/adapter", headers=auth, params={"format": "merged", **params})


def test_first_request_asks_a_worker_once_then_downloads_the_merged_archive(
    client, auth, db_session, acme, train_file, archive, sent
):
    job = lora_job(db_session, acme, train_file, archive)
    r = get_merged(client, auth, job)
    assert r.status_code == 202 and r.headers["retry-after"] == str(merging.ASK_AGAIN_S)
    body = r.json()
    assert body["object"] == "fine_tuning.job.merged_model" and body["job_id"] == job.id
    assert body["status"] == "queued" and body["step"] is None and "ask again" in body["message"]
    row = merged(db_session, job)
    assert sent == [row.id] and row.status == MergeStatus.queued and row.sent_at is not None

    assert get_merged(client, auth, job).status_code == 202
    row.status, row.attempt, row.started_at = MergeStatus.building, 1, utcnow()
    db_session.commit()
    r = get_merged(client, auth, job)
    assert r.status_code == 202 and r.json()["status"] == "building"
    assert sent == [row.id]  # asked once, however often polled

    data = b"merged model archive" * 500
    digest = built(db_session, row, data)
    r = get_merged(client, auth, job)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/gzip" and r.headers["x-checksum-sha256"] == digest
    assert f'filename="{job.id}-merged.tar.gz"' in r.headers["content-disposition"]
    r = client.get(f"{JOBS}/{job.id}/adapter", headers={**auth, "Range": "bytes=10-41"}, params={"format": "merged"})
    assert r.status_code == 206 and r.content == data[10:42]
    # the default format is still the adapter itself
    plain = client.get(f"{JOBS}/{job.id}/adapter", headers=auth)
    assert plain.status_code == 200 and plain.content == archive
    assert sent == [row.id]


def test_a_checkpoint_is_merged_on_its_own(client, auth, db_session, acme, train_file, archive, sent):
    job = lora_job(db_session, acme, train_file, archive)
    db_session.add(
        Checkpoint(
            job_id=job.id,
            step=20,
            epoch=1.0,
            dir_name="x",
            evaluated=True,
            adapter_name=job.adapter_name,  # any stored archive stands for the checkpoint's
            adapter_sha256=job.adapter_sha256,
        )
    )
    db_session.commit()
    r = get_merged(client, auth, job, step=20)
    assert r.status_code == 202 and r.json()["step"] == 20
    row = merged(db_session, job, "step-20")
    assert sent == [row.id] and merged(db_session, job) is None
    built(db_session, row, b"step twenty merged")
    r = get_merged(client, auth, job, step=20)
    assert r.status_code == 200 and r.content == b"step twenty merged"
    assert f'filename="{job.id}-step-20-merged.tar.gz"' in r.headers["content-disposition"]
    r = get_merged(client, auth, job, step=21)
    assert r.status_code == 404 and r.json()["error"]["param"] == "step"


@pytest.mark.parametrize(
    ("kind", "says"),
    [("full", "already a whole model"), ("prompt_tuning", "nothing to merge")],
)
def test_adapters_that_cannot_be_merged_are_a_400_naming_format(
    client, auth, db_session, acme, train_file, archive, sent, kind, says
):
    job = lora_job(db_session, acme, train_file, archive, adapter_type=kind)
    r = get_merged(client, auth, job)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "format" and says in error["message"] and kind in error["message"]
    assert sent == [] and merged(db_session, job) is None
    assert client.get(f"{JOBS}/{job.id}/adapter", headers=auth).status_code == 200  # its own download works


def test_bad_format_and_unfinished_jobs(client, auth, db_session, acme, train_file, archive, sent):
    job = lora_job(db_session, acme, train_file, archive)
    r = client.get(f"{JOBS}/{job.id}/adapter", headers=auth, params={"format": "gguf"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "format"
    running = finished_job(db_session, acme, train_file, status="running")
    r = get_merged(client, auth, running)
    assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_not_ready"
    assert sent == []


def test_an_unreachable_queue_is_a_503_and_the_next_request_sends_it(
    client, auth, db_session, acme, train_file, archive, monkeypatch
):
    job = lora_job(db_session, acme, train_file, archive)
    monkeypatch.setattr(merging, "enqueue_merge", lambda merge_id: False)
    r = get_merged(client, auth, job)
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable" and "retry-after" in r.headers
    row = merged(db_session, job)
    assert row.status == MergeStatus.queued and row.sent_at is None
    sent: list[str] = []
    monkeypatch.setattr(merging, "enqueue_merge", lambda merge_id: sent.append(merge_id) or True)
    assert get_merged(client, auth, job).status_code == 202 and sent == [row.id]


def test_a_failed_build_says_why_then_is_built_again(client, auth, db_session, acme, train_file, archive, sent):
    job = lora_job(db_session, acme, train_file, archive)
    get_merged(client, auth, job)
    row = merged(db_session, job)
    row.status, row.attempt, row.finished_at = MergeStatus.failed, 1, utcnow()
    row.error = {"code": "merge_failed", "message": "OutOfMemoryError: 16 GB asked", "param": None}
    db_session.commit()
    r = get_merged(client, auth, job)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "merge_failed" and "OutOfMemoryError: 16 GB asked" in error["message"]
    assert 0 < int(r.headers["retry-after"]) <= merging.FAILED_REPORTED_S
    assert sent == [row.id]

    row.finished_at = utcnow() - timedelta(seconds=merging.FAILED_REPORTED_S + 1)
    db_session.commit()
    assert get_merged(client, auth, job).status_code == 202
    row = merged(db_session, job)
    assert row.status == MergeStatus.queued and row.error is None and sent == [row.id, row.id]


def test_a_lost_message_a_dead_build_and_a_lost_archive_are_sent_again(
    client, auth, db_session, acme, train_file, archive, sent
):
    job = lora_job(db_session, acme, train_file, archive)
    get_merged(client, auth, job)
    row = merged(db_session, job)
    # queued, and its message sent longer ago than a queued job waits before it is sent again
    row.sent_at = utcnow() - timedelta(hours=1)
    db_session.commit()
    assert get_merged(client, auth, job).status_code == 202 and len(sent) == 2
    # building for longer than any merge takes: its worker died
    row = merged(db_session, job)
    row.status, row.attempt = MergeStatus.building, 1
    row.started_at = utcnow() - timedelta(seconds=merging.BUILD_PRESUMED_DEAD_S + 1)
    db_session.commit()
    r = get_merged(client, auth, job)
    assert r.status_code == 202 and r.json()["status"] == "queued" and len(sent) == 3
    # ready, but its archive is gone from storage
    row = merged(db_session, job)
    built(db_session, row, b"x")
    get_store().delete([JobFiles(job.id).key(row.archive_name)])
    assert get_merged(client, auth, job).status_code == 202 and len(sent) == 4
    assert merged(db_session, job).status == MergeStatus.queued


def test_another_tenants_job_is_a_404(client, other_auth, db_session, acme, train_file, archive, sent):
    job = lora_job(db_session, acme, train_file, archive)
    assert get_merged(client, other_auth, job).status_code == 404
    assert sent == [] and merged(db_session, job) is None
