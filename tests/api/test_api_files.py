"""/v1/files over HTTP: uploads in every supported format, reads, listing, deletion, rejected uploads
(each leaving nothing behind) and tenant isolation."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.core.tables import File
from app.tenants.service import revoke_key
from tests.conftest import DATASETS, TEST_ENV

ARTIFACTS_DIR = Path(TEST_ENV["FTAAS_ARTIFACTS_DIR"])
UPLOADS_DIR = ARTIFACTS_DIR / "files"
CAP = int(TEST_ENV["FTAAS_MAX_UPLOAD_BYTES"])

PC_JSONL = b'{"prompt": "2+2=", "completion": "4"}\n{"prompt": "3+3=", "completion": "6"}\n'


def upload(client, headers, filename: str, content: bytes, **form: str):
    return client.post("/v1/files", headers=headers, files={"file": (filename, content)}, data=form)


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def stored_names() -> set[str]:
    return {p.name for p in UPLOADS_DIR.iterdir()} if UPLOADS_DIR.is_dir() else set()


def file_row_count(db_session) -> int:
    return db_session.scalar(select(func.count()).select_from(File))


@contextmanager
def stores_nothing(db_session):
    """The block's requests leave no `files` row and no stored upload behind."""
    rows, names = file_row_count(db_session), stored_names()
    yield
    assert file_row_count(db_session) == rows
    assert stored_names() == names


