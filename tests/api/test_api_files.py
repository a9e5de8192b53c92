"""/v1/files over HTTP: uploads in every supported format, reads, listing, deletion and tenant isolation
(refused uploads, each leaving nothing behind: test_api_file_refusals.py)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from app.core.tables import File
from tests.conftest import DATASETS
from tests.helpers.files import ARTIFACTS_DIR, PC_JSONL, UPLOADS_DIR, assert_error, jsonl, upload

# ------------------------------------------------------------------ accepted formats


def _wikisql_jsonl(_tmp: Path):
    data = (DATASETS / "wikisql" / "train.jsonl").read_bytes()
    return "train.jsonl", data, {"completion_separator": "\nA: "}, ("jsonl", "prompt_completion", 1000)


def _alpaca_json(_tmp: Path):
    data = (DATASETS / "alpaca" / "alpaca_en_demo.json").read_bytes()
    return "alpaca_en_demo.json", data, {}, ("json", "instruction", 999)


def _mapped_csv(_tmp: Path):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["question", "sql"])
    writer.writerow(["How many users?", "SELECT COUNT(*) FROM users"])
    writer.writerow(["Names, sorted", 'SELECT name FROM t ORDER BY "name"'])
    writer.writerow(["Multi\nline question", "SELECT 1"])
    mapping = json.dumps({"question": "prompt", "sql": "completion"})
    return "queries.csv", out.getvalue().encode(), {"column_mapping": mapping}, ("csv", "prompt_completion", 3)


def _parquet(tmp: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"instruction": [f"Say {i}" for i in range(5)], "output": [str(i) for i in range(5)]})
    path = tmp / "rows.parquet"
    pq.write_table(table, path)
    return "rows.parquet", path.read_bytes(), {}, ("parquet", "instruction", 5)


def _chat_jsonl(_tmp: Path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ]
        },
        {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
    ]
    return "chat.jsonl", jsonl(rows), {}, ("jsonl", "chat", 2)


def _text_jsonl(_tmp: Path):
    rows = [{"text": "Once upon a time there was a tiny model."}, {"text": "It learned to tell stories."}]
    return "stories.jsonl", jsonl(rows), {}, ("jsonl", "text", 2)


@pytest.mark.parametrize(
    "build",
    [_wikisql_jsonl, _alpaca_json, _mapped_csv, _parquet, _chat_jsonl, _text_jsonl],
    ids=["jsonl-separator", "json-array", "csv-mapping", "parquet", "chat", "text"],
)
def test_upload_accepts_format(client, auth, db_session, tmp_path, build):
    filename, content, form, (fmt, shape, num_rows) = build(tmp_path)
    r = upload(client, auth, filename, content, purpose="fine-tune", **form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "file"
    assert body["id"].startswith("file-")
    assert body["filename"] == filename
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert (body["format"], body["shape"], body["num_rows"]) == (fmt, shape, num_rows)
    assert body["token_estimate"] > 0
    assert body["bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert isinstance(body["created_at"], int)
    if "column_mapping" in form:
        assert body["column_mapping"] == json.loads(form["column_mapping"])
    assert body["completion_separator"] == form.get("completion_separator")

    row = db_session.get(File, body["id"])
    assert row is not None and row.num_rows == num_rows and row.sha256 == body["sha256"]
    assert (UPLOADS_DIR / row.storage_name).read_bytes() == content

    again = client.get(f"/v1/files/{body['id']}", headers=auth)
    assert again.status_code == 200
    assert again.json() == body


def test_content_returns_the_uploaded_bytes(client, auth):
    content = (DATASETS / "wikisql" / "valid.jsonl").read_bytes()
    file_id = upload(client, auth, "valid.jsonl", content, completion_separator="\nA: ").json()["id"]
    r = client.get(f"/v1/files/{file_id}/content", headers=auth)
    assert r.status_code == 200
    assert r.content == content
    assert 'filename="valid.jsonl"' in r.headers["content-disposition"]


def test_content_resumes_with_range_and_a_lost_file_is_404(client, auth):
    file_id = upload(client, auth, "f.jsonl", PC_JSONL).json()["id"]
    url = f"/v1/files/{file_id}/content"
    part = client.get(url, headers={**auth, "Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == PC_JSONL[:10]
    assert_error(client.get(url, headers={**auth, "Range": "bytes=5000-"}), 416, param="Range")
    (UPLOADS_DIR / file_id).unlink()  # storage lost the bytes: FileResponse raised (a 500)
    assert_error(client.get(url, headers=auth), 404, code="file_content_missing")


def test_a_wrong_method_is_405_listing_every_method_of_the_resource(client, auth):
    file_id = upload(client, auth, "f.jsonl", PC_JSONL).json()["id"]
    r = client.put(f"/v1/files/{file_id}", headers=auth)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["allow"] == "DELETE, GET"  # Starlette named only the first route's: GET


def test_list_is_newest_first_and_paginates(client, auth):
    ids = [upload(client, auth, f"f{i}.jsonl", PC_JSONL).json()["id"] for i in range(3)]
    newest_first = ids[::-1]

    r = client.get("/v1/files", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert [f["id"] for f in body["data"]] == newest_first
    assert body["has_more"] is False

    page1 = client.get("/v1/files", headers=auth, params={"limit": 2}).json()
    assert [f["id"] for f in page1["data"]] == newest_first[:2]
    assert page1["has_more"] is True
    assert page1["last_id"] == newest_first[1]

    page2 = client.get("/v1/files", headers=auth, params={"limit": 2, "after": page1["last_id"]}).json()
    assert [f["id"] for f in page2["data"]] == newest_first[2:]
    assert page2["has_more"] is False


def test_list_rejects_bad_limit(client, auth):
    assert_error(client.get("/v1/files", headers=auth, params={"limit": 0}), 400, param="limit")


def test_delete_removes_row_from_view_and_bytes_from_disk(client, auth, db_session):
    file_id = upload(client, auth, "f.jsonl", PC_JSONL).json()["id"]
    stored = UPLOADS_DIR / file_id
    assert stored.is_file()
    # what a worker kept of it: its rows as two tokenizers train them (worker/child/job_data.py)
    tokenized = [ARTIFACTS_DIR / "tokenized" / db_session.get(File, file_id).storage_name / f"{n}.npz" for n in "ab"]
    for path in tokenized:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"tokens")

    r = client.delete(f"/v1/files/{file_id}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "file", "id": file_id, "deleted": True}

    assert_error(client.get(f"/v1/files/{file_id}", headers=auth), 404, param="file_id", code="file_not_found")
    assert_error(client.get(f"/v1/files/{file_id}/content", headers=auth), 404, param="file_id")
    assert_error(client.delete(f"/v1/files/{file_id}", headers=auth), 404, param="file_id")
    assert not stored.exists()
    assert not any(path.exists() for path in tokenized)
    assert client.get("/v1/files", headers=auth).json()["data"] == []
    db_session.expire_all()
    assert db_session.get(File, file_id).deleted_at is not None  # soft delete: finished jobs keep the row


def test_delete_of_a_file_used_by_a_queued_job_is_refused(client, auth):
    file_id = upload(client, auth, "f.jsonl", PC_JSONL).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", headers=auth, json={"model": "stories260k", "training_file": file_id})
    assert job.status_code == 200, job.text
    assert_error(client.delete(f"/v1/files/{file_id}", headers=auth), 409, param="file_id", code="file_in_use")
    assert (UPLOADS_DIR / file_id).is_file()


def test_filename_never_becomes_a_path(client, auth, db_session):
    r = upload(client, auth, "../../etc/passwd", PC_JSONL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == "passwd"
    assert body["format"] == "jsonl"  # no extension left: detected from the contents
    row = db_session.get(File, body["id"])
    assert row.storage_name == row.id == body["id"]
    assert (UPLOADS_DIR / row.id).read_bytes() == PC_JSONL
    assert not (ARTIFACTS_DIR.parent / "etc").exists()
    assert not (ARTIFACTS_DIR / "etc").exists()

    r = upload(client, auth, "..\\..\\windows\\evil.jsonl", PC_JSONL)
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "evil.jsonl"


# ------------------------------------------------------------------ tenant isolation


def test_other_tenant_cannot_see_read_or_delete_a_file(client, auth, other_auth):
    file_id = upload(client, auth, "mine.jsonl", PC_JSONL).json()["id"]
    theirs = upload(client, other_auth, "theirs.jsonl", PC_JSONL).json()["id"]

    assert_error(client.get(f"/v1/files/{file_id}", headers=other_auth), 404, param="file_id")
    assert_error(client.get(f"/v1/files/{file_id}/content", headers=other_auth), 404, param="file_id")
    assert_error(client.get(f"/v1/files/{file_id}/leaderboard", headers=other_auth), 404, param="file_id")
    assert_error(client.delete(f"/v1/files/{file_id}", headers=other_auth), 404, param="file_id")
    assert [f["id"] for f in client.get("/v1/files", headers=other_auth).json()["data"]] == [theirs]
    # `after` naming another tenant's file gives nothing of it either.
    assert client.get("/v1/files", headers=other_auth, params={"after": file_id}).json()["data"] == []

    # Still there for its owner.
    assert client.get(f"/v1/files/{file_id}", headers=auth).status_code == 200
    assert (UPLOADS_DIR / file_id).is_file()
    assert [f["id"] for f in client.get("/v1/files", headers=auth).json()["data"]] == [file_id]
