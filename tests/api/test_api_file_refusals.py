"""/v1/files over HTTP, refused uploads: malformed or mismatched content (422), past the size cap with or
without a Content-Length (413), bad form fields (400) and keys (401); each leaves no row and no stored bytes
behind (accepted uploads: test_api_files.py)."""

from __future__ import annotations

import json
import time

import pytest

from app.tenants.service import revoke_key
from tests.helpers.files import CAP, PC_JSONL, assert_error, jsonl, stores_nothing, upload

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


# ------------------------------------------------------------------ more refusals


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