def assert_error(response, status: int, *, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


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

    r = client.delete(f"/v1/files/{file_id}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "file", "id": file_id, "deleted": True}

    assert_error(client.get(f"/v1/files/{file_id}", headers=auth), 404, param="file_id", code="file_not_found")
    assert_error(client.get(f"/v1/files/{file_id}/content", headers=auth), 404, param="file_id")
    assert_error(client.delete(f"/v1/files/{file_id}", headers=auth), 404, param="file_id")
    assert not stored.exists()
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


# ------------------------------------------------------------------ rejected uploads store nothing


def test_malformed_json_line_is_422_with_line_numbers(client, auth, db_session):
    content = PC_JSONL + b'{"prompt": "4+4=", "completion": \n' + PC_JSONL
    with stores_nothing(db_session):
        r = upload(client, auth, "bad.jsonl", content)
    error = assert_error(r, 422, param="file", code="invalid_file")
    assert error["errors"][0]["line"] == 3
    assert "malformed JSON" in error["errors"][0]["message"]
    assert len(error["errors"]) == 1
    assert "line 3" in error["message"]


def test_wrong_columns_are_422_naming_the_line(client, auth, db_session):
    content = jsonl(
        [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}, {"question": "e", "answer": "f"}]
    )
    with stores_nothing(db_session):
        r = upload(client, auth, "cols.jsonl", content)
    error = assert_error(r, 422, param="file", code="invalid_file")
    assert [e["line"] for e in error["errors"]] == [3]
    assert "no known shape" in error["errors"][0]["message"]
    assert "line 3" in error["message"]


def test_mapped_column_missing_is_422_naming_the_column(client, auth, db_session):
    content = b"question,answer\nWhat?,That\n"
    with stores_nothing(db_session):
        r = upload(
            client, auth, "q.csv", content, column_mapping=json.dumps({"question": "prompt", "sql": "completion"})
        )
    error = assert_error(r, 422, param="file", code="invalid_file")
    assert error["errors"][0] == {"line": 2, "field": "sql", "message": error["errors"][0]["message"]}
    assert "missing column" in error["errors"][0]["message"]


def test_separator_not_found_is_422(client, auth, db_session):
    with stores_nothing(db_session):
        r = upload(client, auth, "t.jsonl", jsonl([{"text": "no separator here"}]), completion_separator="\nA: ")
    error = assert_error(r, 422, param="file")
    assert error["errors"][0]["line"] == 1
    assert error["errors"][0]["field"] == "text"


def test_empty_file_is_422(client, auth, db_session):
    with stores_nothing(db_session):
        r = upload(client, auth, "empty.jsonl", b"")
    error = assert_error(r, 422, param="file", code="invalid_file")
    assert "empty" in error["message"]


def test_unsupported_file_type_is_422(client, auth, db_session):
    with stores_nothing(db_session):
        r = upload(client, auth, "notes.txt", b"just some prose, nothing tabular here at all\n")
    assert_error(r, 422, param="file", code="invalid_file")


def test_file_just_over_the_cap_is_413(client, auth, db_session):
    # Under the middleware's multipart slack: the route's exact byte count must catch it.
    content = b"x" * (CAP + 1)
    with stores_nothing(db_session):
        r = upload(client, auth, "big.jsonl", content)
    assert_error(r, 413, param="file", code="file_too_large")


def test_file_far_over_the_cap_is_413(client, auth, db_session):
    content = b"x" * (CAP + 512 * 1024)
    with stores_nothing(db_session):
        r = upload(client, auth, "big.jsonl", content)
    assert int(r.request.headers["content-length"]) > CAP
    assert_error(r, 413, param="file", code="file_too_large")


def test_file_exactly_at_the_cap_is_not_413(client, auth, db_session):
    line = b'{"text": "' + b"a" * 1000 + b'"}\n'
    content = line * (CAP // len(line))
    content += b'{"text": "' + b"b" * (CAP - len(content) - 13) + b'"}\n'
    assert len(content) == CAP
    r = upload(client, auth, "at-cap.jsonl", content)
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == CAP


BOUNDARY = "ftaas-test-boundary"


def chunked_multipart(payload_bytes: int):
    """A multipart body sent as a generator: httpx then uses Transfer-Encoding: chunked, no Content-Length."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="stream.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    line = b'{"text": "' + b"s" * 4000 + b'"}\n'
    for _ in range(payload_bytes // len(line)):
        yield line
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def post_chunked(client, auth, payload_bytes: int):
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    r = client.post("/v1/files", headers=headers, content=chunked_multipart(payload_bytes))
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    return r


def test_chunked_upload_without_content_length_is_accepted_under_the_cap(client, auth):
    r = post_chunked(client, auth, 100 * 1024)
    assert r.status_code == 200, r.text
    assert r.json()["shape"] == "text" and r.json()["num_rows"] == 100 * 1024 // 4013


def test_chunked_upload_without_content_length_over_the_cap_is_413(client, auth, db_session):
    with stores_nothing(db_session):
        r = post_chunked(client, auth, 2 * CAP)
    assert_error(r, 413, param="file", code="file_too_large")


@pytest.mark.parametrize("mapping", ["{not json", '["prompt"]', '{"q": "question"}', '{"a": "prompt", "b": "prompt"}'])
def test_bad_column_mapping_is_400(client, auth, db_session, mapping):
    with stores_nothing(db_session):
        r = upload(client, auth, "q.csv", b"q,a\nx,y\n", column_mapping=mapping)
    assert_error(r, 400, param="column_mapping")


def test_wrong_purpose_is_400(client, auth, db_session):
    with stores_nothing(db_session):
        r = upload(client, auth, "f.jsonl", PC_JSONL, purpose="assistants")
    assert_error(r, 400, param="purpose")


def test_missing_file_field_is_400(client, auth, db_session):
    with stores_nothing(db_session):
        r = client.post("/v1/files", headers=auth, data={"purpose": "fine-tune"})
    assert_error(r, 400, param="file")


def test_missing_key_is_401(client, db_session):
    with stores_nothing(db_session):
        r = upload(client, {}, "f.jsonl", PC_JSONL)
    assert_error(r, 401, code="missing_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(client.get("/v1/files"), 401, code="missing_api_key")


def test_invalid_key_is_401(client, db_session):
    with stores_nothing(db_session):
        r = upload(client, {"Authorization": "Bearer ftaas-not-a-real-key"}, "f.jsonl", PC_JSONL)
    assert_error(r, 401, code="invalid_api_key")


def test_revoked_key_is_401(client, db_session, make_key):
    key = make_key("acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/files", headers=headers).status_code == 200
    assert revoke_key(db_session, key) == 1
    with stores_nothing(db_session):
        r = upload(client, headers, "f.jsonl", PC_JSONL)
    assert_error(r, 401, code="invalid_api_key")
    assert_error(client.get("/v1/files", headers=headers), 401, code="invalid_api_key")


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


def exact_chunked_multipart(payload: int):
    """A chunked multipart body whose file part is exactly `payload` bytes."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="exact.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    left = payload
    while left:
        n = min(left, 1 << 20)
        yield b"x" * n
        left -= n
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_one_byte_over_the_cap_without_content_length_is_413(client, auth, db_session):
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    with stores_nothing(db_session):
        r = client.post("/v1/files", headers=headers, content=exact_chunked_multipart(CAP + 1))
    assert "content-length" not in r.request.headers
    assert_error(r, 413, param="file", code="file_too_large")


def test_a_csv_with_ten_thousand_columns_is_refused_at_its_header(client, auth, db_session):
    header = ["prompt", "completion"] + [f"c{i}" for i in range(9_998)]
    content = (",".join(header) + "\n" + ",".join(["q", "a"] + [""] * 9_998) + "\n").encode()
    t = time.perf_counter()
    with stores_nothing(db_session):
        r = upload(client, auth, "wide.csv", content)
    error = assert_error(r, 422, param="file", code="invalid_file")
    assert "10,000 columns; at most 256" in json.dumps(error)
    assert time.perf_counter() - t < 5  # the duplicate-name check was quadratic in the width


def test_a_parquet_file_with_an_extension_type_is_refused(client, auth, db_session, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    class Sneaky(pa.ExtensionType):
        def __init__(self):
            super().__init__(pa.string(), "ftaas.test.sneaky")

        def __arrow_ext_serialize__(self):
            return b"payload-the-reader-must-not-act-on"

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type, serialized):
            raise AssertionError("the extension type was deserialized")

    storage = pa.array(["q1", "q2"])
    table = pa.table({"prompt": pa.ExtensionArray.from_storage(Sneaky(), storage), "completion": ["a1", "a2"]})
    path = tmp_path / "sneaky.parquet"
    pq.write_table(table, path)
    with stores_nothing(db_session):
        r = upload(client, auth, "sneaky.parquet", path.read_bytes())
    error = assert_error(r, 422, param="file", code="invalid_file")
    assert "extension types are not accepted" in json.dumps(error)
