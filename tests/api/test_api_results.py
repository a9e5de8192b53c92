"""What a finished job gives back, over HTTP: its evaluation, its adapter download (with Range), the
selection of a model per training file and the file's leaderboard; plus the health endpoints.

Jobs here are built directly in the database in their final state, as a worker would leave them."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path

import pytest

from app.core.tables import Checkpoint, JobStatus, Selection
from tests.conftest import TEST_ENV
from tests.helpers.factories import finished_job, store_adapter

JOBS = "/v1/fine_tuning/jobs"
JOBS_DIR = Path(TEST_ENV["FTAAS_ARTIFACTS_DIR"]) / "jobs"


# ------------------------------------------------------------------ evaluation


def test_evaluation_complete_with_delta_and_samples(client, auth, db_session, acme, train_file):
    base = {"rougeL": 0.25, "perplexity": 30.0, "token_accuracy": 0.4}
    tuned = {"rougeL": 0.75, "perplexity": 12.0, "token_accuracy": 0.7, "bertscore_f1": 0.9}
    job = finished_job(db_session, acme, train_file, base=base, tuned=tuned, rows=5, num_samples=3)

    r = client.get(f"{JOBS}/{job.id}/evaluation", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "fine_tuning.job.evaluation"
    assert body["job_id"] == job.id
    assert body["status"] == "complete"
    assert body["num_rows"] == 5
    assert body["base"] == base and body["tuned"] == tuned
    # Only metrics both sides have; tuned minus base.
    assert body["delta"] == pytest.approx({"rougeL": 0.5, "perplexity": -18.0, "token_accuracy": 0.3})
    assert body["skipped"] is None
    assert [s["index"] for s in body["samples"]] == [0, 1, 2]  # the job's num_samples
    assert body["samples"][1] == {
        "index": 1,
        "prompt": "prompt 1",
        "reference": "ref 1",
        "base_output": "base 1",
        "tuned_output": "tuned 1",
        "base_scores": {"rougeL": 0.1},
        "tuned_scores": {"rougeL": 0.5},
    }

    def sample_count(limit):
        return len(client.get(f"{JOBS}/{job.id}/evaluation", headers=auth, params={"limit": limit}).json()["samples"])

    assert sample_count(5) == 5
    assert sample_count(100) == 5
    assert sample_count(0) == 0
    r = client.get(f"{JOBS}/{job.id}/evaluation", headers=auth, params={"limit": -1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_evaluation_partial_with_only_base(client, auth, db_session, acme, train_file):
    skipped = {"bertscore": "encoder not available"}
    job = finished_job(
        db_session, acme, train_file, status=JobStatus.running, base={"rougeL": 0.2}, rows=2, skipped=skipped
    )
    body = client.get(f"{JOBS}/{job.id}/evaluation", headers=auth).json()
    assert body["status"] == "partial"
    assert body["base"] == {"rougeL": 0.2}
    assert body["tuned"] is None and body["delta"] is None
    assert body["skipped"] == skipped
    assert body["num_rows"] == 2


def test_evaluation_pending_without_results(client, auth, db_session, acme, train_file):
    job = finished_job(db_session, acme, train_file, status=JobStatus.queued)
    body = client.get(f"{JOBS}/{job.id}/evaluation", headers=auth).json()
    assert body["status"] == "pending"
    assert (body["base"], body["tuned"], body["delta"], body["num_rows"]) == (None, None, None, None)
    assert body["samples"] == []


# ------------------------------------------------------------------ adapter download


def test_adapter_is_409_until_the_job_succeeded(client, auth, db_session, acme, train_file, archive):
    for status in (JobStatus.queued, JobStatus.running, JobStatus.failed, JobStatus.cancelled):
        job = finished_job(db_session, acme, train_file, status=status)
        r = client.get(f"{JOBS}/{job.id}/adapter", headers=auth)
        assert r.status_code == 409, (status, r.text)
        assert r.json()["error"]["code"] == "adapter_not_ready"
        assert r.json()["error"]["param"] == "job_id"
    # An unfinished job offers no download even if an archive was left behind.
    store_adapter(db_session, job, archive)
    assert client.get(f"{JOBS}/{job.id}/adapter", headers=auth).status_code == 409


def test_adapter_of_a_succeeded_job_without_archive_name_is_409(client, auth, db_session, acme, train_file):
    job = finished_job(db_session, acme, train_file)
    assert client.get(f"{JOBS}/{job.id}/adapter", headers=auth).status_code == 409


def test_adapter_missing_from_storage_is_404(client, auth, db_session, acme, train_file):
    job = finished_job(db_session, acme, train_file)
    job.adapter_name = f"{job.id}/adapter.tar.gz"
    db_session.commit()
    r = client.get(f"{JOBS}/{job.id}/adapter", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "adapter_missing"


def test_adapter_download_with_checksum_and_ranges(client, auth, db_session, acme, train_file, archive):
    job = finished_job(db_session, acme, train_file)
    digest = store_adapter(db_session, job, archive)
    url = f"{JOBS}/{job.id}/adapter"

    r = client.get(url, headers=auth)
    assert r.status_code == 200, r.text
    assert r.content == archive
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-checksum-sha256"] == digest
    assert r.headers["accept-ranges"] == "bytes"
    assert int(r.headers["content-length"]) == len(archive)
    assert r.headers["content-type"] == "application/gzip"
    assert f'filename="{job.id}-adapter.tar.gz"' in r.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]

    head = client.get(url, headers={**auth, "Range": "bytes=0-99"})
    assert head.status_code == 206
    assert head.content == archive[:100]
    assert head.headers["content-range"] == f"bytes 0-99/{len(archive)}"

    tail = client.get(url, headers={**auth, "Range": "bytes=-10"})
    assert tail.status_code == 206
    assert tail.content == archive[-10:]
    assert tail.headers["content-range"] == f"bytes {len(archive) - 10}-{len(archive) - 1}/{len(archive)}"

    resume = client.get(url, headers={**auth, "Range": "bytes=100-"})
    assert resume.status_code == 206
    assert head.content + resume.content == archive

    beyond = client.get(url, headers={**auth, "Range": f"bytes={len(archive)}-"})
    assert beyond.status_code == 416
    # Range errors in the API's JSON shape, not Starlette's plain text
    assert beyond.json()["error"]["code"] == "range_not_satisfiable" and beyond.json()["error"]["param"] == "Range"
    assert beyond.headers["content-range"] == f"bytes */{len(archive)}"
    for malformed in ("bytes=9-3", "items=0-1", "bytes=-"):
        bad = client.get(url, headers={**auth, "Range": malformed})
        assert bad.status_code == 400, malformed
        assert bad.json()["error"]["code"] == "invalid_range" and bad.json()["error"]["param"] == "Range"
    # a step past the 32-bit column was a database error (a 500)
    r = client.get(url, headers=auth, params={"step": 2**31})
    assert r.status_code == 400 and r.json()["error"]["param"] == "step"


@pytest.mark.parametrize(
    "hostile",
    [
        ",".join(f"{i}-{i}" for i in range(5000)),  # thousands of one-byte ranges
        ",".join("0-" for _ in range(5000)),  # thousands of overlapping ones, each the whole file
        ",".join(f"{i}-{i + 50}" for i in range(0, 20000, 3)),  # overlapping neighbours, past the end
    ],
    ids=["5000-single-bytes", "5000-overlapping", "6667-neighbours"],
)
def test_a_hostile_range_header_answers_in_normal_time(client, auth, db_session, acme, train_file, archive, hostile):
    # Starlette before 0.49.1 merged ranges in quadratic time (CVE-2025-62727); since 1.5.1 it honours at most
    # 100. Either way the answer must come as fast as an ordinary download and hold the file's own bytes.
    job = finished_job(db_session, acme, train_file)
    store_adapter(db_session, job, archive)
    url = f"{JOBS}/{job.id}/adapter"
    t = time.perf_counter()
    plain = client.get(url, headers=auth)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    r = client.get(url, headers={**auth, "Range": f"bytes={hostile}"})
    hostile_s = time.perf_counter() - t
    print(
        f"\n[range] {len(hostile):,}-byte Range header: {r.status_code} in {hostile_s * 1000:.1f} ms "
        f"(plain download {plain_s * 1000:.1f} ms)"
    )
    assert r.status_code in (200, 206, 416)
    assert hostile_s < 1.0  # a quadratic merge of thousands of ranges takes far longer; ordinary is ~10 ms
    if r.status_code == 200:
        assert r.content == plain.content == archive
    assert len(r.content) <= 2 * len(archive) + 100 * 200  # never thousands of copies of the file


def test_a_chosen_evaluated_checkpoint_downloads_by_step(client, auth, db_session, acme, train_file, archive):
    job = finished_job(db_session, acme, train_file)
    store_adapter(db_session, job, archive)
    other = archive[::-1]  # any different bytes stand for the other checkpoint's archive
    path = JOBS_DIR / job.id / "checkpoint-archives" / "step-20.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(other)
    db_session.add_all(
        [
            Checkpoint(
                job_id=job.id,
                step=20,
                epoch=1.0,
                dir_name="x",
                evaluated=True,
                metrics={"rougeL": 0.3},
                adapter_name=f"{job.id}/checkpoint-archives/step-20.tar.gz",
                adapter_sha256=hashlib.sha256(other).hexdigest(),
                adapter_bytes=len(other),
            ),
            Checkpoint(job_id=job.id, step=25, epoch=1.2, dir_name="y", evaluated=False, metrics={}),
        ]
    )
    db_session.commit()
    r = client.get(f"{JOBS}/{job.id}/adapter", headers=auth, params={"step": 20})
    assert r.status_code == 200 and r.content == other
    assert r.headers["x-checksum-sha256"] == hashlib.sha256(other).hexdigest()
    assert f'filename="{job.id}-step-20.tar.gz"' in r.headers["content-disposition"]
    assert client.get(f"{JOBS}/{job.id}/adapter", headers=auth).content == archive  # default: the shipped one
    for step in (25, 999):  # a time-based checkpoint is not evaluated, so not offered
        r = client.get(f"{JOBS}/{job.id}/adapter", headers=auth, params={"step": step})
        assert r.status_code == 404 and r.json()["error"]["param"] == "step"
        assert "evaluated checkpoints: 20" in r.json()["error"]["message"]


# ------------------------------------------------------------------ selection and leaderboard


def test_select_and_leaderboard(client, auth, db_session, acme, train_file):
    base = {"rougeL": 0.1, "perplexity": 50.0}
    good = finished_job(db_session, acme, train_file, base=base, tuned={"rougeL": 0.4, "perplexity": 10.0})
    better = finished_job(
        db_session, acme, train_file, base=base, tuned={"rougeL": 0.6, "perplexity": 20.0}, adapter_type="qlora"
    )
    unfinished = finished_job(db_session, acme, train_file, status=JobStatus.running)

    r = client.post(f"{JOBS}/{good.id}/select", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "selection"
    assert (body["file_id"], body["job_id"], body["fine_tuned_model"]) == (
        train_file.id,
        good.id,
        good.fine_tuned_model,
    )
    assert isinstance(body["created_at"], int)
    assert db_session.get(Selection, train_file.id).job_id == good.id

    r = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth, params={"metric": "rougeL"})
    assert r.status_code == 200, r.text
    board = r.json()
    assert board["object"] == "leaderboard"
    assert (board["file_id"], board["metric"], board["higher_is_better"]) == (train_file.id, "rougeL", True)
    assert board["selected_job_id"] == good.id
    rows = board["data"]
    assert [(row["rank"], row["kind"], row["job_id"], row["value"]) for row in rows] == [
        (1, "fine-tuned", better.id, 0.6),
        (2, "fine-tuned", good.id, 0.4),
        (3, "base", None, 0.1),
    ]
    assert [row["selected"] for row in rows] == [False, True, False]
    assert [row["adapter_type"] for row in rows] == ["qlora", "lora", None]
    assert rows[0]["fine_tuned_model"] == better.fine_tuned_model and rows[2]["model"] == "stories260k"
    assert rows[0]["metrics"] == {"rougeL": 0.6, "perplexity": 20.0}
    assert unfinished.id not in {row["job_id"] for row in rows}

    ppl = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth, params={"metric": "perplexity"}).json()
    assert ppl["higher_is_better"] is False
    assert [(row["job_id"], row["value"]) for row in ppl["data"]] == [(good.id, 10.0), (better.id, 20.0), (None, 50.0)]

    # A metric nobody measured: every row is there, valueless.
    bert = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth, params={"metric": "bertscore_f1"}).json()
    assert len(bert["data"]) == 3 and all(row["value"] is None for row in bert["data"])

    r = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth, params={"metric": "bleu"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metric"

    # Selecting again moves the choice.
    assert client.post(f"{JOBS}/{better.id}/select", headers=auth).status_code == 200
    board = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth).json()
    assert board["metric"] == "rougeL"  # the default
    assert board["selected_job_id"] == better.id
    assert [row["selected"] for row in board["data"]] == [True, False, False]
    db_session.expire_all()
    assert db_session.get(Selection, train_file.id).job_id == better.id


def test_rows_without_the_metric_rank_last(client, auth, db_session, acme, train_file):
    text_job = finished_job(db_session, acme, train_file, tuned={"perplexity": 8.0})
    scored = finished_job(db_session, acme, train_file, tuned={"rougeL": 0.3, "perplexity": 9.0})
    rows = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=auth).json()["data"]
    assert [(row["job_id"], row["value"]) for row in rows] == [(scored.id, 0.3), (text_job.id, None)]


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.running, JobStatus.failed, JobStatus.cancelled])
def test_select_of_an_unfinished_job_is_409(client, auth, db_session, acme, train_file, status):
    job = finished_job(db_session, acme, train_file, status=status)
    r = client.post(f"{JOBS}/{job.id}/select", headers=auth)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["param"] == "job_id"
    assert db_session.get(Selection, train_file.id) is None


def test_leaderboard_of_another_tenants_file_is_404(client, auth, other_auth, db_session, acme, train_file):
    finished_job(db_session, acme, train_file, tuned={"rougeL": 0.3})
    r = client.get(f"/v1/files/{train_file.id}/leaderboard", headers=other_auth)
    assert r.status_code == 404 and r.json()["error"]["param"] == "file_id"


# ------------------------------------------------------------------ health


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_checks_database_broker_and_store(client):
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {"database": True, "broker": True, "store": True}, "reasons": None}


def test_readyz_names_a_misconfigured_store(client, monkeypatch):
    from app.core import object_store
    from tests.helpers.s3_server import CREDENTIALS, s3_server

    with s3_server() as s3:
        for key, value in CREDENTIALS.items():
            monkeypatch.setenv(key, value)
        wrong = object_store.ObjectStore("s3://the-bucket-nobody-made", endpoint=s3.endpoint, retry_s=3)
        monkeypatch.setattr("app.api.health.get_store", lambda: wrong)
        r = client.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["checks"] == {"database": True, "broker": True, "store": False}
    assert "the-bucket-nobody-made" in body["reasons"]["store"]
